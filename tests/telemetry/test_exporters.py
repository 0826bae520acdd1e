"""Each exporter, set up by ``setup_telemetry`` in a fresh process, delivers a counter, a histogram and a span."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from ..conftest import free_port
from .conftest import CHILD, run_child


def _json_documents(text: str) -> Iterator[dict]:
    """The console exporters print indented JSON documents one after another."""
    decoder, pos = json.JSONDecoder(), 0
    while (pos := _skip_space(text, pos)) < len(text):
        document, pos = decoder.raw_decode(text, pos)
        yield document


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def test_console_exporter_prints_spans_and_metrics_once() -> None:
    result = run_child("console")
    assert result.returncode == 0, result.stderr
    documents = list(_json_documents(result.stdout))
    spans = [d for d in documents if "context" in d]
    assert [s["name"] for s in spans] == ["test.batch"]
    assert spans[0]["attributes"] == {"secstream.events": 500}
    assert spans[0]["resource"]["attributes"]["service.name"] == "secstream-test"
    metrics = {
        m["name"]: m
        for d in documents if "resource_metrics" in d
        for rm in d["resource_metrics"] for sm in rm["scope_metrics"] for m in sm["metrics"]
    }
    events_in = metrics["secstream.test.events_in"]["data"]["data_points"]
    assert [(p["attributes"], p["value"]) for p in events_in] == [({"topic": "raw"}, 500)]
    assert metrics["secstream.test.batch_size"]["data"]["data_points"][0]["count"] == 1


def test_prometheus_endpoint_serves_the_metrics() -> None:
    port = free_port()
    child = subprocess.Popen([sys.executable, str(CHILD), "prometheus", str(port)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            body = response.read().decode()
    finally:
        child.communicate(input="\n", timeout=30)
    samples = [line for line in body.splitlines() if not line.startswith("#")]
    assert any(line.startswith("secstream_test_events_in_total{") and 'topic="raw"' in line
               and line.endswith(" 500.0") for line in samples), body
    assert any(line.startswith("secstream_test_batch_size_count{") and line.endswith(" 1.0") for line in samples)
    assert child.returncode == 0, child.stderr


def test_prometheus_port_in_use_is_a_configuration_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_child("prometheus", str(port))
    assert result.returncode != 0
    assert f"ConfigError: telemetry.prometheus_port: cannot listen on 127.0.0.1:{port}" in result.stderr


class _OtlpHttpReceiver(BaseHTTPRequestHandler):
    received: dict[str, list[bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.received.setdefault(self.path, []).append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


def _metric_names(requests: list[metrics_service_pb2.ExportMetricsServiceRequest]) -> set[str]:
    return {m.name for r in requests for rm in r.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}


def _span_names(requests: list[trace_service_pb2.ExportTraceServiceRequest]) -> list[str]:
    return [s.name for r in requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]


def test_otlp_http_exporter_posts_metrics_and_traces() -> None:
    received: dict[str, list[bytes]] = {}
    handler = type("Receiver", (_OtlpHttpReceiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = run_child("otlp-http", f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr
    metric_requests = [metrics_service_pb2.ExportMetricsServiceRequest.FromString(b)
                       for b in received.get("/v1/metrics", [])]
    trace_requests = [trace_service_pb2.ExportTraceServiceRequest.FromString(b) for b in received.get("/v1/traces", [])]
    assert {"secstream.test.events_in", "secstream.test.batch_size"} <= _metric_names(metric_requests)
    assert _span_names(trace_requests) == ["test.batch"]


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self) -> None:
        self.requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []

    def Export(self, request, context):
        self.requests.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request, context):
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_otlp_grpc_exporter_exports_metrics_and_traces() -> None:
    metrics_service, trace_service = _MetricsService(), _TraceService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(metrics_service, server)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(trace_service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        result = run_child("otlp-grpc", f"http://127.0.0.1:{port}")
    finally:
        server.stop(grace=None)
    assert result.returncode == 0, result.stderr
    assert {"secstream.test.events_in", "secstream.test.batch_size"} <= _metric_names(metrics_service.requests)
    assert _span_names(trace_service.requests) == ["test.batch"]
