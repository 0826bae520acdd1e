"""Stream stage throughput: the Faust worker against a plain confluent-kafka loop doing the same work, same run.

Both run ``streams.processing.BatchProcessor.process`` per message (decode → filter → dedup → normalise → encode)
on the same pre-encoded input, against the embedded broker:

* ``in-process``: the same work with no Kafka at all (the Python ceiling);
* ``confluent-kafka``: poll → process → produce(partition = source partition), offsets stored after produce and
  committed by librdkafka, as a minimal hand-written stage would do; its consumer fetches again only once its queue
  is empty (``CONFLUENT_FETCH_PACING``), where it would otherwise keep fetching from the embedded broker, which
  answers empty fetches at once, while it works;
* ``faust``: ``secstream stream`` itself (uvloop, ``-l info``, direct ``app.producer.send``, 1 MiB producer batches,
  5 ms linger, zstd output, output batches built in their own thread), as shipped; again with
  ``stream.empty_fetch_wait_ms: 0`` (no wait after an empty fetch: the worker's behaviour before that setting); and
  again with ``stream.producer_build_thread: false`` (batches built on the event loop, as aiokafka does).

Every Kafka variant is measured the same way, each on its own fresh topics and consumer group: the consumer starts
on the empty input topic and is waited for until it has its partitions and is idle (the confluent loop: its
``on_assign`` callback for all partitions; the Faust worker: Faust's ``Worker ready`` log line, logged once the
partitions are assigned, the table recovered and the fetcher running), then 1 s on the empty topic (the consumer's
and the broker's CPU over it: ``idle_cpu_share``); only then does a separate process produce the input. The window
runs from the first produced message to the last output message (the confluent loop: its final ``flush()``; Faust:
the output topic's end offsets reaching the expected count, polled every 20 ms). CPU is the consumer's own over that
window: ``/proc/<pid>/stat`` of the Faust worker; the bench process's ``process_time`` for the confluent loop, which
runs in it (the input producer is another process, so its CPU is not in there); the broker's CPU over the window
too. The input producer's own rate is reported for each run, and once alone against the broker, so a reader can see
whether production could have been the limit.

Both producers compress the output with ``stream.producer_compression`` (zstd by default).

Input: real events of the dev corpus (EVTX) as templates, re-stamped per host with recent times and growing
record ids, in RawEventBatches of 500 events of one host; a share of the batches is sent a second time with another
batch id and order (the second collector), so dedup drops them. Also measured: dedup state bytes per event for
10M events of one partition with gaps in the record ids, and a cProfile of the in-process work.

With ``--rounds N`` the loop and the worker (as shipped) run N times alternately, and the medians of their figures
and of the per-round ratio are reported as well: one pair is at the mercy of a machine whose speed changes from
minute to minute.

Usage: ``.venv/bin/python bench/streams_bench.py [--events 100000] [--rounds 1] [--dedup-events 10000000] [--py-spy]``
→ prints and writes ``bench/results/streams.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import json
import os
import pstats
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
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


def encode_input(batches: Sequence[dict[str, Any]]) -> list[bytes]:
    return [encode_raw_batch(b) for b in batches]


# ---------------------------------------------------------------------------------------- input production
# The input is produced by a separate process, so that the CPU it costs is not the consumer's (the confluent loop
# runs in this process) and it starts only once the consumer is idle on the empty topic.
_FRAME = struct.Struct(">II")


def write_feed(path: Path, batches: Sequence[dict[str, Any]], values: Sequence[bytes]) -> None:
    """(key, value) of every input message, length-prefixed, for the producing process."""
    with path.open("wb") as f:
        for batch, value in zip(batches, values, strict=True):
            key = batch["host"].encode()
            f.write(_FRAME.pack(len(key), len(value)))
            f.write(key)
            f.write(value)


def read_feed(path: Path) -> list[tuple[bytes, bytes]]:
    data = path.read_bytes()
    messages, at = [], 0
    while at < len(data):
        key_len, value_len = _FRAME.unpack_from(data, at)
        at += _FRAME.size
        messages.append((data[at:at + key_len], data[at + key_len:at + key_len + value_len]))
        at += key_len + value_len
    return messages


def feed_process(path: Path, bootstrap: str, topic: str) -> None:
    """Connect, say ``ready``, wait for ``go`` on stdin, produce the feed, print the times (CLOCK_MONOTONIC)."""
    messages = read_feed(path)
    producer = Producer(producer_config(Settings(kafka={"bootstrap_servers": bootstrap}).kafka))
    deadline = time.monotonic() + 30
    while True:  # connected, every partition's leader known: nothing of that in the window
        meta = producer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is not None and meta.error is None and meta.partitions and all(
                p.leader >= 0 for p in meta.partitions.values()):
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"no leaders for {topic} within 30 s")
        time.sleep(0.1)
    failed: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    cpu0, started = time.process_time(), time.monotonic()
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=delivered)
                break
            except BufferError:  # librdkafka's queue is full: let it send
                producer.poll(0.05)
        producer.poll(0)
    undelivered = producer.flush(120)
    finished = time.monotonic()
    print(json.dumps({"started": started, "finished": finished, "cpu_seconds": time.process_time() - cpu0,
                      "messages": len(messages), "undelivered": undelivered, "errors": failed[:3]}), flush=True)


class InputFeeder:
    """The producing process: started (and connected) ahead, producing on ``go()``."""

    def __init__(self, settings: Settings, feed: Path, topic: str) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--feed", str(feed), "--bootstrap",
                                      settings.kafka.bootstrap_servers, "--topic", topic],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._stdin, self._stdout = self.proc.stdin, self.proc.stdout
        if self._stdout.readline().strip() != "ready":
            self.proc.kill()
            raise RuntimeError("the input producer did not start")

    def go(self) -> None:
        self._stdin.write("go\n")
        self._stdin.flush()

    def result(self, n_events: int) -> dict[str, Any]:
        """Its figures once it is done; ``started`` is the window's start."""
        line = self._stdout.readline()
        self.proc.wait(60)
        if not line:
            raise RuntimeError("the input producer failed")
        fed = json.loads(line)
        if fed["undelivered"] or fed["errors"]:
            raise RuntimeError(f"the input producer could not deliver everything: {fed}")
        seconds = fed["finished"] - fed["started"]
        return {**fed, "seconds": seconds, "events_per_s": n_events / seconds,
                "cpu_us_per_event": fed["cpu_seconds"] / n_events * 1e6}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def production_alone(settings: Settings, feed: Path, topic: str, n_events: int) -> dict[str, Any]:
    """The input producer with no consumer running: how fast the input can reach the broker at all."""
    raw = next(spec for spec in stage_topics(settings) if spec.name == settings.topics.raw)
    ensure_topics(settings, [dataclasses.replace(raw, name=topic)])
    feeder = InputFeeder(settings, feed, topic)
    try:
        feeder.go()
        fed = feeder.result(n_events)
    finally:
        feeder.close()
        delete_topics(settings, [topic])
    return {key: fed[key] for key in ("seconds", "events_per_s", "cpu_us_per_event")}


