"""EVTX -> Kafka throughput of the host producer on one core, against the bare ``evtx`` parse rate of the same run.

Input: the largest EVTX files of the dev corpus (Security and Application logs, ~6.7k records), repeated until
``--events`` records. The process is pinned to one CPU (``sched_setaffinity``) and the Rust parser is asked for one
thread, so every figure is one core's worth. The embedded broker runs as its own process (on the other core).

Cases, each the best of ``--repeat`` passes:

* ``bare_parse``: ``PyEvtxParser(path).records()`` only (Rust parse + XML rendering) - the ceiling;
* ``parse_to_avro``: the producer's EVTX reader as the producer uses it: records straight to RawEvents in Avro, a
  chunk at a time (``producers._evtxrender.encode_records``; no dict per event);
* ``parse_to_raw_event``: the dict reader (XML -> RawEvent dicts, full-precision time), the path taken with
  ``SECSTREAM_NATIVE_EVTX=0`` semantics but with the C dict mapping on;
* ``parse_to_raw_event_python``: the same with the C record mapping (``producers._evtxrender``) switched off;
* ``parse_batch_encode``: ``parse_to_avro`` plus per-host batching and the RawEventBatch messages (no network);
* ``parse_batch_encode_dicts``: the same through RawEvent dicts, ``Batcher`` and ``schemas.codec`` (the reference
  path);
* ``evtx_to_kafka``: ``ProducerStage`` end to end, until the broker has acknowledged every batch
  (zstd, the default; idempotent, acks=all), checkpoints included;
* ``evtx_to_kafka_dicts``: the same with the encoded path off (RawEvent dicts, the previous producer);
* ``evtx_to_kafka_lz4`` / ``evtx_to_kafka_none``: the same with ``producer.compression`` lz4 / none (librdkafka
  compresses in its own thread, but in this process: its CPU counts);
* ``kafka_only``: the same messages, encoded beforehand, sent by a bare confluent-kafka producer (same settings):
  the broker's own pace, the wall-clock ceiling of the cases above. Kafka cases time the stage only, not the
  creation and deletion of their topics.

Run: ``.venv/bin/python bench/producers_bench.py [--events 60000] [--repeat 3]`` -> bench/results/producers.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import tempfile
import time
import timeit
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import evtx
from confluent_kafka import Producer

from producers import encoded
from producers.adapters import event_xml
from producers.adapters import sources as sources_module
from producers.adapters.sources import discover
from producers.batching import Batcher, EncodedBatcher, OutgoingBatch
from producers.cli import kafka_sink_factory
from producers.kafka_sink import kafka_producer_conf
from producers.stage import ProducerStage
from schemas.codec import encode_raw_batch
from secstream.broker import EmbeddedBroker
from secstream.config import Settings
from secstream.lifecycle import run_stage
from secstream.topics import delete_topics, ensure_topics

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus" / "dev"
RESULTS = ROOT / "bench" / "results" / "producers.json"
TARGET_EPS = 100_000
FILES = [
    CORPUS / "omerbenamram__evtx/samples/security.evtx",
    CORPUS / "sans-blue-team__DeepBlueCLI/evtx/many-events-application.evtx",
    CORPUS / "omerbenamram__evtx/samples/security_bad_string_cache.evtx",
    CORPUS / "omerbenamram__evtx/samples/post-Security.evtx",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin_to_one_core() -> int:
    cpu = sorted(os.sched_getaffinity(0))[-1]
    os.sched_setaffinity(0, {cpu})
    sources_module.EVTX_THREADS = 1
    return cpu


def inputs(events: int, workdir: Path) -> list[Path]:
    """Copies of the files, enough of them for ``events`` records (distinct paths: the producer would otherwise
    resume each repeat of the same file from where the first one ended, and send nothing)."""
    per_pass = sum(sum(1 for _ in evtx.PyEvtxParser(str(f)).records()) for f in FILES)
    paths = []
    for copy in range(max(1, round(events / per_pass))):
        for f in FILES:
            target = workdir / f"copy{copy}" / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
            paths.append(target)
    return paths


def bare_parse(paths: list[Path]) -> int:
    n = 0
    for path in paths:
        for _ in evtx.PyEvtxParser(str(path), number_of_threads=1).records():
            n += 1
    return n


def to_raw_events(paths: list[Path]) -> int:
    n = 0
    for source in discover(paths):
        for _ in source.read(None):
            n += 1
    return n


def to_raw_events_python(paths: list[Path]) -> int:
    native = event_xml.native_from_record, event_xml._native_parse
    event_xml.native_from_record = event_xml._native_parse = None
    try:
        return to_raw_events(paths)
    finally:
        event_xml.native_from_record, event_xml._native_parse = native


def to_avro(paths: list[Path]) -> int:
    n = 0
    for source in discover(paths):
        for chunk, _ in source.read_encoded(None):
            n += len(chunk)
    return n


def encoded_batches(paths: list[Path]) -> Iterator[OutgoingBatch]:
    """The producer's batches on the encoded path, drained at the end."""
    batcher = EncodedBatcher(max_events=1000)
    for source in discover(paths):
        for chunk, _ in source.read_encoded(None):
            yield from batcher.add_chunk(chunk)
    yield from batcher.drain()


