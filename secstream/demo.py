"""``make demo``: the whole pipeline on one machine, over the dev corpus.

embedded broker + local workspace → ``secstream produce`` (corpus) → Kafka → ``secstream stream`` → Kafka →
``secstream sink`` → workspace; then it prints what arrived: rows per EventID and per event set, last data received
per Computer, throughput and end-to-end latency. Every stage runs as its own ``secstream`` process, exactly as a
user would run it; everything is stopped at the end.
"""

from __future__ import annotations

import shutil
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from schemas.event_sets import EVENT_SETS
from secstream.broker import EmbeddedBroker
from secstream.config import load_settings
from secstream.pipeline import REPO, StageProcess, create_topics, write_config
from workspace.testing import WorkspaceEmulator

console = Console()
STATE = REPO / ".state" / "demo"
DEFAULT_CORPUS = REPO.parent / "shared" / "corpus" / "dev"
SETTLE_SECONDS = 8.0  # no new rows for this long after the producer finished: the pipeline has drained
TIMEOUT_SECONDS = 900.0


def demo_config(bootstrap: str, destination: dict[str, Any]) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": bootstrap},
        "topics": {"raw_partitions": 4, "normalized_partitions": 4, "retention_ms": 24 * 3600 * 1000},
        "rules": [{"name": "default", "computers": ["*"], "event_set": "Common"}],
        # The demo filters at the source as well: only what the rules keep travels (and sits in broker RAM).
        "producer": {"source_filter": True, "state_file": str(STATE / "producer" / "checkpoints.json")},
        "stream": {"data_dir": str(STATE / "stream")},
        "destinations": [destination],
        "status": {"interval_seconds": 2.0},
    }


def wait_for_rows(ws: WorkspaceEmulator, producer: StageProcess, stages: list[StageProcess]) -> None:
    """Show progress until the producer is done and the workspace stops growing."""
    last_count, last_change = -1, time.monotonic()
    deadline = time.monotonic() + TIMEOUT_SECONDS
    with console.status("pushing the corpus through the pipeline") as status:
        while time.monotonic() < deadline:
            for stage in stages:
                if not stage.running() and stage is not producer:
                    raise RuntimeError(f"{stage.name} exited early:\n{stage.tail()}")
            if not producer.running() and producer.returncode != 0:
                raise RuntimeError(f"producer failed:\n{producer.tail()}")
            count = ws.count()
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            status.update(f"rows in the workspace: {count:,}" + ("" if producer.running() else " (producer done)"))
            if not producer.running() and count > 0 and time.monotonic() - last_change > SETTLE_SECONDS:
                return
            time.sleep(0.5)
    raise RuntimeError("the pipeline did not drain in time")


def report(ws: WorkspaceEmulator, started: float) -> None:
    rows = ws.query("SELECT EventID, COUNT(*) AS n FROM SecurityEvent GROUP BY EventID ORDER BY n DESC")
    total = sum(r["n"] for r in rows)
    per_id = Table("EventID", "rows", title=f"{total:,} SecurityEvent rows arrived", show_lines=False)
    for r in rows[:25]:
        per_id.add_row(str(r["EventID"]), f"{r['n']:,}")
    if len(rows) > 25:
        per_id.add_row(f"… {len(rows) - 25} more IDs", f"{sum(r['n'] for r in rows[25:]):,}")
    console.print(per_id)

    counts = {r["EventID"]: r["n"] for r in rows}
    sets = Table("event set", "rows that belong to it", title="rows per event set")
    for name in ("Minimal", "Common", "All"):
        ids = EVENT_SETS[name]
        sets.add_row(name, f"{sum(n for i, n in counts.items() if ids is None or i in ids):,}")
    console.print(sets)

    # The corpus is years old: the service replaces such TimeGenerated values by the receive time, and the
    # emulator keeps the event's own time next to it.
    hosts = ws.query("SELECT Computer, COUNT(*) AS n, "
                     "MAX(COALESCE(NULLIF(_OriginalTimeGenerated, ''), TimeGenerated)) AS last_event, "
                     "MAX(_TimeReceived) AS last_received FROM SecurityEvent GROUP BY Computer ORDER BY n DESC")
    per_host = Table("Computer", "rows", "last event (its own time)", "last data received",
                     title="last data received per Computer")
    for h in hosts:
        per_host.add_row(h["Computer"], f"{h['n']:,}", str(h["last_event"]), str(h["last_received"]))
    console.print(per_host)

    latency = ws.query(
        "SELECT (julianday(_TimeReceived) - julianday(TimeCollected)) * 86400.0 AS s FROM SecurityEvent "
        "WHERE TimeCollected IS NOT NULL AND TimeCollected != '' ORDER BY s"
    )
    first_last = ws.query("SELECT MIN(_TimeReceived) AS first, MAX(_TimeReceived) AS last FROM SecurityEvent")[0]
    elapsed = time.monotonic() - started
    console.print(f"throughput: {total:,} rows in {elapsed:.1f} s end to end, including start-up "
                  f"({total / elapsed:,.0f} rows/s)")
    if latency:
        values = [r["s"] for r in latency]
        p50, p99 = values[len(values) // 2], values[min(len(values) - 1, int(len(values) * 0.99))]
        console.print(f"latency from read at the source to received by the workspace: p50 {p50:.2f} s, "
                      f"p99 {p99:.2f} s (the corpus is read as fast as possible, so this includes queueing)")
    console.print(f"first row received {first_last['first']}, last {first_last['last']}")


def main(corpus: Path = DEFAULT_CORPUS) -> None:
    if not corpus.is_dir():
        raise SystemExit(f"the dev corpus is not at {corpus}")
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir(parents=True)
    base = load_settings()
    console.rule("secstream demo")
    started = time.monotonic()
    with ExitStack() as stack:
        broker = EmbeddedBroker(data_dir=STATE / "broker", port=base.broker.port, host=base.broker.host)
        broker.start()
        stack.callback(broker.stop)
        console.print(f"embedded broker on {broker.bootstrap}")
        ws = stack.enter_context(WorkspaceEmulator(STATE / "workspace"))
        console.print(f"workspace emulator on {ws.endpoint} (CA {ws.ca_path})")

        config = write_config(STATE / "config.yaml", demo_config(broker.bootstrap, ws.destination("demo")))
        create_topics(config)

        stream = StageProcess("stream", ["stream"], config, STATE)
        sink = StageProcess("sink", ["sink", "--destination", "demo"], config, STATE)
        producer = StageProcess("producer", ["produce", "--quiet", str(corpus)], config, STATE)
        stages = [producer, stream, sink]
        for stage in reversed(stages):
            stack.callback(stage.stop)
        console.print(f"stages running: {', '.join(s.name for s in stages)} (logs in {STATE})")
        wait_for_rows(ws, producer, stages)
        console.print(producer.tail(6))
        report(ws, started)
    console.print("everything stopped")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CORPUS)