def production_check(fed: dict[str, Any], t_last: float, wall: float) -> dict[str, Any]:
    """The input producer's figures in a run, and whether it may have been the limit: the consumer finished
    within 10 % of the window after the last input message was acknowledged, i.e. it kept up with production."""
    behind = t_last - fed["finished"]
    return {"events_per_s": round(fed["events_per_s"]), "cpu_us_per_event": round(fed["cpu_us_per_event"], 2),
            "seconds": fed["seconds"], "output_done_after_input_s": round(behind, 3),
            "may_be_the_limit": behind < 0.1 * wall}


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
        batch = decode_raw_batch(value, event_data_pairs=True)  # as the stage decodes
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
    with OutputWatermarks(settings) as marks:
        return marks.total()


class OutputWatermarks:
    """End offsets of the output topic, summed, from one client kept open (polled while a run goes on)."""

    def __init__(self, settings: Settings) -> None:
        self.consumer = Consumer({**client_config(settings.kafka), "group.id": f"probe-{uuid.uuid4().hex}"})
        topic = settings.topics.normalized
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.partitions = [TopicPartition(topic, p) for p in parts]

    def total(self) -> int:
        return sum(self.consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1] for tp in self.partitions)

    def __enter__(self) -> OutputWatermarks:
        return self

    def __exit__(self, *_: object) -> None:
        self.consumer.close()