def batch_and_encode(paths: list[Path]) -> int:
    n = 0
    for batch in encoded_batches(paths):
        n += batch.event_count
        batch.encode("bench")
    return n


def batch_and_encode_dicts(paths: list[Path]) -> int:
    batcher = Batcher(max_events=1000)
    n = 0
    for source in discover(paths):
        for event, _ in source.read(None):
            for batch in batcher.add(event):
                n += len(batch.events)
                encode_raw_batch(batch.as_record("bench"))
    for batch in batcher.drain():
        n += len(batch.events)
        encode_raw_batch(batch.as_record("bench"))
    return n


@contextmanager
def dict_path() -> Iterator[None]:
    """The producer as before the encoded path: ``encoded.available()`` answers False."""
    native = encoded._NATIVE
    encoded._NATIVE = None
    try:
        yield
    finally:
        encoded._NATIVE = native


def to_kafka_dicts(paths: list[Path], broker: EmbeddedBroker, run: int, workdir: Path) -> Timed:
    with dict_path():
        return to_kafka(paths, broker, run, workdir, "zstd", "-dicts")


def to_kafka(paths: list[Path], broker: EmbeddedBroker, run: int, workdir: Path, compression: str = "zstd",
             suffix: str = "") -> Timed:
    name = f"{run}-{compression}{suffix}"
    settings = Settings(
        kafka={"bootstrap_servers": broker.bootstrap},
        topics={"raw": f"bench-raw-{name}", "dead_letter": f"bench-dlq-{name}", "raw_partitions": 3},
        producer={"state_file": workdir / f"state-{name}.json", "compression": compression},
    )
    ensure_topics(settings)
    try:
        # Only the stage is timed: creating and deleting the bench topics is not the producer's work.
        wall, cpu = time.perf_counter(), time.process_time()
        stage = ProducerStage(settings, discover(paths), kafka_sink_factory(settings))
        run_stage(stage)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert stage.events_delivered == stage.events_read
        assert stage.encoded == (encoded._NATIVE is not None)
        return Timed(stage.events_delivered, wall, cpu)
    finally:
        delete_topics(settings, [settings.topics.raw, settings.topics.dead_letter])


def kafka_only(paths: list[Path], broker: EmbeddedBroker, run: int) -> Timed:
    """The same RawEventBatch messages, encoded beforehand, sent by a bare confluent-kafka producer with the
    producer stage's settings (idempotent, acks=all, zstd) until every one is acknowledged: what the broker
    allows, the wall-clock ceiling of ``evtx_to_kafka``."""
    messages = [(b.host, b.event_count, b.encode("bench")) for b in encoded_batches(paths)]
    settings = Settings(kafka={"bootstrap_servers": broker.bootstrap},
                        topics={"raw": f"bench-raw-{run}-only", "raw_partitions": 3})
    ensure_topics(settings)
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        producer = Producer(kafka_producer_conf(settings, "zstd"))
        for host, _, value in messages:
            while True:
                try:
                    producer.produce(settings.topics.raw, value=value, key=host.encode())
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
        assert producer.flush(60) == 0
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return Timed(sum(n for _, n, _ in messages), wall, cpu)
    finally:
        delete_topics(settings, [settings.topics.raw])


