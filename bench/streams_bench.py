"""Stream stage throughput: the Faust worker against a plain confluent-kafka loop doing the same work, same run.

Both run ``streams.processing.BatchProcessor.process`` per message (decode → filter → dedup → normalise → encode)
on the same pre-produced input, against the embedded broker:

* ``in-process``: the same work with no Kafka at all (the Python ceiling);
* ``confluent-kafka``: consume(500) → process → produce(partition = source partition), offsets stored after
  produce and committed by librdkafka, as a minimal hand-written stage would do;
* ``faust``: ``secstream stream`` itself (uvloop, ``-l info``, direct ``app.producer.send``, 1 MiB producer batches,
  5 ms linger, zstd output), timed from its first output message to its last.

Both producers compress the output with ``stream.producer_compression`` (zstd by default).

Input: real events of the dev corpus (EVTX) as templates, re-stamped per host with recent times and growing
record ids, in RawEventBatches of 500 events of one host; a share of the batches is sent a second time with another
batch id and order (the second collector), so dedup drops them. Also measured: dedup state bytes per event for
10M events of one partition with gaps in the record ids, and a cProfile of the in-process work.

Usage: ``.venv/bin/python bench/streams_bench.py [--events 100000] [--dedup-events 10000000]``
→ prints and writes ``bench/results/streams.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from schemas.codec import encode_raw_batch  # noqa: E402
from secstream.broker import EmbeddedBroker  # noqa: E402
from secstream.config import Settings  # noqa: E402
from secstream.kafka import client_config, consumer_config, producer_config  # noqa: E402
from secstream.topics import delete_topics, ensure_topics  # noqa: E402
from streams.cli import stage_topics  # noqa: E402
from streams.dedup import TICKS_PER_SECOND, Deduper  # noqa: E402
from streams.filtering import RuleLike, RuleSet  # noqa: E402
from streams.processing import BatchProcessor  # noqa: E402

RESULTS = REPO / "bench" / "results" / "streams.json"
BATCH = 500
PARTITIONS = 4


# ------------------------------------------------------------------------------------------------ input
def templates() -> list[dict[str, Any]]:
    sys.path.insert(0, str(REPO / "tests" / "streams"))
    from tests.streams.corpus_events import corpus_events

    return [e for e in corpus_events() if e.get("event_record_id") is not None]


def make_input(n_events: int, hosts: int, dup_share: float, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    base = templates()
    now = int(time.time() * TICKS_PER_SECOND)
    record = dict.fromkeys(range(hosts), 1000)
    clock = dict.fromkeys(range(hosts), now - 3600 * TICKS_PER_SECOND)
    batches = []
    made = 0
    while made < n_events:
        h = rng.randrange(hosts)
        host = f"host{h:04d}.corp.example"
        events = []
        for _ in range(BATCH):
            record[h] += 1
            clock[h] += rng.randint(1, 2 * TICKS_PER_SECOND)
            t = rng.choice(base)
            events.append({**t, "computer": host, "channel": "Security" if t["channel"] == "Security" else t["channel"],
                           "event_record_id": record[h], "time_created": clock[h]})
        batch = {"host": host, "batch_id": str(uuid.uuid4()), "sequence": 0, "agent_id": "bench",
                 "send_time_us": int(time.time() * 1e6), "events": events}
        batches.append(batch)
        made += BATCH
        if rng.random() < dup_share:  # the other collector sends it again, shuffled, later
            again = list(events)
            rng.shuffle(again)
            batches.append({**batch, "batch_id": str(uuid.uuid4()), "events": again})
            made += BATCH
    return batches


def produce_input(settings: Settings, batches: Sequence[dict[str, Any]]) -> list[bytes]:
    producer = Producer(producer_config(settings.kafka))
    values = []
    for b in batches:
        value = encode_raw_batch(b)
        values.append(value)
        producer.produce(settings.topics.raw, key=b["host"].encode(), value=value)
        producer.poll(0)
    producer.flush(60)
    return values


# --------------------------------------------------------------------------------------------- variants
def rules(settings: Settings) -> RuleSet:
    return RuleSet.compile(cast(Sequence[RuleLike], settings.rules))


def run_in_process(settings: Settings, batches: Sequence[dict[str, Any]], values: Sequence[bytes]) -> dict[str, Any]:
    processor = BatchProcessor(rules(settings))
    dedupers = [Deduper() for _ in range(PARTITIONS)]
    hosts = [b["host"] for b in batches]
    cpu0, t0 = time.process_time(), time.perf_counter()
    rows = 0
    for i, value in enumerate(values):
        rows += processor.process(value, None, dedupers[hash(hosts[i]) % PARTITIONS], "bench").rows
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    n = len(values) * BATCH
    return {"events_in": n, "rows_out": rows, "seconds": wall, "events_per_s": n / wall,
            "cpu_us_per_event": cpu / n * 1e6}


def component_split(settings: Settings, values: Sequence[bytes]) -> dict[str, Any]:
    """CPU µs per input event of each step of ``BatchProcessor.process``, run step by step on the same input."""
    from schemas.codec import decode_raw_batch, encode_security_batch
    from streams.normalize import normalize_batch

    processor = BatchProcessor(rules(settings))
    deduper = Deduper()
    spent = dict.fromkeys(("decode", "filter", "dedup", "normalise", "encode"), 0.0)
    n = 0
    clock = time.process_time
    for value in values:
        t0 = clock()
        batch = decode_raw_batch(value)
        t1 = clock()
        wanted = processor._filter(batch["host"], batch["events"])
        t2 = clock()
        kept, _ = deduper.admit_batch(wanted)
        deduper.delta()
        t3 = clock()
        rows, _ = normalize_batch(kept)
        t4 = clock()
        if rows:
            encode_security_batch({"computer": batch["host"], "batch_id": "b", "source_batch_id": "s", "rows": rows})
        t5 = clock()
        for step, dt in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            spent[step] += dt
        n += len(batch["events"])
    us = {step: round(sec / n * 1e6, 2) for step, sec in spent.items()}
    work = spent["filter"] + spent["dedup"] + spent["normalise"]
    return {"cpu_us_per_input_event": us, "filter_dedup_normalise_events_per_cpu_s": round(n / work),
            "with_avro_events_per_cpu_s": round(n / sum(spent.values()))}


def profile_in_process(settings: Settings, values: Sequence[bytes], top: int = 14) -> list[dict[str, Any]]:
    processor = BatchProcessor(rules(settings))
    deduper = Deduper()
    prof = cProfile.Profile()
    prof.enable()
    for value in values:
        processor.process(value, None, deduper, "bench")
    prof.disable()
    stats = pstats.Stats(prof, stream=io.StringIO())
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    return [{"function": f"{Path(f).name}:{line}({name})", "self_share": round(v[2] / total, 3),
             "calls": v[1]} for (f, line, name), v in rows]


def output_total(settings: Settings) -> int:
    consumer = Consumer({**client_config(settings.kafka), "group.id": f"probe-{uuid.uuid4().hex}"})
    try:
        topic = settings.topics.normalized
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        consumer.close()


def run_confluent(settings: Settings, n_messages: int) -> dict[str, Any]:
    """consume(500) → process → produce(partition = source partition); offsets stored once produced."""
    processor = BatchProcessor(rules(settings))
    dedupers: dict[int, Deduper] = {}
    group = f"bench-ck-{uuid.uuid4().hex[:6]}"
    consumer = Consumer(consumer_config(settings.kafka, group, **{"enable.auto.commit": True,
                                                                  "auto.commit.interval.ms": 2000}))
    # Same output compression as the Faust worker (stream.producer_compression), at librdkafka's default level.
    producer = Producer({**producer_config(settings.kafka), "compression.type": settings.stream.producer_compression})
    consumer.subscribe([settings.topics.raw])
    seen = rows = 0
    t0 = cpu0 = 0.0
    out_topic = settings.topics.normalized
    while seen < n_messages:
        msgs = consumer.consume(500, timeout=0.5)
        if not msgs:
            continue
        if not seen:
            t0, cpu0 = time.perf_counter(), time.process_time()
        for msg in msgs:
            if msg.error():
                continue
            p = msg.partition() or 0
            deduper = dedupers.get(p) or dedupers.setdefault(p, Deduper())
            out = processor.process(msg.value(), msg.key(), deduper, f"{msg.topic()}/{p}/{msg.offset()}")
            deduper.delta()
            for value in out.values:
                producer.produce(out_topic, value, msg.key(), partition=p)
            rows += out.rows
            seen += 1
        producer.poll(0)
        consumer.store_offsets(msgs[-1])
    producer.flush(60)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    consumer.close()
    n = n_messages * BATCH
    return {"events_in": n, "rows_out": rows, "seconds": wall, "events_per_s": n / wall,
            "cpu_us_per_event": cpu / n * 1e6, "output_messages": output_total(settings)}


def run_faust(settings: Settings, n_messages: int, expected_out: int, tmp: Path,
              py_spy: bool = False, long_poll: bool = False) -> dict[str, Any]:
    import yaml

    config = settings.model_dump(mode="json", exclude_none=True)
    config["stream"]["data_dir"] = str(tmp / "faust")
    path = tmp / "stream.yaml"
    path.write_text(yaml.safe_dump(config))
    log = open(tmp / "faust.log", "wb")  # noqa: SIM115
    # long_poll: the worker's fetcher waits after an empty fetch, as against real Kafka (bench/faust_longpoll.py)
    command = ([sys.executable, str(REPO / "bench" / "faust_longpoll.py")] if long_poll
               else [str(Path(sys.executable).parent / "secstream")])
    proc = subprocess.Popen([*command, "--config", str(path), "stream"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    spy: subprocess.Popen[bytes] | None = None
    spy_out = tmp / "faust.pyspy.txt"
    try:
        t_first = t_last = 0.0
        deadline = time.monotonic() + 600
        cpu_first = 0.0
        while time.monotonic() < deadline:
            total = output_total(settings) if proc.poll() is None else -1
            if total < 0:
                raise RuntimeError(f"faust worker exited: {(tmp / 'faust.log').read_text()[-3000:]}")
            if total and not t_first:
                t_first, cpu_first = time.perf_counter(), _cpu_seconds(proc.pid)
                if py_spy:  # samples the worker while it works (GIL holders only), the bench's own choice
                    spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                                            str(proc.pid), "--gil", "--rate", "200", "--format", "raw",
                                            "--output", str(spy_out), "--nonblocking"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if total >= expected_out:
                t_last = time.perf_counter()
                break
            time.sleep(0.05)
        cpu = _cpu_seconds(proc.pid) - cpu_first
        wall = t_last - t_first
        n = n_messages * BATCH
        out: dict[str, Any] = {"events_in": n, "seconds": wall, "events_per_s": n / wall if wall else 0.0,
                               "cpu_us_per_event": cpu / n * 1e6, "output_messages": expected_out}
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
            out["py_spy_top"] = py_spy_top(spy_out)
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # a worker that does not stop must not lose the run's figures
            print("faust worker did not stop within 30 s of SIGTERM: killed", flush=True)
            proc.kill()
            proc.wait(30)
        log.close()


_CATEGORIES = (  # innermost frame's file -> where the worker's time goes
    ("schemas/", "Avro codec (schemas)"), ("<avro codec", "Avro codec (schemas)"),
    ("streams/normalize.py", "normalise"), ("streams/dedup.py", "dedup"), ("streams/filtering.py", "filter"),
    ("streams/xpath.py", "filter"), ("streams/", "stage glue (streams/app, processing)"),
    ("opentelemetry/", "telemetry"), ("aiokafka/codec.py", "lz4 (aiokafka codec)"), ("aiokafka/", "aiokafka"),
    ("faust/", "faust + mode"), ("mode/", "faust + mode"), ("asyncio/", "event loop"), ("uvloop", "event loop"),
)


def py_spy_top(path: Path, top: int = 15) -> dict[str, Any]:
    """Self time per function and per category from py-spy's raw (collapsed stacks) output."""
    if not path.exists():
        return {}
    own: dict[str, int] = {}
    by_category: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frame = stack.split(";")[-1]
        function = frame.rsplit(":", 1)[0] + ")" if frame.endswith(")") and ":" in frame else frame
        own[function] = own.get(function, 0) + int(count)
        category = next((c for marker, c in _CATEGORIES if marker in frame), "other")
        by_category[category] = by_category.get(category, 0) + int(count)
        total += int(count)
    ranked = sorted(own.items(), key=lambda kv: kv[1], reverse=True)[:top]
    return {"functions": [{"function": f, "self_share": round(c / total, 3)} for f, c in ranked],
            "categories": {c: round(n / total, 3) for c, n in sorted(by_category.items(), key=lambda kv: -kv[1])}}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -------------------------------------------------------------------------------------------- dedup memory
