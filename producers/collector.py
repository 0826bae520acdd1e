"""``secstream collect``: an HTTPS gateway that takes event batches from remote agents and writes them to Kafka.

POST /v1/batches with ``Authorization: Bearer <token>`` and one of

* ``Content-Type: application/vnd.secstream.raw-batch+avro`` - one RawEventBatch in the Confluent wire format
  (what ``secstream produce --collector`` sends), or
* ``Content-Type: application/x-ndjson`` - RawEvent JSON objects, one per line (grouped here into one batch per
  host; ``X-Batch-Id`` names the request so a retry gets the same batch ids),

optionally ``Content-Encoding: gzip``. The answer is 200 only once Kafka has acknowledged every batch of the
request; 401 for a bad token, 413 for a body over the limit, 429 when too many bytes already wait for Kafka, 503
when Kafka did not acknowledge in time (retry, possibly elsewhere), 400 for a body that is not a batch at all.
Malformed NDJSON lines go to the dead-letter topic with the reason in a header, are counted and listed in the
answer, and the rest of the request is delivered. The collector keeps no state: any number of replicas can sit
behind a load balancer.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import socket
import ssl
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from confluent_kafka import KafkaError, Producer
from fastavro import parse_schema
from fastavro.validation import ValidationError, validate
from opentelemetry import metrics, propagate, trace

from producers.kafka_sink import kafka_producer_conf
from producers.timeutil import now_us
from schemas.avsc import read_avsc
from schemas.codec import DecodeError, decode_raw_batch, encode_raw_batch
from secstream.config import CollectorSettings, Settings
from secstream.dead_letter import dead_letter_headers
from secstream.kafka_metrics import KafkaClientStats
from secstream.telemetry import inject_trace_headers

log = logging.getLogger(__name__)
_meter = metrics.get_meter("secstream.collector")
_tracer = trace.get_tracer("secstream.collector")
_requests = _meter.create_counter("secstream.collector.requests")
_events = _meter.create_counter("secstream.collector.events_accepted")
_rejected = _meter.create_counter("secstream.collector.lines_rejected")

AVRO_TYPES = ("application/vnd.secstream.raw-batch+avro", "application/avro", "avro/binary")
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl", "application/json")
MAX_ERRORS_REPORTED = 50

_RAW_EVENT = parse_schema(read_avsc("RawEvent", 1))
_DEFAULTS = {f["name"]: f["default"] for f in read_avsc("RawEvent", 1)["fields"] if "default" in f}


class TokenStore:
    """Agent tokens from a file (``agent_id token`` per line) or a mounted Kubernetes secret (one file per agent).
    Re-read when the file or folder changes, so rotated secrets apply without a restart."""

    def __init__(self, tokens_file: Path | None, tokens_dir: Path | None) -> None:
        if tokens_file is None and tokens_dir is None:
            raise ValueError("collector needs collector.tokens_file or collector.tokens_dir")
        self.tokens_file, self.tokens_dir = tokens_file, tokens_dir
        self._tokens: dict[str, str] = {}
        self._stamp: float | None = None
        self._checked = 0.0
        self._reload()
        if not self._tokens:
            raise ValueError("collector token source holds no tokens")

    def _mtime(self) -> float:
        if self.tokens_file is not None:
            return self.tokens_file.stat().st_mtime
        assert self.tokens_dir is not None
        return max([self.tokens_dir.stat().st_mtime, *(p.stat().st_mtime for p in self.tokens_dir.iterdir())])

    def _reload(self) -> None:
        stamp = self._mtime()
        if stamp == self._stamp:
            return
        tokens: dict[str, str] = {}
        if self.tokens_file is not None:
            for number, line in enumerate(self.tokens_file.read_text(encoding="utf-8").splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                agent, sep, token = line.replace(":", " ", 1).partition(" ")
                if not sep or not token.strip():
                    raise ValueError(f"{self.tokens_file}:{number}: expected 'agent_id token'")
                tokens[token.strip()] = agent
        else:
            assert self.tokens_dir is not None
            for path in sorted(self.tokens_dir.iterdir()):
                # Kubernetes mounts secrets through ..data symlinks; the visible names are the keys.
                if path.name.startswith(".") or not path.is_file():
                    continue
                token = path.read_text(encoding="utf-8").strip()
                if token:
                    tokens[token] = path.name
        self._tokens, self._stamp = tokens, stamp

    def agent_for(self, token: str) -> str | None:
        now = time.monotonic()
        if now - self._checked > 5.0:
            self._checked = now
            try:
                self._reload()
            except (OSError, ValueError) as exc:
                log.error("keeping the previous tokens: cannot re-read them (%s)", exc)
        for known, agent in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return agent
        return None


class KafkaWriter:
    """A confluent-kafka producer whose acknowledgements resolve asyncio futures (polled on its own thread)."""

    def __init__(self, conf: dict[str, Any]) -> None:
        self.stats = KafkaClientStats("collector")  # producer queue depth gauges
        self.producer = Producer({**conf, **self.stats.client_options()})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="collector-kafka-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.1)

    def send(self, topic: str, key: bytes, value: bytes,
             headers: list[tuple[str, str | bytes | None]] | None = None
             ) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            loop.call_soon_threadsafe(_settle, future, err)

        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                return future
            except BufferError:
                self.producer.poll(0.05)

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.producer.flush(timeout)
        self.producer.purge()
        self.producer.close()


def _settle(future: asyncio.Future[None], err: KafkaError | None) -> None:
    if future.done():
        return
    if err is None:
        future.set_result(None)
    else:
        future.set_exception(RuntimeError(err.str()))


class RequestError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def raw_event_from_json(obj: Any, collector_id: str, agent_id: str) -> dict[str, Any]:
    """One NDJSON line's object -> a RawEvent dict that fits the schema; ValueError with the reason otherwise."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    event = {**_DEFAULTS, **obj}
    provenance = event.get("provenance")
    if not isinstance(provenance, dict):
        provenance = {}
    event["provenance"] = {
        "source_format": provenance.get("source_format") or "ndjson",
        "agent_id": provenance.get("agent_id") or agent_id,
        "collector_id": collector_id,
        "read_time_us": provenance.get("read_time_us") or now_us(),
        "source_ref": provenance.get("source_ref"),
    }
    unknown = set(event) - set(_DEFAULTS) - {"event_id", "time_created", "provenance"}
    if unknown:
        raise ValueError(f"unknown fields: {', '.join(sorted(unknown))[:200]}")
    try:
        validate(event, _RAW_EVENT, raise_errors=True)
    except ValidationError as exc:
        raise ValueError(f"does not fit RawEvent: {str(exc)[:300]}") from None
    return event