def variant_settings(settings: Settings, name: str, **stream: Any) -> Settings:
    """Fresh topics and app id for one variant, so each starts on an empty input topic with no state."""
    topics = {"raw": f"{settings.topics.raw}-{name}", "normalized": f"{settings.topics.normalized}-{name}",
              "dead_letter": f"{settings.topics.dead_letter}-{name}"}
    return settings.model_copy(update={
        "topics": settings.topics.model_copy(update=topics),
        "stream": settings.stream.model_copy(update={"app_id": f"{settings.stream.app_id}-{name}", **stream})})


def variant_topics(settings: Settings) -> list[str]:
    app = settings.stream.app_id
    return [settings.topics.raw, settings.topics.normalized, settings.topics.dead_letter,
            f"{app}-dedup-changelog", f"{app}-__assignor-__leader"]


IDLE_SECONDS = 1.0  # how long a consumer runs on the empty input topic before the input is produced


class CpuClock:
    """CPU seconds of the consumer (``cpu``: a callable), of its main thread (``main_thread``: the one that runs
    ``process``, which bounds the consumer's rate) and of the broker process since ``start()``."""

    def __init__(self, cpu: Callable[[], float], main_thread: Callable[[], float], broker_pid: int) -> None:
        self.cpu, self.main_thread, self.broker_pid = cpu, main_thread, broker_pid
        self.start()

    def start(self) -> None:
        self.t0, self.cpu0, self.broker0 = time.monotonic(), self.cpu(), _cpu_seconds(self.broker_pid)
        self.main0 = self.main_thread()

    def read(self) -> tuple[float, float]:
        """(consumer, broker) CPU seconds since ``start()``."""
        return self.cpu() - self.cpu0, _cpu_seconds(self.broker_pid) - self.broker0

    def main_thread_seconds(self) -> float:
        return self.main_thread() - self.main0

    def idle_shares(self) -> dict[str, float]:
        """Share of a core used by the consumer and by the broker since ``start()`` (both idle but polling)."""
        wall = time.monotonic() - self.t0
        cpu, broker = self.read()
        return {"consumer": round(cpu / wall, 3), "broker": round(broker / wall, 3)}


def window_figures(n_events: int, t_last: float, used: tuple[float, float], main_thread: float, fed: dict[str, Any],
                   idle: dict[str, float]) -> dict[str, Any]:
    """Figures of one window: from ``fed["started"]`` (first input message produced) to ``t_last``; ``used``:
    (consumer, broker) CPU seconds over it; ``main_thread``: the consumer's main thread's CPU seconds over it."""
    wall = t_last - fed["started"]
    cpu, broker = used
    return {"events_in": n_events, "seconds": wall, "events_per_s": n_events / wall, "cpu_us_per_event":
            cpu / n_events * 1e6, "main_thread_cpu_us_per_event": round(main_thread / n_events * 1e6, 2),
            "broker_cpu_us_per_event": round(broker / n_events * 1e6, 2),
            "idle_cpu_share": idle, "input_production": production_check(fed, t_last, wall)}


# librdkafka fetches again at once after an empty fetch; the embedded broker answers one at once where Kafka would
# hold it, so the consumer would fetch in a loop at the end of its partitions, also while the loop works on what it
# fetched. With these it fetches again only once its queue is empty (checked every 10 ms). It still fetches in a
# loop when idle with an empty queue (reported as idle_cpu_share).
CONFLUENT_FETCH_PACING = {"queued.min.messages": 1, "fetch.queue.backoff.ms": 10}


