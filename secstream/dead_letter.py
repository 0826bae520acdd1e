"""Kafka headers of a dead-letter record, one scheme for every stage.

``secstream.stage`` names the stage that gave up, ``secstream.reason`` says why; further ``secstream.<field>``
headers say where the record came from. Values are UTF-8 text cut to MAX_HEADER_TEXT characters (a cut never
splits a character).
"""

from __future__ import annotations

from secstream.telemetry import KafkaHeaders

MAX_HEADER_TEXT = 4000


def header_text(value: object) -> bytes:
    return str(value)[:MAX_HEADER_TEXT].encode("utf-8", errors="replace")


def dead_letter_headers(stage: str, reason: str, **fields: object) -> KafkaHeaders:
    """``secstream.stage``, ``secstream.reason``, then one ``secstream.<name>`` header per keyword, in order."""
    headers: KafkaHeaders = [("secstream.stage", header_text(stage)), ("secstream.reason", header_text(reason))]
    headers += [(f"secstream.{name}", header_text(value)) for name, value in fields.items()]
    return headers