def _rss_bytes() -> int:
    """Current resident set (ru_maxrss would carry the parent's peak over a fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def dedup_memory(n_events: int, hosts: int = 2000, keep: float = 0.7, seed: int = 3) -> dict[str, Any]:
    """One partition's state for ``n_events`` kept events (Security ids with gaps: a source filtered at the host)."""
    rng = random.Random(seed)
    rss0 = _rss_bytes()
    d = Deduper(window_seconds=10 * 24 * 3600)
    record = [0] * hosts
    clock = [1_763_000_000 * TICKS_PER_SECOND] * hosts
    names = [f"host{h:05d}.corp.example" for h in range(hosts)]
    admitted = 0
    t0 = time.perf_counter()
    while admitted < n_events:
        h = rng.randrange(hosts)
        batch = []
        for _ in range(BATCH):
            record[h] += 1
            clock[h] += rng.randint(1, 20_000_000)
            if rng.random() < keep:
                batch.append({"computer": names[h], "channel": "Security", "event_record_id": record[h],
                              "time_created": clock[h], "event_id": 4624})
        admitted += len(d.admit_batch(batch)[0])
        d.delta()
    seconds = time.perf_counter() - t0
    rss1 = _rss_bytes()
    events = d.event_count()
    return {"events": events, "ranges": d.range_count(), "logs": len(d.logs),
            "state_bytes_per_event": round(d.state_bytes() / events, 2),
            "rss_growth_bytes_per_event": round((rss1 - rss0) / events, 2),
            "admit_events_per_s": round(admitted / seconds)}