def run_confluent(settings: Settings, n_messages: int, feed: Path, broker_pid: int) -> dict[str, Any]:
    """poll → process → produce(partition = source partition); offsets stored once produced."""
    processor = BatchProcessor(rules(settings))
    dedupers: dict[int, Deduper] = {}
    feeder = InputFeeder(settings, feed, settings.topics.raw)
    group = f"bench-ck-{uuid.uuid4().hex[:6]}"
    consumer = Consumer(consumer_config(settings.kafka, group, **{"enable.auto.commit": True,
                                                                  "auto.commit.interval.ms": 2000,
                                                                  **CONFLUENT_FETCH_PACING}))
    # Same output compression as the Faust worker (stream.producer_compression), at librdkafka's default level.
    producer = Producer({**producer_config(settings.kafka), "compression.type": settings.stream.producer_compression})
    try:
        assigned: list[TopicPartition] = []
        consumer.subscribe([settings.topics.raw], on_assign=lambda _c, parts: assigned.extend(parts))
        deadline = time.monotonic() + 60
        while len(assigned) < PARTITIONS:
            if consumer.poll(0.2) is not None:
                raise RuntimeError("the input topic is not empty")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no assignment within 60 s: {assigned}")
        clock = CpuClock(time.process_time, time.thread_time, broker_pid)
        while time.monotonic() - clock.t0 < IDLE_SECONDS:  # polls that come back empty
            if consumer.poll(0.1) is not None:
                raise RuntimeError("the input topic is not empty")
        idle = clock.idle_shares()
        seen = rows = 0
        out_topic = settings.topics.normalized
        clock.start()
        feeder.go()
        while seen < n_messages:
            msg = consumer.poll(0.5)
            if msg is None:
                if feeder.proc.poll() not in (None, 0):
                    raise RuntimeError("the input producer failed")
                continue
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
            consumer.store_offsets(msg)
        producer.flush(60)
        t_last, used, main_thread = time.monotonic(), clock.read(), clock.main_thread_seconds()
        n = n_messages * BATCH
        figures = window_figures(n, t_last, used, main_thread, feeder.result(n), idle)
    finally:
        feeder.close()
        consumer.close()
    return {**figures, "rows_out": rows, "output_messages": output_total(settings)}


def run_faust(settings: Settings, n_messages: int, expected_out: int, tmp: Path, feed: Path, broker_pid: int,
              py_spy: bool = False) -> dict[str, Any]:
    import yaml

    config = settings.model_dump(mode="json", exclude_none=True)
    config["stream"]["data_dir"] = str(tmp / f"faust-{settings.stream.app_id}")
    path = tmp / "stream.yaml"
    path.write_text(yaml.safe_dump(config))
    log_path = tmp / f"faust-{settings.stream.app_id}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "secstream"), "--config", str(path), "stream"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    feeder: InputFeeder | None = None
    spy: subprocess.Popen[bytes] | None = None
    spy_out = tmp / "faust.pyspy.txt"
    out: dict[str, Any] = {}
    try:
        feeder = InputFeeder(settings, feed, settings.topics.raw)
        deadline = time.monotonic() + 120
        # Faust logs "Worker ready" once its partitions are assigned, the table is recovered and the fetcher runs.
        while READY_LINE not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"faust worker not ready: {log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
        clock = CpuClock(lambda: _cpu_seconds(proc.pid), lambda: _cpu_seconds(proc.pid, proc.pid), broker_pid)
        time.sleep(IDLE_SECONDS)  # fetching from the empty topic
        idle = clock.idle_shares()
        with OutputWatermarks(settings) as marks:
            if py_spy:  # samples the worker while it works (GIL holders only), the bench's own choice
                spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                                        str(proc.pid), "--gil", "--rate", "200", "--format", "raw",
                                        "--output", str(spy_out), "--nonblocking"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)  # attached
            clock.start()
            feeder.go()
            done = moved = 0
            moved_at = time.monotonic()
            while done < expected_out:
                if proc.poll() is not None:
                    raise RuntimeError(f"faust worker exited: {log_path.read_text(errors='replace')[-3000:]}")
                if done != moved:
                    moved, moved_at = done, time.monotonic()
                elif time.monotonic() - moved_at > STALL_SECONDS:
                    raise RuntimeError(f"faust worker stalled at {done} of {expected_out} output messages for "
                                       f"{STALL_SECONDS} s (log: {log_path})")
                time.sleep(0.02)
                done = marks.total()
            t_last, used, main_thread = time.monotonic(), clock.read(), clock.main_thread_seconds()
        n = n_messages * BATCH
        out.update({**window_figures(n, t_last, used, main_thread, feeder.result(n), idle),
                    "output_messages": expected_out,
                    "rebalances": log_path.read_text(errors="replace").count(READY_LINE) - 1})
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
            out["py_spy_top"] = py_spy_top(spy_out)
        return out
    finally:
        if feeder is not None:
            feeder.close()
        out["stop_seconds"] = stop_seconds = stop_worker(proc)
        log.close()
        if stop_seconds is None:
            print(f"faust worker did not stop within 30 s of SIGTERM: killed; its log ends with\n"
                  f"{log_path.read_text(errors='replace')[-2000:]}", flush=True)


