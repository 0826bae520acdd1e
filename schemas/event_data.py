"""A RawEvent's EventData items in either of their two forms.

Producers and ``schemas.codec.decode_raw_batch`` give each item as ``{"name": ..., "value": ...}``; the stream stage
decodes them as ``(name, value)`` tuples, which cost a fraction of a dict (``decode_raw_batch(...,
event_data_pairs=True)``: the native codec makes the tuples, its other paths convert with ``pairs``). Code that reads
items takes either form through these functions; one event's items are all of one form.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

DataItem = Mapping[str, Any] | tuple[Any, Any]


def pairs(items: Sequence[DataItem] | None) -> Sequence[tuple[Any, Any]]:
    """The items as ``(name, value)`` tuples (the same list when they already are, or it is empty)."""
    if not items or type(items[0]) is tuple:
        return items if items is not None else ()  # type: ignore[return-value]
    return [(item["name"], item["value"]) for item in items]  # type: ignore[call-overload]


def as_dicts(items: Sequence[DataItem] | None) -> Sequence[Mapping[str, Any]]:
    """The items as ``{"name", "value"}`` dicts, the form every encoder and the schema's JSON take (the same list
    when they already are)."""
    if not items or type(items[0]) is not tuple:
        return items if items is not None else []  # type: ignore[return-value]
    return [{"name": name, "value": value} for name, value in items]
