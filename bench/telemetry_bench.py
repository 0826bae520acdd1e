"""What instrumentation costs a stage, with telemetry off and on.

Patterns (what a stage does per unit of work):
  batch        1 span + 1 counter add + 1 histogram record per 500-event batch (the convention)
  batch+trace  the same, plus extracting the parent from the record's headers and injecting into the output's
  event        1 span + 1 counter add per event (what the convention avoids), for contrast

Modes, each in a fresh interpreter (the OpenTelemetry providers can be set once per process):
  off        telemetry.exporter = none: the API's no-op implementation
  in-memory  SDK meter provider with an in-memory reader + SDK tracer provider whose spans are dropped
  console    setup_telemetry(console) with stdout sent to /dev/null; span export runs on the SDK's thread

    .venv/bin/python bench/telemetry_bench.py [--seconds 2]

CPU time is the whole process (export threads included). Prints a table and writes bench/results/telemetry.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "telemetry.json"
BATCH = 500
MODES = ("off", "in-memory", "console")
PATTERNS = ("batch", "batch+trace", "event")
INCOMING = [("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), ("schema", b"raw.v1")]


def _install(mode: str) -> int:
    """Set telemetry up for ``mode``; returns a file descriptor for the results (stdout may be /dev/null)."""
    results_fd = os.dup(1)
    from secstream.config import TelemetrySettings
    from secstream.telemetry import setup_telemetry

    if mode == "off":
        setup_telemetry(TelemetrySettings(exporter="none"), "secstream-bench")
    elif mode == "in-memory":
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider

        from secstream.telemetry import InMemoryMetrics

        trace.set_tracer_provider(TracerProvider())  # records spans, exports none
        InMemoryMetrics("secstream-bench")
    elif mode == "console":
        # The console exporters bind sys.stdout when imported, so the descriptor itself is redirected.
        sys.stdout.flush()
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        setup_telemetry(TelemetrySettings(exporter="console", export_interval_seconds=1.0), "secstream-bench")
    else:
        raise ValueError(mode)
    return results_fd


def _unit_of_work(pattern: str) -> Callable[[], None]:
    from opentelemetry import metrics, trace

    from secstream.telemetry import batch_span, inject_trace_headers

    meter = metrics.get_meter("secstream.bench")
    events = meter.create_counter("secstream.bench.events_in", unit="{event}")
    sizes = meter.create_histogram("secstream.bench.batch_size", unit="{event}")
    tracer = trace.get_tracer("secstream.bench")
    attributes: dict[str, str | int] = {"topic": "secstream.raw", "partition": 3}

    def batch() -> None:
        with tracer.start_as_current_span("bench.batch", attributes=attributes):
            events.add(BATCH, attributes)
            sizes.record(BATCH, attributes)

    def batch_with_trace() -> None:
        with batch_span(tracer, "bench.batch", INCOMING, attributes):
            events.add(BATCH, attributes)
            sizes.record(BATCH, attributes)
            inject_trace_headers(INCOMING)

    def event() -> None:
        with tracer.start_as_current_span("bench.event", attributes=attributes):
            events.add(1, attributes)

    return {"batch": batch, "batch+trace": batch_with_trace, "event": event}[pattern]


def _measure(work: Callable[[], None], seconds: float) -> dict[str, float]:
    for _ in range(1000):  # warm-up
        work()
    ops, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
    deadline = wall0 + seconds
    while time.perf_counter() < deadline:
        for _ in range(200):
            work()
        ops += 200
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    time.sleep(1.5)  # let the periodic metric export and span batches run, and count their CPU
    cpu = time.process_time() - cpu0
    return {"ops": ops, "wall_us_per_op": wall / ops * 1e6, "cpu_us_per_op": cpu / ops * 1e6}


def child(mode: str, seconds: float) -> None:
    results_fd = _install(mode)
    out = {pattern: _measure(_unit_of_work(pattern), seconds) for pattern in PATTERNS}
    out["empty"] = _measure(lambda: None, seconds)
    os.write(results_fd, (json.dumps(out) + "\n").encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per pattern and mode")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.seconds)
        return

    results: dict[str, dict[str, dict[str, float]]] = {}
    for mode in MODES:
        run = subprocess.run([sys.executable, __file__, "--child", mode, "--seconds", str(args.seconds)],
                             capture_output=True, text=True, check=True)
        results[mode] = json.loads(run.stdout.strip().splitlines()[-1])

    print(f"{'mode':<10} {'pattern':<12} {'µs/op wall':>11} {'µs/op cpu':>10} {'µs/event':>9}")
    for mode, patterns in results.items():
        for pattern in PATTERNS:
            r = patterns[pattern]
            per_event = r["cpu_us_per_op"] / (BATCH if pattern.startswith("batch") else 1)
            r["cpu_us_per_event"] = per_event
            print(f"{mode:<10} {pattern:<12} {r['wall_us_per_op']:>11.2f} {r['cpu_us_per_op']:>10.2f} "
                  f"{per_event:>9.4f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "batch_events": BATCH,
        "seconds_per_pattern": args.seconds,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_at_end": os.getloadavg(),
        "results": results,
    }, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