def stop_worker(proc: subprocess.Popen[bytes]) -> float | None:
    """SIGTERM, then SIGKILL after 30 s (a worker that does not stop must not lose the run's figures); the
    seconds it took to stop, None if it had to be killed."""
    started = time.monotonic()
    proc.terminate()
    try:
        proc.wait(30)
        return time.monotonic() - started
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)
        return None


READY_LINE = "Worker ready"
STALL_SECONDS = 60


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


def _cpu_seconds(pid: int, thread: int | None = None) -> float:
    """CPU seconds of a process, or of one of its threads."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
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
    values = encode_input(batches)
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
def median_of_rounds(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds of the loop's and the worker's figures, and of the per-round ratio (each round's two
    runs are minutes apart at most, so the ratio of a round is less exposed to the machine's drift than either)."""
    def median_of(key: str, field: str) -> float:
        return round(statistics.median(r[key][field] for r in rounds), 2)

    ratios = [r["faust_to_confluent_ratio"] for r in rounds]
    return {"rounds": len(rounds),
            "confluent_kafka_events_per_s": median_of("confluent_kafka", "events_per_s"),
            "confluent_kafka_cpu_us_per_event": median_of("confluent_kafka", "cpu_us_per_event"),
            "faust_events_per_s": median_of("faust", "events_per_s"),
            "faust_cpu_us_per_event": median_of("faust", "cpu_us_per_event"),
            "faust_main_thread_cpu_us_per_event": median_of("faust", "main_thread_cpu_us_per_event"),
            "confluent_kafka_main_thread_cpu_us_per_event":
                median_of("confluent_kafka", "main_thread_cpu_us_per_event"),
            "faust_to_confluent_ratio": round(statistics.median(ratios), 3),
            "faust_to_confluent_ratio_range": [min(ratios), max(ratios)],
            "rounds_faust_at_50k": sum(r["faust"]["events_per_s"] >= 50_000 for r in rounds),
            "rounds_ratio_at_0_8": sum(ratio >= 0.8 for ratio in ratios),
            **{f"{key}_{field}": median_of(key, field)
               for key, *_ in FAUST_VARIANTS[1:] if all(key in r for r in rounds)
               for field in ("events_per_s", "cpu_us_per_event", "main_thread_cpu_us_per_event")}}


