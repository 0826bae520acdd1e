"""Row-level progress of partly delivered messages, kept in the offset commit's metadata.

A Kafka message carries up to ~900 KB of rows, split across several requests, several of them in flight at once.
The committed offset only passes a message once every one of its rows is done, so without more a restarted sink
sends again every row of every message after that offset, including rows the workspace had already accepted.

Each commit therefore also records, for the partition's messages at and after the committed offset, which rows
are already *done* (accepted with a 204, or written to the dead-letter topic and acknowledged by Kafka):

* ``through``: every message from the committed offset up to (not including) this one is wholly done (its
  delivery-log record was not yet acknowledged, so the offset could not move yet);
* ``rows``: entries for the messages after that with rows done, in offset order: ``[offset, [start, end, ...]]``
  (half-open row-index ranges of a partly done message) or ``[first_offset, last_offset]`` (a run of consecutive
  wholly done messages, e.g. those of a request that finished before an earlier one).

On assignment the sink reads it back and does not send those rows again. Dropping any part of it is always safe
(rows are then merely sent twice), so it is bounded: at most ``MAX_ENTRIES`` entries and ``MAX_RANGES`` ranges
each, the lowest kept, and whatever does not fit beside the re-emission marks in the metadata is left out.

The metadata is one JSON object shared with ``sinks.reemission`` (``sinks.commit_metadata``); this module owns the
keys ``progress`` (version), ``through`` and ``rows``. A reader of the older format (re-emission marks only) ignores
them.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from sinks import commit_metadata

PROGRESS_VERSION = 1
MAX_ENTRIES = 32
MAX_RANGES = 8

Range = tuple[int, int]  # half-open [start, end) of row indices within one message


def add_range(ranges: list[Range], start: int, end: int) -> None:
    """Insert [start, end) into sorted, disjoint ``ranges`` (in place), merging what overlaps or touches."""
    if end <= start:
        return
    i = bisect.bisect_left(ranges, (start, start))
    if i > 0 and ranges[i - 1][1] >= start:
        i -= 1
    j = i
    while j < len(ranges) and ranges[j][0] <= end:
        start, end = min(start, ranges[j][0]), max(end, ranges[j][1])
        j += 1
    ranges[i:j] = [(start, end)]


def covered(ranges: Iterable[Range]) -> int:
    return sum(end - start for start, end in ranges)


def missing(ranges: Iterable[Range], rows: int) -> list[Range]:
    """The ranges of ``range(rows)`` not in ``ranges`` (sorted, disjoint): the rows still to send."""
    out: list[Range] = []
    at = 0
    for start, end in ranges:
        start, end = max(0, min(start, rows)), max(0, min(end, rows))
        if start > at:
            out.append((at, start))
        at = max(at, end)
    if at < rows:
        out.append((at, rows))
    return out


@dataclass(slots=True)
class SavedProgress:
    """What a previous owner of one partition recorded: the rows done of messages at/after its committed offset."""

    through: int | None = None  # messages before this offset (and at/after the committed one) are wholly done
    rows: dict[int, list[Range]] = field(default_factory=dict)
    whole: list[tuple[int, int]] = field(default_factory=list)  # inclusive offset runs of wholly done messages

    def done(self, offset: int, rows: int) -> list[Range]:
        """The done ranges of the message at ``offset`` with ``rows`` rows (clipped to it)."""
        if (self.through is not None and offset < self.through) or any(a <= offset <= b for a, b in self.whole):
            return [(0, rows)] if rows else []
        ranges = self.rows.get(offset)
        if not ranges:
            return []
        out: list[Range] = []
        for start, end in ranges:
            add_range(out, max(0, start), min(end, rows))
        return out


def progress_fields(through: int | None, whole: Iterable[tuple[int, int]], partial: Mapping[int, list[Range]],
                    budget: int | None = None) -> dict[str, Any]:
    """The metadata keys for ``through``, runs of wholly done messages and partly done messages, bounded (and
    within ``budget`` bytes of JSON, dropping entries from the highest offset down)."""
    entries: list[list[Any]] = [[first, last] for first, last in whole]
    entries += [[offset, [n for r in ranges[:MAX_RANGES] for n in r]] for offset, ranges in partial.items() if ranges]
    rows = sorted(entries, key=lambda e: e[0])[:MAX_ENTRIES]
    fields: dict[str, Any] = {"progress": PROGRESS_VERSION, "through": through, "rows": rows}
    while budget is not None and rows and len(orjson.dumps(fields)) > budget:
        rows.pop()
    if through is None and not rows:
        return {}
    return fields


def decode_progress(metadata: str | None) -> SavedProgress | None:
    """The progress in commit metadata; None when there is none of ours (absent, empty, another format)."""
    data = commit_metadata.load(metadata, "progress", PROGRESS_VERSION)
    if data is None:
        return None
    try:
        through = data.get("through")
        saved = SavedProgress(None if through is None else int(through))
        for offset, flat in data.get("rows") or []:
            if isinstance(flat, int):
                saved.whole.append((int(offset), flat))
                continue
            ranges: list[Range] = []
            for k in range(0, len(flat) - 1, 2):
                add_range(ranges, int(flat[k]), int(flat[k + 1]))
            saved.rows[int(offset)] = ranges
        return saved
    except (TypeError, ValueError):
        return None
