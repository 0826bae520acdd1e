"""Where a normalized message came from: the raw record (and the part of it) the stream stage turned it into.

The stream stage writes, on every ``SecurityEventBatch`` message, two headers:

* ``secstream.source`` = ``<raw topic>/<partition>/<offset>`` of the raw message the rows came from;
* ``secstream.part`` = ``<index>/<count>``: one raw batch can become several messages (each under Kafka's message
  size limit); the split is deterministic, so processing the same raw message again gives the same parts.

The same raw message processed twice (at-least-once: the worker crashed after writing its output but before
committing the input offset) therefore carries the same position both times. The sink uses this to recognise a
re-emission (``sinks.reemission``). Messages without the headers (older producers, hand-written test data) have
no position and are never treated as re-emissions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

SOURCE_HEADER = "secstream.source"
PART_HEADER = "secstream.part"

HeaderValue = str | bytes | None
HeaderItems = Mapping[str, HeaderValue] | Iterable[tuple[str, HeaderValue]] | None


@dataclass(frozen=True, slots=True)
class SourcePosition:
    topic: str
    partition: int
    offset: int
    part: int = 0
    parts: int = 1


def source_headers(topic: str, partition: int, offset: int, part: int, parts: int) -> list[tuple[str, HeaderValue]]:
    return [(SOURCE_HEADER, f"{topic}/{partition}/{offset}".encode()), (PART_HEADER, f"{part}/{parts}".encode())]


def parse_source(headers: HeaderItems) -> SourcePosition | None:
    """The position carried by a message's headers, or None when absent or malformed (never an error: a message
    without a usable position is simply delivered)."""
    source = part = None
    items = headers.items() if isinstance(headers, Mapping) else headers or ()
    for key, value in items:
        if key == SOURCE_HEADER:
            source = value
        elif key == PART_HEADER:
            part = value
    if source is None:
        return None
    try:
        text = source.decode() if isinstance(source, bytes) else source
        topic, partition, offset = text.rsplit("/", 2)
        index, count = 0, 1
        if part is not None:
            first, second = (part.decode() if isinstance(part, bytes) else part).split("/")
            index, count = int(first), int(second)
        position = SourcePosition(topic, int(partition), int(offset), index, count)
    except (ValueError, UnicodeDecodeError):
        return None
    if not topic or position.partition < 0 or position.offset < 0 or not 0 <= index < count:
        return None
    return position