# ------------------------------------------------------------------------------------------- instruction counts
def one_pass(n_events: int) -> None:
    """A warm-up pass, then exactly one pass inside ``functools.reduce``: callgrind collects only that one."""
    import functools
    import gc

    batches = make_input(n_events, 40, 0.05)
    values = [encode_raw_batch(b) for b in batches]
    processor = BatchProcessor(rules(Settings()))

    def run(_: Any = None, __: Any = None) -> int:
        dedupers = [Deduper() for _ in range(PARTITIONS)]
        rows = 0
        for batch, value in zip(batches, values, strict=True):
            deduper = dedupers[hash(batch["host"]) % PARTITIONS]
            rows += processor.process(value, None, deduper, "bench").rows
            deduper.delta()
        return rows

    rows = run()
    gc.collect()
    functools.reduce(run, [0], 0)
    print(json.dumps({"events": sum(len(b["events"]) for b in batches), "rows": rows}))


# ------------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--hosts", type=int, default=200)
    ap.add_argument("--dup-share", type=float, default=0.05)
    ap.add_argument("--dedup-events", type=int, default=10_000_000)
    ap.add_argument("--py-spy", action="store_true", help="sample the Faust worker with py-spy (pip install py-spy)")
    ap.add_argument("--dedup-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--one-pass", type=int, default=0, metavar="EVENTS",
                    help="no Kafka: one warm-up pass and one measured pass of BatchProcessor.process over EVENTS "
                         "events of 40 hosts, the measured one inside functools.reduce (for valgrind "
                         "--tool=callgrind --toggle-collect=functools_reduce)")
    args = ap.parse_args()
    if args.dedup_only:  # run in a fresh interpreter so its RSS growth is the state's
        print(json.dumps(dedup_memory(args.dedup_events)))
        return
    if args.one_pass:
        one_pass(args.one_pass)
        return

    result: dict[str, Any] = {"load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        from tests.conftest import free_port

        broker = EmbeddedBroker(data_dir=tmp / "broker", port=free_port())
        broker.start()
        run = uuid.uuid4().hex[:6]
        settings = Settings(
            kafka={"bootstrap_servers": broker.bootstrap},
            topics={"raw": f"bench-raw-{run}", "normalized": f"bench-out-{run}", "dead_letter": f"bench-dlq-{run}",
                    "delivery_log": f"bench-dl-{run}", "raw_partitions": PARTITIONS,
                    "normalized_partitions": PARTITIONS},
            stream={"app_id": f"bench-stream-{run}", "log_level": "info", "uvloop": True},
        )
        try:
            ensure_topics(settings, stage_topics(settings))
            batches = make_input(args.events, args.hosts, args.dup_share)
            values = produce_input(settings, batches)
            n = len(values)
            print(f"input: {n} messages, {n * BATCH} events", flush=True)
            result["in_process"] = run_in_process(settings, batches, values)
            print("in-process", result["in_process"], flush=True)
            result["confluent_kafka"] = ck = run_confluent(settings, n)
            print("confluent-kafka", ck, flush=True)
            # Same output again from the Faust worker: start from an empty output topic.
            delete_topics(settings, [settings.topics.normalized])
            time.sleep(0.5)
            ensure_topics(settings, stage_topics(settings))
            result["faust"] = fa = run_faust(settings, n, ck["output_messages"], tmp, args.py_spy)
            print("faust", fa, flush=True)
            result["faust_to_confluent_ratio"] = round(fa["events_per_s"] / ck["events_per_s"], 3)
            # The same again with the fetcher waiting after empty fetches as against Kafka, under its own app id.
            delete_topics(settings, [settings.topics.normalized])
            time.sleep(0.5)
            long_poll = settings.model_copy(update={"stream": settings.stream.model_copy(
                update={"app_id": f"{settings.stream.app_id}-lp"})})
            ensure_topics(long_poll, stage_topics(long_poll))
            result["faust_long_poll"] = fl = run_faust(long_poll, n, ck["output_messages"], tmp, long_poll=True)
            print("faust, long-poll emulation", fl, flush=True)
            result["faust_long_poll_to_confluent_ratio"] = round(fl["events_per_s"] / ck["events_per_s"], 3)
            result["profile_in_process"] = profile_in_process(settings, values[: min(n, 60)])
            result["component_split"] = component_split(settings, values)
            print("split", result["component_split"], flush=True)
        finally:
            delete_topics(settings, [settings.topics.raw, settings.topics.normalized, settings.topics.dead_letter,
                                     *(f"{app}-{suffix}" for app in (settings.stream.app_id,
                                                                     f"{settings.stream.app_id}-lp")
                                       for suffix in ("dedup-changelog", "__assignor-__leader"))])
            broker.stop()
    if args.dedup_events:
        fresh = subprocess.run([sys.executable, __file__, "--dedup-only", "--dedup-events", str(args.dedup_events)],
                               check=True, capture_output=True, text=True)
        result["dedup_memory"] = json.loads(fresh.stdout.strip().splitlines()[-1])
        print("dedup memory", result["dedup_memory"], flush=True)
    result["load_average_after"] = os.getloadavg()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("profile_in_process", "faust")}, indent=2))
    for title, rows in (("in-process cProfile", result.get("profile_in_process", [])),
                        ("faust worker py-spy", result.get("faust", {}).get("py_spy_top", {}).get("functions", []))):
        print(title)
        for row in rows:
            print(f"  {row['self_share']:6.1%}  {row['function']}")
    for category, share in result.get("faust", {}).get("py_spy_top", {}).get("categories", {}).items():
        print(f"  {share:6.1%}  {category}")


if __name__ == "__main__":
    main()