class Timed(NamedTuple):
    """A case that times only part of its work itself."""

    events: int
    wall: float
    cpu: float


def timed(fn: Any, *args: Any) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    n = fn(*args)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if isinstance(n, Timed):
        n, wall, cpu = n
    return {"events": n, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "events_per_s": round(n / wall),
            "events_per_cpu_s": round(n / cpu) if cpu else 0.0}


def best(results: list[dict[str, float]]) -> dict[str, float]:
    """The pass least disturbed by other processes: highest events per CPU second."""
    return max(results, key=lambda r: r["events_per_cpu_s"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)
    tmp = tempfile.TemporaryDirectory()
    workdir = Path(tmp.name)
    # The broker starts before pinning, so it does not inherit this process's single CPU.
    broker = EmbeddedBroker(data_dir=workdir / "broker", port=free_port())
    broker.start()
    cpu = pin_to_one_core()
    paths = inputs(args.events, workdir)
    out: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "pinned_cpu": cpu,
                    "load_avg": os.getloadavg(),
                    "sum_range_100_us": round(min(timeit.repeat("sum(range(100))", number=10_000, repeat=5))
                                              / 10_000 * 1e6, 2)},
        "input": {"files": [str(p.relative_to(CORPUS)) for p in FILES], "file_reads": len(paths)},
        "native_evtx_mapping": event_xml.native_from_record is not None,
        "native_evtx_encoding": encoded.available(),
    }
    if not encoded.available():
        raise SystemExit("producers._evtxrender is not built or is turned off: nothing to compare")
    cases: dict[str, list[dict[str, float]]] = {k: [] for k in
                                                ("bare_parse", "parse_to_avro", "parse_to_raw_event",
                                                 "parse_to_raw_event_python", "parse_batch_encode",
                                                 "parse_batch_encode_dicts", "evtx_to_kafka", "evtx_to_kafka_dicts",
                                                 "evtx_to_kafka_lz4", "evtx_to_kafka_none", "kafka_only")}
    try:
        for run in range(args.repeat):
            cases["bare_parse"].append(timed(bare_parse, paths))
            cases["parse_to_avro"].append(timed(to_avro, paths))
            cases["parse_to_raw_event"].append(timed(to_raw_events, paths))
            cases["parse_to_raw_event_python"].append(timed(to_raw_events_python, paths))
            cases["parse_batch_encode"].append(timed(batch_and_encode, paths))
            cases["parse_batch_encode_dicts"].append(timed(batch_and_encode_dicts, paths))
            cases["evtx_to_kafka"].append(timed(to_kafka, paths, broker, run, workdir))
            cases["evtx_to_kafka_dicts"].append(timed(to_kafka_dicts, paths, broker, run, workdir))
            cases["evtx_to_kafka_lz4"].append(timed(to_kafka, paths, broker, run, workdir, "lz4"))
            cases["evtx_to_kafka_none"].append(timed(to_kafka, paths, broker, run, workdir, "none"))
            cases["kafka_only"].append(timed(kafka_only, paths, broker, run))
    finally:
        broker.stop()
        tmp.cleanup()
    out["cases"] = {name: best(runs) for name, runs in cases.items()}
    ceiling = out["cases"]["bare_parse"]["events_per_cpu_s"]
    out["ratios_to_bare_parse_cpu"] = {name: round(r["events_per_cpu_s"] / ceiling, 3)
                                       for name, r in out["cases"].items()}
    out["target_events_per_s"] = TARGET_EPS
    out["load_avg_after"] = os.getloadavg()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