class Collector:
    """The request handling; owns no state beyond counters, so replicas are interchangeable."""

    def __init__(self, settings: Settings, tokens: TokenStore, writer: KafkaWriter) -> None:
        self.settings = settings
        self.cfg: CollectorSettings = settings.collector
        self.collector_id = self.cfg.collector_id or socket.gethostname()
        self.tokens = tokens
        self.writer = writer
        self.in_flight_bytes = 0

    def app(self) -> web.Application:
        # aiohttp inflates gzip request bodies itself, counting the inflated bytes against client_max_size
        # (so a gzip bomb stops at the limit); the compressed size is checked against Content-Length below.
        app = web.Application(client_max_size=self.cfg.max_decompressed_bytes)
        app.router.add_post("/v1/batches", self.handle)
        app.router.add_get("/healthz", self.health)
        return app

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "in_flight_bytes": self.in_flight_bytes})

    async def handle(self, request: web.Request) -> web.Response:
        _requests.add(1)
        # The agent's W3C traceparent (if any) is the parent: the records written below carry this span's trace.
        with _tracer.start_as_current_span("collector.request", context=propagate.extract(request.headers),
                                           kind=trace.SpanKind.SERVER) as span:
            try:
                return await self._handle(request)
            except RequestError as exc:
                span.set_attribute("http.response.status_code", exc.status)
                return self._refusal(exc)

    def _refusal(self, exc: RequestError) -> web.Response:
        _requests.add(1, {"status": str(exc.status)})
        headers = {"Retry-After": "1"} if exc.status in (429, 503) else {}
        if exc.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return web.json_response({"error": exc.reason}, status=exc.status, headers=headers)

    async def _handle(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        agent = self.tokens.agent_for(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        if agent is None:
            raise RequestError(401, "missing or unknown bearer token")
        length = request.content_length
        if length is not None and length > self.cfg.max_body_bytes:
            raise RequestError(413, f"body of {length} bytes exceeds {self.cfg.max_body_bytes}")
        if length is not None and self.in_flight_bytes + length > self.cfg.max_in_flight_bytes:
            raise RequestError(429, "overloaded: too many bytes waiting for Kafka; retry later")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise RequestError(413, f"decompressed body exceeds {self.cfg.max_decompressed_bytes} bytes") from None
        except (ValueError, OSError) as exc:  # e.g. a body that is not the gzip it claims to be
            raise RequestError(400, f"unreadable body ({exc})") from None
        if self.in_flight_bytes + len(body) > self.cfg.max_in_flight_bytes:
            raise RequestError(429, "overloaded: too many bytes waiting for Kafka; retry later")
        content_type = request.content_type.lower()
        self.in_flight_bytes += len(body)
        try:
            if content_type in AVRO_TYPES:
                return await self._avro(body, agent)
            if content_type in NDJSON_TYPES:
                request_id = request.headers.get("X-Batch-Id") or hashlib.sha256(body).hexdigest()
                return await self._ndjson(body, agent, request_id)
            raise RequestError(415 if content_type else 400, f"unsupported Content-Type {content_type!r}")
        finally:
            self.in_flight_bytes -= len(body)

    async def _avro(self, body: bytes, agent: str) -> web.Response:
        try:
            batch = decode_raw_batch(body)
        except DecodeError as exc:
            await self._dead_letter(body, f"undecodable batch: {exc}", agent)
            raise RequestError(400, str(exc)) from None
        batch["agent_id"] = agent  # the identity the token proves, not what the body claims
        for event in batch["events"]:
            event["provenance"]["collector_id"] = self.collector_id
        await self._deliver([batch])
        _events.add(len(batch["events"]))
        return web.json_response({"accepted_events": len(batch["events"]), "batches": 1, "rejected_lines": 0,
                                  "batch_ids": [batch["batch_id"]]})

    async def _ndjson(self, body: bytes, agent: str, request_id: str) -> web.Response:
        by_host: dict[str, list[dict[str, Any]]] = {}
        errors: list[dict[str, Any]] = []
        dead: list[asyncio.Future[None]] = []
        for number, line in enumerate(body.splitlines(), 1):
            if not line.strip():
                continue
            try:
                event = raw_event_from_json(orjson.loads(line), self.collector_id, agent)
            except (orjson.JSONDecodeError, ValueError) as exc:
                reason = f"line {number}: {exc}"
                errors.append({"line": number, "reason": str(exc)[:300]})
                dead.append(self._dead_letter_future(line, reason, agent))
                continue
            by_host.setdefault(event["computer"], []).append(event)
        _rejected.add(len(errors))
        namespace = uuid.uuid5(uuid.NAMESPACE_URL, f"secstream-collector:{agent}:{request_id}")
        batches: list[dict[str, Any]] = [
            {"host": host, "batch_id": str(uuid.uuid5(namespace, host)), "sequence": 0, "agent_id": agent,
             "send_time_us": now_us(), "events": events}
            for host, events in by_host.items()
        ]
        await self._deliver(batches, dead)
        accepted = sum(len(b["events"]) for b in batches)
        _events.add(accepted)
        return web.json_response({
            "accepted_events": accepted, "batches": len(batches), "rejected_lines": len(errors),
            "errors": errors[:MAX_ERRORS_REPORTED], "batch_ids": [b["batch_id"] for b in batches],
        })

    async def _deliver(self, batches: list[dict[str, Any]], also: list[asyncio.Future[None]] | None = None
                       ) -> None:
        futures = list(also or [])
        for batch in batches:
            value = encode_raw_batch(batch)
            futures.append(self.writer.send(self.settings.topics.raw, batch["host"].encode("utf-8"), value,
                                            inject_trace_headers([("batch_id", batch["batch_id"].encode())])))
        if not futures:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*futures), self.cfg.ack_timeout_seconds)
        except (TimeoutError, RuntimeError) as exc:
            raise RequestError(503, f"Kafka did not acknowledge the batch ({exc or 'timeout'}); retry") from None

    def _dead_letter_future(self, raw: bytes, reason: str, agent: str) -> asyncio.Future[None]:
        return self.writer.send(self.settings.topics.dead_letter, agent.encode(), raw, dead_letter_headers(
            "collector", reason, agent_id=agent, collector_id=self.collector_id))

    async def _dead_letter(self, raw: bytes, reason: str, agent: str) -> None:
        try:
            await asyncio.wait_for(self._dead_letter_future(raw, reason, agent), self.cfg.ack_timeout_seconds)
        except (TimeoutError, RuntimeError):
            log.error("could not write a dead-letter record (%s)", reason)


def tls_context(cfg: CollectorSettings) -> ssl.SSLContext | None:
    if cfg.tls_cert_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cfg.tls_cert_file), str(cfg.tls_key_file) if cfg.tls_key_file else None)
    return context


def build_collector(settings: Settings) -> Collector:
    cfg = settings.collector
    tokens = TokenStore(cfg.tokens_file, cfg.tokens_dir)
    writer = KafkaWriter(kafka_producer_conf(settings, cfg.compression, **{"message.timeout.ms": 60_000}))
    return Collector(settings, tokens, writer)


async def serve(collector: Collector, host: str, port: int, context: ssl.SSLContext | None,
                ready: threading.Event | None = None, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or forever)."""
    runner = web.AppRunner(collector.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=context)
    await site.start()
    if ready is not None:
        ready.set()
    try:
        await (stop.wait() if stop is not None else asyncio.Event().wait())
    finally:
        await runner.cleanup()
        collector.writer.close()
