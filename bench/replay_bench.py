"""Replay read path: a bounded range fetched from the embedded broker with assign() and counted, as a dry run does.

"Read path" = everything a replay does before sending: fetch, decode and the replay's own per-batch work.

* normalized read path: fetch + decode every SecurityEventBatch + count per partition and EventID;
* raw read path: fetch + decode every RawEventBatch + rules (Common) + dedup + normalise + count;
* normalized, already delivered: fetch + row count from the batch header (the part of a window the destination
  holds: nothing is decoded);
* fetch only: the Kafka client and the range reader, no decoding (the ceiling of this path).

Each is a whole ``secstream.replay.runner.dry_run`` (consumer start-up included), best of ``--passes``. Then the same
data in process, without Kafka, split into its parts: decoding alone, and the replay's own work on decoded batches
(``ReplayProcessor.take_security_batch`` / ``take_raw_batch``, also with a skip set of 1M EventOriginIds), so the
read path can be read as fetch + decode + replay work per event. Also the memory and CPU of the skip set
(``OriginIdSet``) per EventOriginId. The codec in use (native C engine or pure Python) is printed and recorded.

Run: ``.venv/bin/python bench/replay_bench.py [--rows 100000] [--raw-events 20000] [--passes 3]``
→ ``bench/results/replay.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from confluent_kafka import Producer  # noqa: E402

from schemas.codec import (  # noqa: E402
    decode_raw_batch,
    decode_security_batch,
    default_codec,
    encode_raw_batch,
    encode_security_batch,
)
from secstream.broker import EmbeddedBroker  # noqa: E402
from secstream.config import Settings  # noqa: E402
from secstream.kafka import producer_config  # noqa: E402
from secstream.offsets import Position  # noqa: E402
from secstream.replay.core import OffsetRanges, OriginIdSet, ReplayProcessor, compile_rules  # noqa: E402
from secstream.replay.history import probe_consumer  # noqa: E402
from secstream.replay.reading import read_ranges  # noqa: E402
from secstream.replay.runner import dry_run, make_plan  # noqa: E402
from secstream.topics import ensure_topics  # noqa: E402
from tests.sinks.rows import make_batches  # noqa: E402
from tests.streams.corpus_events import corpus_events  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "replay.json"
TARGET_EPS = 100_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def messages(rows: int, raw_events: int) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    """(key, value) of ``rows`` SecurityEvent rows (batches of 500) and of ~``raw_events`` corpus events (one host
    per batch, ≤ 500 per batch; copies of the corpus under other host names)."""
    normalized = [(b["computer"].encode(), encode_security_batch(b)) for b in make_batches(rows, 500, computers=12)]
    events = list(corpus_events())
    raw: list[tuple[bytes, bytes]] = []
    produced = 0
    copy = 0
    while produced < raw_events:
        by_host: dict[str, list[dict[str, Any]]] = {}
        for event in events:
            host = f"{event['computer']}-{copy}"
            by_host.setdefault(host, []).append({**event, "computer": host})
        for host, evs in by_host.items():
            for i in range(0, len(evs), 500):
                chunk = evs[i:i + 500]
                batch = {"host": host, "batch_id": str(uuid.uuid4()), "sequence": i, "agent_id": "bench",
                         "send_time_us": int(time.time() * 1e6), "events": chunk}
                raw.append((host.encode(), encode_raw_batch(batch)))
                produced += len(chunk)
        copy += 1
    return normalized, raw


def fill(settings: Settings, normalized: list[tuple[bytes, bytes]], raw: list[tuple[bytes, bytes]]) -> None:
    producer = Producer(producer_config(settings.kafka, **{"linger.ms": 20}))
    for topic, records in ((settings.topics.normalized, normalized), (settings.topics.raw, raw)):
        for key, value in records:
            producer.produce(topic, key=key, value=value)
    assert producer.flush(60) == 0


def in_process(normalized: list[tuple[bytes, bytes]], raw: list[tuple[bytes, bytes]], rules: Any,
               passes: int) -> dict[str, Any]:
    """The read path without Kafka, in its parts: decode alone, and the replay's work on decoded batches."""
    security = [decode_security_batch(v) for _, v in normalized]
    raw_batches = [decode_raw_batch(v, event_data_pairs=True) for _, v in raw]  # as the replay decodes
    rows = sum(len(b["rows"]) for b in security)
    events = sum(len(b["events"]) for b in raw_batches)
    held = OriginIdSet(str(uuid.uuid4()) for _ in range(1_000_000))  # none of the rows' ids: all looked up, kept

    def decode_security() -> int:
        return sum(len(decode_security_batch(v)["rows"]) for _, v in normalized)

    def decode_raw() -> int:
        return sum(len(decode_raw_batch(v, event_data_pairs=True)["events"]) for _, v in raw)

    def count_rows(skip: OriginIdSet | None = None) -> int:
        processor = ReplayProcessor("normalized", skip_ids=skip)
        for batch in security:
            processor.take_security_batch(0, batch)
        assert processor.counts.to_send == rows
        return rows

    def raw_pipeline() -> int:
        processor = ReplayProcessor("raw", rules=rules)
        for offset, batch in enumerate(raw_batches):
            processor.take_raw_batch(offset % 3, offset, batch)
        return events

    return {
        "decode SecurityEventBatch": measure("  decode SecurityEventBatch rows", decode_security, passes),
        "decode RawEventBatch": measure("  decode RawEventBatch events", decode_raw, passes),
        "replay work, normalized: count per partition and EventID": measure(
            "  replay work: count rows per partition and EventID", count_rows, passes),
        "replay work, normalized: skip set (1M ids) + count": measure(
            "  replay work: skip-set look-up (1M ids) + count", lambda: count_rows(held), passes),
        "replay work, raw: rules Common + dedup + normalise + count": measure(
            "  replay work: rules + dedup + normalise + count (raw)", raw_pipeline, passes),
    }


