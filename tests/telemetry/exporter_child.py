"""Child process for the exporter tests: each run is a fresh interpreter whose first exporter is the one tested.

Usage: exporter_child.py passthrough | console | prometheus PORT | otlp-http ENDPOINT | otlp-grpc ENDPOINT
"""

from __future__ import annotations

import sys

from opentelemetry import metrics, trace
from opentelemetry.sdk.trace import TracerProvider

from secstream.config import TelemetrySettings
from secstream.telemetry import batch_span, inject_trace_headers, setup_telemetry, shutdown_telemetry

INCOMING = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def record_one_batch() -> None:
    meter = metrics.get_meter("secstream.test")
    meter.create_counter("secstream.test.events_in", unit="{event}").add(500, {"topic": "raw"})
    meter.create_histogram("secstream.test.batch_size", unit="{event}").record(500)
    with trace.get_tracer("secstream.test").start_as_current_span("test.batch", attributes={"secstream.events": 500}):
        pass


def main(mode: str, *args: str) -> None:
    if mode == "passthrough":
        setup_telemetry(TelemetrySettings(exporter="none"), "secstream-test")
        assert not isinstance(trace.get_tracer_provider(), TracerProvider)  # the API stays a no-op
        with batch_span(trace.get_tracer("secstream.stream"), "stream.batch", [("traceparent", INCOMING.encode())]):
            outgoing = dict(inject_trace_headers())["traceparent"]
        assert isinstance(outgoing, bytes)
        print(INCOMING, outgoing.decode())
        return
    if mode == "console":
        setup_telemetry(TelemetrySettings(exporter="console"), "secstream-test")
        setup_telemetry(TelemetrySettings(exporter="console"), "secstream-test")  # idempotent: one output
    elif mode == "prometheus":
        setup_telemetry(TelemetrySettings(exporter="prometheus", prometheus_port=int(args[0]),
                                          prometheus_host="127.0.0.1"), "secstream-test")
    elif mode in ("otlp-http", "otlp-grpc"):
        setup_telemetry(TelemetrySettings(exporter=mode, otlp_endpoint=args[0]), "secstream-test")
    record_one_batch()
    if mode == "prometheus":
        print("ready", flush=True)
        sys.stdin.readline()  # the test scrapes, then closes our stdin
        return
    shutdown_telemetry()


if __name__ == "__main__":
    main(*sys.argv[1:])
