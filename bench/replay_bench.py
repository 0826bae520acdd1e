"""Replay read path: fetch a bounded range from the embedded broker with assign() and count, as a dry run does.

Cases (each a full ``secstream.replay.runner.dry_run`` over the same range, best of ``--passes``):

* normalized, nothing delivered yet: fetch + decode every SecurityEventBatch + count per partition and EventID;
* normalized, already delivered: fetch + row count from the batch header (what a backfill does with the part of the
  window the destination holds);
* raw, rules Common: fetch + decode RawEventBatch + filter + dedup + normalise + count;
* fetch only: the Kafka client and the range reader, no decoding (the ceiling of this path).

Also the memory and CPU of the raw replay's skip set (``OriginIdSet``) per EventOriginId.

Run: ``.venv/bin/python bench/replay_bench.py [--rows 100000] [--raw-events 20000] [--passes 3]``
→ ``bench/results/replay.json``.
"""

from __future__ import annotations

import argparse
import json
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

from schemas.codec import encode_raw_batch, encode_security_batch  # noqa: E402
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


def fill(settings: Settings, rows: int, raw_events: int) -> tuple[int, int]:
    """Produce ``rows`` SecurityEvent rows (batches of 500) and ~``raw_events`` corpus events (one host per batch)."""
    producer = Producer(producer_config(settings.kafka, **{"linger.ms": 20}))
    for batch in make_batches(rows, 500, computers=12):
        producer.produce(settings.topics.normalized, key=batch["computer"].encode(), value=encode_security_batch(batch))
    events = list(corpus_events())
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
                producer.produce(settings.topics.raw, key=host.encode(), value=encode_raw_batch(batch))
                produced += len(chunk)
        copy += 1
    assert producer.flush(60) == 0
    return rows, produced


def measure(name: str, work: Any, passes: int) -> dict[str, Any]:
    best_wall, best_cpu, units = float("inf"), float("inf"), 0
    for _ in range(passes):
        wall, cpu = time.perf_counter(), time.process_time()
        units = work()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    out = {"events": units, "wall_s": round(best_wall, 3), "cpu_s": round(best_cpu, 3),
           "events_per_s_wall": round(units / best_wall), "events_per_s_cpu": round(units / best_cpu),
           "vs_target": round(units / best_wall / TARGET_EPS, 2)}
    print(f"{name:55s} {out['events_per_s_wall']:>10,} ev/s wall  {out['events_per_s_cpu']:>10,} ev/s cpu  "
          f"({units:,} events)")
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
    return {"ids": n, "bytes_per_id": round(size / n, 1), "sorted_column_bytes_per_id": 16.0,
            "build_us_per_id_cpu": round(build_us, 2), "lookup_us_cpu": round(lookup_us, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--raw-events", type=int, default=20_000)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = EmbeddedBroker(data_dir=Path(tmp), port=free_port())
        broker.start()
        try:
            settings = Settings(kafka={"bootstrap_servers": broker.bootstrap},
                                topics={"raw_partitions": 3, "normalized_partitions": 3})
            ensure_topics(settings)
            rows, events = fill(settings, args.rows, args.raw_events)
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
                "normalized, decode + count per partition and EventID": measure(
                    "normalized, decode + count per partition and EventID", normalized_decode, args.passes),
                "normalized, already delivered (header row count)": measure(
                    "normalized, already delivered (header row count)", normalized_delivered, args.passes),
                "raw, decode + filter Common + dedup + normalise + count": measure(
                    "raw, decode + filter Common + dedup + normalise + count", raw_common, args.passes),
                "fetch only (500-row messages, no decode)": measure(
                    "fetch only (500-row messages, no decode)", fetch_only, args.passes),
            }
        finally:
            broker.stop()
    skip_set = skip_set_cost(1_000_000)
    print(f"skip set of {skip_set['ids']:,} ids: {skip_set['bytes_per_id']} bytes per id (columns: 16), "
          f"{skip_set['build_us_per_id_cpu']} µs per add, {skip_set['lookup_us_cpu']} µs per look-up")
    result = {"rows": rows, "raw_events": events, "python": platform.python_version(), "machine": platform.machine(),
              "target_events_per_s": TARGET_EPS, "cases": cases, "skip_set": skip_set}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
