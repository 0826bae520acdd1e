"""Dead-letter records of the sink: what could not be delivered, with the reason in the headers.

Value: the rows as gzip JSON, exactly what was (or would have been) sent (``content-encoding: gzip``), or the
original message value when it could not be decoded. Headers (all UTF-8):

- ``secstream.stage`` = ``sink``, ``secstream.destination``, ``secstream.reason`` (short code: ``rejected``,
  ``row-too-large``, ``undecodable``), ``secstream.error`` (the service's or decoder's message);
- ``secstream.source`` = ``<topic>/<partition>/<offset>:<rows>`` per source message, comma-separated;
- for rejected requests: ``secstream.http.status``, ``secstream.error.code``, ``secstream.dcr``,
  ``secstream.stream``, ``secstream.request.id`` (the ``x-ms-client-request-id`` the service logged).
"""

from __future__ import annotations

from collections.abc import Iterable

from secstream.dead_letter import dead_letter_headers, header_text
from secstream.telemetry import KafkaHeaders as Headers
from sinks.request_builder import Segment, gzip_body


def sources(topic: str, segments: Iterable[Segment]) -> str:
    return ",".join(f"{topic}/{s.partition}/{s.offset}:{s.rows}" for s in segments)


def _headers(destination: str, reason: str, error: str, source: str, gzipped: bool) -> Headers:
    headers = dead_letter_headers("sink", reason, destination=destination, error=error, source=source)
    if gzipped:
        headers.append(("content-encoding", b"gzip"))
    return headers


def rejected_request(destination: str, topic: str, segments: Iterable[Segment], body: bytes, *, status: int | None,
                     code: str, message: str, dcr: str, stream: str, request_id: str) -> tuple[bytes, Headers]:
    """A request the service refused for good (a 4xx other than auth/not-found, or a lone row answered 413)."""
    reason = "row-too-large" if code == "row-too-large" else "rejected"
    headers = _headers(destination, reason, message, sources(topic, segments), gzipped=True)
    headers += [
        ("secstream.error.code", header_text(code)),
        ("secstream.http.status", header_text(status if status is not None else "")),
        ("secstream.dcr", header_text(dcr)),
        ("secstream.stream", header_text(stream)),
        ("secstream.request.id", header_text(request_id)),
    ]
    return body, headers


def oversize_row(destination: str, topic: str, segment: Segment, row: bytes, reason: str,
                 gzip_level: int) -> tuple[bytes, Headers]:
    """A single row larger than a whole request, even with its values truncated."""
    headers = _headers(destination, "row-too-large", reason, sources(topic, [segment]), gzipped=True)
    return gzip_body(b"[" + row + b"]", gzip_level), headers


def undecodable(destination: str, topic: str, partition: int, offset: int, value: bytes | None,
                reason: str) -> tuple[bytes, Headers]:
    """A message that is not a SecurityEventBatch; the original value is kept."""
    headers = _headers(destination, "undecodable", reason, f"{topic}/{partition}/{offset}:0", gzipped=False)
    return value or b"", headers
