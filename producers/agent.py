"""Agent mode of the producer: batches go over HTTPS to collectors, with retry and failover.

Each batch is POSTed (Avro wire format, gzip) to the current collector. A timeout, a connection error, 429 or a
5xx moves on to the next collector in the list; after a full round without success the agent backs off
(exponentially, up to ``collector_retry_max_seconds``) and goes round again, as long as it is not told to stop.
The batch keeps its ``batch_id`` through all of it. A collector that timed out may still have written the batch to
Kafka, so a retry elsewhere can store it twice: the stream stage removes such duplicates by event identity.
"""

from __future__ import annotations

import gzip
import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from opentelemetry import metrics, propagate, trace

from producers.batching import OutgoingBatch
from producers.kafka_sink import split_batch
from secstream.config import Settings

log = logging.getLogger(__name__)
_meter = metrics.get_meter("secstream.producer")
_tracer = trace.get_tracer("secstream.producer")
_posts = _meter.create_counter("secstream.producer.collector_posts")
_failovers = _meter.create_counter("secstream.producer.collector_failovers")

CONTENT_TYPE = "application/vnd.secstream.raw-batch+avro"
RETRYABLE = {408, 425, 429, 500, 502, 503, 504}


class CollectorAuthError(RuntimeError):
    """The collectors refuse the token: retrying will not help."""


class CollectorSink:
    """Synchronous sender: one batch at a time, acknowledged by a 200 from any collector."""

    in_flight_batches = 0

    def __init__(self, urls: list[str], token: str, agent_id: str, on_delivered: Callable[[OutgoingBatch], None],
                 stop: threading.Event, timeout: float = 30.0, retry_max: float = 30.0,
                 context: ssl.SSLContext | None = None) -> None:
        if not urls:
            raise ValueError("agent mode needs at least one collector URL")
        self.urls = [u.rstrip("/") + "/v1/batches" if not u.rstrip("/").endswith("/v1/batches") else u
                     for u in urls]
        self.token = token
        self.agent_id = agent_id
        self.on_delivered = on_delivered
        self.stop = stop
        self.timeout = timeout
        self.retry_max = retry_max
        self.context = context
        self.current = 0
        self.dead_letters = 0
        self.last_response: dict[str, Any] = {}

    @classmethod
    def from_settings(cls, settings: Settings, agent_id: str, on_delivered: Callable[[OutgoingBatch], None],
                      stop: threading.Event) -> CollectorSink:
        p = settings.producer
        if p.collector_token is None:
            raise ValueError("agent mode needs producer.collector_token (SECSTREAM_PRODUCER__COLLECTOR_TOKEN)")
        context = ssl.create_default_context(cafile=str(p.collector_ca_bundle) if p.collector_ca_bundle else None)
        return cls(p.collector_urls, p.collector_token.get_secret_value(), agent_id, on_delivered, stop,
                   p.collector_timeout_seconds, p.collector_retry_max_seconds, context)

    def send(self, batch: OutgoingBatch, wait: Callable[[], bool] | None = None) -> None:
        if batch.send_time_us == 0:
            batch.send_time_us = time.time_ns() // 1000
        body = gzip.compress(batch.encode(self.agent_id), compresslevel=1)
        backoff = 0.5
        while not self.stop.is_set():
            for _ in range(len(self.urls)):
                url = self.urls[self.current]
                outcome = self._post(url, body, batch)
                if outcome == "ok":
                    whole = batch.completed_part()
                    if whole is not None:
                        self.on_delivered(whole)
                    return
                if outcome == "too-large":
                    for part in split_batch(batch):
                        self.send(part, wait)
                    return
                _failovers.add(1)
                self.current = (self.current + 1) % len(self.urls)
            log.warning("no collector accepted batch %s; retrying in %.1f s", batch.batch_id, backoff)
            if self.stop.wait(backoff):
                break
            backoff = min(backoff * 2, self.retry_max)
        log.warning("stopping with batch %s undelivered; it is sent again on restart", batch.batch_id)

    def _post(self, url: str, body: bytes, batch: OutgoingBatch) -> str:
        batch.attempts += 1
        # One span per POST; its W3C traceparent travels in the request, and the collector continues the trace
        # into the Kafka record it writes.
        with _tracer.start_as_current_span("producer.collector_post", kind=trace.SpanKind.CLIENT, attributes={
                "secstream.host": batch.host, "secstream.batch_id": batch.batch_id,
                "secstream.events": batch.event_count, "secstream.attempt": batch.attempts, "url.full": url}):
            return self._post_traced(url, body, batch)

    def _post_traced(self, url: str, body: bytes, batch: OutgoingBatch) -> str:
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Content-Type": CONTENT_TYPE,
            "Content-Encoding": "gzip",
            "X-Batch-Id": batch.batch_id,
        }
        propagate.inject(headers)
        request = urllib.request.Request(url, data=body, method="POST", headers=headers)
        _posts.add(1)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as response:
                self.last_response = json.loads(response.read() or b"{}")
                return "ok"
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            if exc.code in (401, 403):
                raise CollectorAuthError(f"{url} refused the agent token ({exc.code}): {detail}") from None
            if exc.code == 413 and batch.event_count > 1:
                return "too-large"
            if exc.code in RETRYABLE:
                log.warning("%s answered %d for batch %s: %s", url, exc.code, batch.batch_id, detail)
                return "retry"
            raise RuntimeError(f"{url} rejected batch {batch.batch_id} ({exc.code}): {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            log.warning("%s unreachable for batch %s: %s", url, batch.batch_id, getattr(exc, "reason", exc))
            return "retry"

    def dead_letter(self, reason: str, raw: bytes | None, source: str) -> None:
        # Agents have no Kafka access: unreadable records are logged (by the stage) and counted.
        self.dead_letters += 1

    def poll(self, timeout: float = 0.0) -> None:
        if timeout:
            self.stop.wait(timeout)

    def flush(self, timeout: float) -> bool:
        return True

    def close(self, timeout: float = 5.0) -> None:
        return None