# (result key, topic suffix, stream settings) of each Faust run; the first is the worker as shipped.
FAUST_VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("faust", "faust", {}),
    ("faust_no_fetch_wait", "faust-nowait", {"empty_fetch_wait_ms": 0}),  # the worker before that setting
    ("faust_build_on_loop", "faust-loopbuild", {"producer_build_thread": False}),  # batches built as aiokafka does
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--hosts", type=int, default=200)
    ap.add_argument("--dup-share", type=float, default=0.05)
    ap.add_argument("--every-variant", action="store_true",
                    help="run every Faust variant in every round, not only in round 1 (for their medians)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="rounds of (confluent-kafka loop, Faust worker) pairs, run alternately; with more than one, "
                         "their medians are reported too (the other worker variants run in round 1 only, unless "
                         "--every-variant)")
    ap.add_argument("--dedup-events", type=int, default=10_000_000)
    ap.add_argument("--py-spy", action="store_true", help="sample the Faust worker with py-spy (pip install py-spy)")
    ap.add_argument("--dedup-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--feed", type=Path, help=argparse.SUPPRESS)  # the input producer process
    ap.add_argument("--bootstrap", help=argparse.SUPPRESS)
    ap.add_argument("--topic", help=argparse.SUPPRESS)
    ap.add_argument("--one-pass", type=int, default=0, metavar="EVENTS",
                    help="no Kafka: one warm-up pass and one measured pass of BatchProcessor.process over EVENTS "
                         "events of 40 hosts, the measured one inside functools.reduce (for valgrind "
                         "--tool=callgrind --toggle-collect=functools_reduce)")
    args = ap.parse_args()
    if args.dedup_only:  # run in a fresh interpreter so its RSS growth is the state's
        print(json.dumps(dedup_memory(args.dedup_events)))
        return
    if args.feed:
        feed_process(args.feed, args.bootstrap, args.topic)
        return
    if args.one_pass:
        one_pass(args.one_pass)
        return

    result: dict[str, Any] = {"load_average": os.getloadavg(), "method": (
        "each Kafka variant starts idle on an empty input topic; a separate process then produces the input; "
        "window = first produced message to last output message; CPU = the consumer's own over the window")}
    batches = make_input(args.events, args.hosts, args.dup_share)
    values = encode_input(batches)
    n = len(values)
    n_events = n * BATCH
    print(f"input: {n} messages, {n_events} events", flush=True)
    result["in_process"] = run_in_process(Settings(), batches, values)
    print("in-process", result["in_process"], flush=True)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        from tests.conftest import free_port

        feed = tmp / "input.bin"
        write_feed(feed, batches, values)
        broker = EmbeddedBroker(data_dir=tmp / "broker", port=free_port())
        broker_pid = broker.start()
        run = uuid.uuid4().hex[:6]
        settings = Settings(
            kafka={"bootstrap_servers": broker.bootstrap},
            topics={"raw": f"bench-raw-{run}", "normalized": f"bench-out-{run}", "dead_letter": f"bench-dlq-{run}",
                    "delivery_log": f"bench-dl-{run}", "raw_partitions": PARTITIONS,
                    "normalized_partitions": PARTITIONS},
            stream={"app_id": f"bench-stream-{run}", "log_level": "info", "uvloop": True},
        )
        used: list[Settings] = []

        def fresh(suffix: str, **stream: Any) -> Settings:
            variant = variant_settings(settings, suffix, **stream)
            used.append(variant)
            ensure_topics(variant, stage_topics(variant))
            return variant

        def done(variant: Settings) -> None:
            delete_topics(variant, variant_topics(variant))  # the broker holds everything in RAM

        try:
            result["input_production_alone"] = alone = production_alone(settings, feed, f"bench-prod-{run}", n_events)
            print("input production alone", alone, flush=True)
            rounds: list[dict[str, Any]] = []
            for number in range(1, args.rounds + 1):
                # Later rounds run the loop and the worker as shipped only: the pairs the ratio is taken from.
                variants = FAUST_VARIANTS if number == 1 or args.every_variant else FAUST_VARIANTS[:1]
                variant = fresh(f"ck{number}")
                ck = run_confluent(variant, n, feed, broker_pid)
                print(f"round {number} confluent-kafka", ck, flush=True)
                done(variant)
                this_round: dict[str, Any] = {"load_average": os.getloadavg(), "confluent_kafka": ck}
                for key, suffix, stream in variants:
                    variant = fresh(f"{suffix}{number}", **stream)
                    this_round[key] = fa = run_faust(variant, n, ck["output_messages"], tmp, feed, broker_pid,
                                                     py_spy=args.py_spy and key == "faust" and number == 1)
                    print(f"round {number} {key}", {k: v for k, v in fa.items() if k != "py_spy_top"}, flush=True)
                    this_round[f"{key}_to_confluent_ratio"] = round(fa["events_per_s"] / ck["events_per_s"], 3)
                    done(variant)
                rounds.append(this_round)
            result.update(rounds[0])  # round 1 at the top level, as a single-round run writes it
            if len(rounds) > 1:
                result["rounds"] = rounds
                result["median_of_rounds"] = median_of_rounds(rounds)
                print("median of rounds", result["median_of_rounds"], flush=True)
            for number, this_round in enumerate(rounds, 1):
                for key in ("confluent_kafka", *(key for key, *_ in FAUST_VARIANTS)):
                    if key in this_round and this_round[key]["input_production"]["may_be_the_limit"]:
                        print(f"round {number} {key}: the consumer kept up with the input producer, so production "
                              "may have been the limit of this figure", flush=True)
            result["profile_in_process"] = profile_in_process(settings, values[: min(n, 60)])
            result["component_split"] = component_split(settings, values)
            print("split", result["component_split"], flush=True)
        finally:
            for variant in used:
                done(variant)
            broker.stop()
    if args.dedup_events:
        fresh_run = subprocess.run([sys.executable, __file__, "--dedup-only", "--dedup-events",
                                    str(args.dedup_events)], check=True, capture_output=True, text=True)
        result["dedup_memory"] = json.loads(fresh_run.stdout.strip().splitlines()[-1])
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