def measure(name: str, work: Any, passes: int) -> dict[str, Any]:
    best_wall, best_cpu, units = float("inf"), float("inf"), 0
    for _ in range(passes):
        wall, cpu = time.perf_counter(), time.process_time()
        units = work()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    out = {"events": units, "wall_s": round(best_wall, 3), "cpu_s": round(best_cpu, 3),
           "events_per_s_wall": round(units / best_wall), "events_per_s_cpu": round(units / best_cpu),
           "us_per_event_cpu": round(best_cpu / units * 1e6, 2),
           "vs_target": round(units / best_wall / TARGET_EPS, 2),
           "vs_target_cpu": round(units / best_cpu / TARGET_EPS, 2)}
    print(f"{name:58s} {out['events_per_s_wall']:>10,} ev/s wall  {out['events_per_s_cpu']:>10,} ev/s cpu  "
          f"{out['us_per_event_cpu']:>6} µs/ev cpu  ({units:,} events)")
    return out


def skip_set_cost(n: int) -> dict[str, float]:
    """Memory (tracemalloc) and CPU per EventOriginId of a skip set of ``n`` ids, and per look-up."""
    ids = [str(uuid.uuid4()) for _ in range(n)]
    cpu = time.process_time()
    OriginIdSet(ids)
    build_us = (time.process_time() - cpu) / n * 1e6
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    held = OriginIdSet(ids)
    size = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(held) == n
    cpu = time.process_time()
    found = sum(1 for i in ids[:100_000] if i in held)
    lookup_us = (time.process_time() - cpu) / 100_000 * 1e6
    assert found == min(n, 100_000)
    cpu = time.process_time()
    missing = sum(sum(held.absent(ids[i:i + 500])) for i in range(0, 100_000, 500))
    batch_lookup_us = (time.process_time() - cpu) / 100_000 * 1e6
    assert missing == 0
    return {"ids": n, "bytes_per_id": round(size / n, 1), "sorted_column_bytes_per_id": 16.0,
            "build_us_per_id_cpu": round(build_us, 2), "lookup_us_cpu": round(lookup_us, 2),
            "batch_lookup_us_cpu": round(batch_lookup_us, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--raw-events", type=int, default=20_000)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    codec = default_codec().native_in_use
    load = [round(x, 1) for x in os.getloadavg()]
    print(f"codec: {'native' if all(codec.values()) else 'pure Python'} {codec}; load average "
          f"{' '.join(f'{x:.1f}' for x in load)}")
    normalized_messages, raw_messages = messages(args.rows, args.raw_events)
    rows, events = args.rows, sum(len(decode_raw_batch(v)["events"]) for _, v in raw_messages)
    with tempfile.TemporaryDirectory() as tmp:
        broker = EmbeddedBroker(data_dir=Path(tmp), port=free_port())
        broker.start()
        try:
            settings = Settings(kafka={"bootstrap_servers": broker.bootstrap},
                                topics={"raw_partitions": 3, "normalized_partitions": 3})
            ensure_topics(settings)
            fill(settings, normalized_messages, raw_messages)
            earliest = Position.parse("earliest")
            normalized = make_plan(settings, "normalized", earliest, None, None, None, None, "bench")
            raw = make_plan(settings, "raw", earliest, None, None, None, None, "bench")
            raw.rules = [{"name": "common", "computers": ["*"], "event_set": "Common", "xpath": []}]
            everything = OffsetRanges({r.partition: [(r.start, r.end)] for r in normalized.ranges})

            def normalized_decode() -> int:
                return dry_run(settings, normalized, ReplayProcessor("normalized")).read

            def normalized_delivered() -> int:
                return dry_run(settings, normalized, ReplayProcessor("normalized", delivered=everything)).read

            def raw_common() -> int:
                return dry_run(settings, raw, ReplayProcessor("raw", rules=compile_rules(raw.rules))).read

            def fetch_only() -> int:
                consumer = probe_consumer(settings)
                try:
                    return sum(1 for _ in read_ranges(consumer, normalized.topic, normalized.ranges)) * 500
                finally:
                    consumer.close()

            cases = {
                "read path, normalized: fetch + decode + count per partition and EventID": measure(
                    "read path, normalized: fetch + decode + count", normalized_decode, args.passes),
                "read path, raw: fetch + decode + rules Common + dedup + normalise + count": measure(
                    "read path, raw: fetch + decode + rules + dedup + normalise", raw_common, args.passes),
                "normalized, already delivered: fetch + header row count": measure(
                    "normalized, already delivered: fetch + header row count", normalized_delivered, args.passes),
                "fetch only (500-row messages, no decode)": measure(
                    "fetch only (500-row messages, no decode)", fetch_only, args.passes),
            }
        finally:
            broker.stop()
    print("in process, no Kafka (parts of the read path):")
    parts = in_process(normalized_messages, raw_messages, compile_rules(raw.rules), args.passes)
    skip_set = skip_set_cost(1_000_000)
    print(f"skip set of {skip_set['ids']:,} ids: {skip_set['bytes_per_id']} bytes per id (columns: 16), "
          f"{skip_set['build_us_per_id_cpu']} µs per add, {skip_set['lookup_us_cpu']} µs per look-up alone, "
          f"{skip_set['batch_lookup_us_cpu']} µs per id looked up 500 at a time")
    result = {"rows": rows, "raw_events": events, "python": platform.python_version(), "machine": platform.machine(),
              "codec_native": codec, "load_average_at_start": load,
              "target_events_per_s": TARGET_EPS, "cases": cases, "in_process": parts, "skip_set": skip_set}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
