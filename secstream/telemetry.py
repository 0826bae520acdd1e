"""OpenTelemetry set-up for every stage, trace context in Kafka headers, and in-memory readers for tests.

Stages instrument with the OpenTelemetry API directly (``metrics.get_meter("secstream.sink")``, a span per
batch). Until ``setup_telemetry`` installs an SDK, the API is a no-op: an instrument call or a span costs a few
microseconds, negligible once per batch (docs/benchmarks.md, "Telemetry overhead").
The providers are process-wide (the API lets them be set once), so exporters are *added* to one SDK MeterProvider
and one TracerProvider; calling ``setup_telemetry`` again with the same settings changes nothing.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricExporter,
    MetricReader,
    NumberDataPoint,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from secstream.config import ConfigError, TelemetrySettings

log = logging.getLogger(__name__)

# A Kafka header list as confluent-kafka's ``produce(headers=...)`` takes it (aiokafka's ``send`` too).
KafkaHeaders = list[tuple[str, str | bytes | None]]
# What consumers hand us: confluent-kafka lists, aiokafka tuples, Faust mappings; values bytes or str.
AnyHeaders = Mapping[str, bytes | str | None] | Iterable[tuple[str, bytes | str | None]] | None

_lock = threading.Lock()
_meter_provider: MeterProvider | None = None
_tracer_provider: TracerProvider | None = None
_installed_exporters: set[tuple[Any, ...]] = set()
# MeterProvider.force_flush/shutdown only reach readers given to its constructor, so ours are tracked here.
_exporting_readers: list[MetricReader] = []
_prometheus_servers: list[Any] = []


# --------------------------------------------------------------------------------------------------- set-up


def setup_telemetry(telemetry_settings: TelemetrySettings, service_name: str) -> None:
    """Install the exporter named by ``telemetry.exporter``. Idempotent; ``none`` keeps the no-op API.

    ``service_name`` (e.g. ``secstream-sink``) becomes the ``service.name`` resource attribute; the first call
    in a process fixes it. Raises ``ConfigError`` when the Prometheus port cannot be opened.
    """
    exporter = telemetry_settings.exporter
    if exporter == "none":
        return
    key = (exporter, telemetry_settings.otlp_endpoint, telemetry_settings.prometheus_host,
           telemetry_settings.prometheus_port, telemetry_settings.export_interval_seconds)
    with _lock:
        if key in _installed_exporters:
            return
        # Exporters first: if one cannot start (port taken), nothing has been installed.
        interval_ms = telemetry_settings.export_interval_seconds * 1000
        reader: MetricReader
        span_exporter: SpanExporter | None = None
        if exporter == "prometheus":
            reader = _prometheus_reader(telemetry_settings)
        else:
            metric_exporter, span_exporter = _push_exporters(exporter, telemetry_settings.otlp_endpoint)
            reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=interval_ms)
        meter_provider, tracer_provider = _sdk_providers(service_name)
        meter_provider.add_metric_reader(reader)
        if span_exporter is not None:
            tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
        if not _exporting_readers:
            atexit.register(shutdown_telemetry)
        _exporting_readers.append(reader)
        _installed_exporters.add(key)
    log.info("telemetry: %s exporter for %s", exporter, service_name)


def shutdown_telemetry(timeout_seconds: float = 10.0) -> None:
    """Export what is pending and stop the exporters (also done at interpreter exit). Not restartable."""
    with _lock:
        if _tracer_provider is not None and _exporting_readers:
            _tracer_provider.shutdown()  # flushes the batch span processors first
        for reader in _exporting_readers:
            reader.shutdown(timeout_millis=timeout_seconds * 1000)  # a periodic reader exports a last time
        _exporting_readers.clear()
        for server in _prometheus_servers:
            server.shutdown()
            server.server_close()
        _prometheus_servers.clear()


def flush_telemetry(timeout_seconds: float = 10.0) -> None:
    """Push pending spans and metrics now (e.g. before a bounded run exits)."""
    if _tracer_provider is not None:
        _tracer_provider.force_flush(int(timeout_seconds * 1000))
    for reader in list(_exporting_readers):
        reader.force_flush(timeout_millis=timeout_seconds * 1000)


def _sdk_providers(service_name: str) -> tuple[MeterProvider, TracerProvider]:
    """The process-wide SDK providers, created and made global on first use (caller holds ``_lock``).

    If something else already installed an SDK provider globally, we add our readers to it instead.
    """
    global _meter_provider, _tracer_provider
    resource = Resource.create({"service.name": service_name})
    if _meter_provider is None:
        _meter_provider = _adopt_or_install(
            metrics.get_meter_provider(), MeterProvider, lambda: MeterProvider(resource=resource),
            metrics.set_meter_provider)
    if _tracer_provider is None:
        _tracer_provider = _adopt_or_install(
            trace.get_tracer_provider(), TracerProvider, lambda: TracerProvider(resource=resource),
            trace.set_tracer_provider)
    return _meter_provider, _tracer_provider


_P = TypeVar("_P")


def _adopt_or_install(current: object, sdk_class: type[_P], make: Callable[[], _P],
                      install: Callable[[_P], None]) -> _P:
    if isinstance(current, sdk_class):
        return current
    provider = make()
    install(provider)
    return provider


def _push_exporters(exporter: str, endpoint: str | None) -> tuple[MetricExporter, SpanExporter]:
    if exporter == "console":
        return ConsoleMetricExporter(), ConsoleSpanExporter()
    if exporter == "otlp-grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetrics
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans

        # None = OTEL_EXPORTER_OTLP_ENDPOINT or localhost:4317; http:// means plaintext.
        return GrpcMetrics(endpoint=endpoint), GrpcSpans(endpoint=endpoint)
    if exporter == "otlp-http":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetrics
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans

        if endpoint is None:  # OTEL_EXPORTER_OTLP_ENDPOINT or http://localhost:4318
            return HttpMetrics(), HttpSpans()
        base = endpoint.rstrip("/")
        return HttpMetrics(endpoint=f"{base}/v1/metrics"), HttpSpans(endpoint=f"{base}/v1/traces")
    raise ValueError(f"unknown telemetry exporter {exporter!r}")


def _prometheus_reader(telemetry_settings: TelemetrySettings) -> MetricReader:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    host, port = telemetry_settings.prometheus_host, telemetry_settings.prometheus_port
    try:
        server, _thread = start_http_server(port, addr=host)
    except OSError as exc:
        raise ConfigError(f"telemetry.prometheus_port: cannot listen on {host}:{port} ({exc.strerror})") from None
    _prometheus_servers.append(server)
    return PrometheusMetricReader()


# --------------------------------------------------------------------------------------- Kafka trace headers

_TRACE_HEADERS = ("traceparent", "tracestate")


def inject_trace_headers(headers: AnyHeaders = None) -> KafkaHeaders:
    """``headers`` plus the W3C ``traceparent``/``tracestate`` of the current span, as Kafka header tuples.

    Any trace headers already present are replaced (a re-published record carries the new span). Without a
    valid current span (telemetry off and no incoming context) the headers come back unchanged, as a new list.
    """
    out: KafkaHeaders = [(k, v) for k, v in _header_items(headers) if k.lower() not in _TRACE_HEADERS]
    if not trace.get_current_span().get_span_context().is_valid:
        return out
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    out.extend((k, v.encode("utf-8")) for k, v in carrier.items())
    return out


def extract_trace_context(headers: AnyHeaders) -> Context:
    """The trace context carried by a record's headers, as the parent for the batch's span.

    Accepts confluent-kafka header lists (``msg.headers()``, possibly None), aiokafka header tuples and Faust
    header mappings; values may be bytes or str. With no trace headers the result carries no parent span.
    """
    carrier: dict[str, str] = {}
    for key, value in _header_items(headers):
        if value is not None:
            carrier[key.lower()] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    if not carrier:
        return Context()
    return propagate.extract(carrier, context=Context())


def _header_items(headers: AnyHeaders) -> Iterable[tuple[str, bytes | str | None]]:
    if not headers:
        return ()
    return headers.items() if isinstance(headers, Mapping) else headers


def batch_span(
    tracer: trace.Tracer,
    name: str,
    headers: AnyHeaders = None,
    attributes: Mapping[str, Any] | None = None,
) -> AbstractContextManager[trace.Span]:
    """A current span for one batch, the child of the trace carried in the record's ``headers`` (if any).

    ``with batch_span(tracer, "stream.batch", msg.headers(), {"secstream.events": n}): ...`` — spans started
    and headers injected inside the block belong to the same trace.
    """
    parent = extract_trace_context(headers) if headers else None
    kind = trace.SpanKind.CONSUMER if headers is not None else trace.SpanKind.INTERNAL
    return tracer.start_as_current_span(name, context=parent, kind=kind, attributes=dict(attributes or {}))


# ------------------------------------------------------------------------------------ in-memory, for tests


@dataclass(frozen=True)
class HistogramValue:
    count: int
    sum: float
    min: float | None
    max: float | None


class InMemoryMetrics:
    """Reads what the global OpenTelemetry API recorded since this object was created (tests, benchmarks).

    Installs the process-wide SDK MeterProvider if none is set, then attaches a fresh in-memory reader, so
    counts start at zero: after a known run, ``value("secstream.sink.rows_accepted", destination="ws")`` is exact.
    Attributes match as a subset; points of the same metric that match are summed.
    """

    def __init__(self, service_name: str = "secstream-test") -> None:
        self._reader = InMemoryMetricReader()
        with _lock:
            provider, _ = _sdk_providers(service_name)
            provider.add_metric_reader(self._reader)
        self._provider = provider

    def value(self, name: str, **attributes: Any) -> int | float:
        """Sum of a counter / up-down counter, or the last value of a gauge; 0 if nothing matched."""
        total: int | float = 0
        for point in self._points(name, attributes):
            if isinstance(point, HistogramDataPoint):
                raise TypeError(f"{name} is a histogram: use histogram()")
            total += point.value
        return total

    def histogram(self, name: str, **attributes: Any) -> HistogramValue:
        count, total, low, high = 0, 0.0, None, None
        for point in self._points(name, attributes):
            if not isinstance(point, HistogramDataPoint):
                raise TypeError(f"{name} is not a histogram: use value()")
            count += point.count
            total += point.sum
            low = point.min if low is None else min(low, point.min)
            high = point.max if high is None else max(high, point.max)
        return HistogramValue(count, total, low, high)

    def names(self) -> set[str]:
        return {metric.name for metric in self._metrics()}

    def close(self) -> None:
        self._provider.remove_metric_reader(self._reader)

    def __enter__(self) -> InMemoryMetrics:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _metrics(self) -> Iterator[Any]:
        data = self._reader.get_metrics_data()
        if data is None:
            return
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                yield from scope_metrics.metrics

    def _points(
        self, name: str, attributes: Mapping[str, Any]
    ) -> Iterator[NumberDataPoint | HistogramDataPoint]:
        for metric in self._metrics():
            if metric.name != name:
                continue
            for point in metric.data.data_points:
                point_attributes = point.attributes or {}
                if all(point_attributes.get(k) == v for k, v in attributes.items()):
                    yield point


class InMemorySpans:
    """Collects spans finished (through the global API) while it is open; installs the SDK TracerProvider."""

    def __init__(self, service_name: str = "secstream-test") -> None:
        self._spans: list[ReadableSpan] = []
        self._spans_lock = threading.Lock()
        with _lock:
            _, provider = _sdk_providers(service_name)
            _fan_out(provider).add(self)

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        with self._spans_lock:
            return [s for s in self._spans if name is None or s.name == name]

    def close(self) -> None:
        _fan_out_processor.discard(self)

    def __enter__(self) -> InMemorySpans:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _record(self, span: ReadableSpan) -> None:
        with self._spans_lock:
            self._spans.append(span)


class _FanOutProcessor(SpanProcessor):
    """One span processor, registered once, handing finished spans to the open ``InMemorySpans``.

    The SDK cannot remove a span processor, so collectors come and go here instead."""

    def __init__(self) -> None:
        self._targets: tuple[InMemorySpans, ...] = ()
        self.registered_with: TracerProvider | None = None

    def add(self, target: InMemorySpans) -> None:
        self._targets = (*self._targets, target)

    def discard(self, target: InMemorySpans) -> None:
        self._targets = tuple(t for t in self._targets if t is not target)

    def on_end(self, span: ReadableSpan) -> None:
        for target in self._targets:
            target._record(span)


_fan_out_processor = _FanOutProcessor()


def _fan_out(provider: TracerProvider) -> _FanOutProcessor:
    if _fan_out_processor.registered_with is not provider:
        provider.add_span_processor(_fan_out_processor)
        _fan_out_processor.registered_with = provider
    return _fan_out_processor

