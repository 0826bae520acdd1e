"""Pack SecurityEvent rows into Logs Ingestion requests that each know exactly which Kafka rows they carry.

Pure: no I/O. Rows of consecutive ``SecurityEventBatch`` messages are serialised once (orjson, empty values left
out: absent means empty in the table) and packed until the next row would take the request over the byte budget.
The budget applies to the raw JSON array, which is always larger than its gzip, so a request is under the 1 MB
limit both uncompressed and on the wire (the service counts both). ``encode`` gzips and measures; a body that is
still too large (incompressible data only) is split in two.

Every request carries ``segments``: (partition, offset, rows, first) runs of the messages its rows come from, so the
offset tracker can tell when a message has been wholly delivered, and which of its rows (by index) are.
"""

from __future__ import annotations

import operator
import zlib
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, count
from typing import Any

import orjson
from isal import isal_zlib

# Kafka headers as the consumer hands them over (carried only to continue the trace)
TraceHeaders = Any

MAX_REQUEST_BYTES = 1_048_576  # the service's limit per call, compressed and uncompressed
MAX_FIELD_BYTES = 65_536  # the service truncates longer values; we do it first, and count it
TRUNCATED_MARK = "…[truncated]"
ISAL_MAX_LEVEL = 3  # ISA-L's levels are 0-3


@dataclass(frozen=True, slots=True)
class Segment:
    """``rows`` rows of the message at (partition, offset), from row index ``first`` on."""

    partition: int
    offset: int
    rows: int
    first: int = 0

    @property
    def end(self) -> int:
        return self.first + self.rows


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """A row that cannot be sent at all, for the dead-letter topic."""

    segment: Segment
    row: bytes  # the serialised row, as it would have been sent
    reason: str


@dataclass(slots=True)
class Request:
    """One upload: the serialised rows and the Kafka rows they stand for."""

    rows: list[bytes] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    shard: int | None = None  # a fixed DCR index when sharding by Computer; None = the dispatcher chooses
    trace_headers: TraceHeaders = None  # Kafka headers of the first message, for tracing
    raw_bytes: int = 2  # size of the JSON array: "[" + rows joined by "," + "]"

    @property
    def row_count(self) -> int:
        return len(self.rows)

    def add(self, partition: int, offset: int, row: bytes, index: int | None = None) -> None:
        """Append ``row``, row ``index`` of the message at (partition, offset) (None: the one after the last)."""
        if index is None:
            last = self.segments[-1] if self.segments else None
            same = last is not None and last.partition == partition and last.offset == offset
            index = last.end if last is not None and same else 0
        if self.rows:
            self.raw_bytes += 1
        self.raw_bytes += len(row)
        self.rows.append(row)
        self.cover(partition, offset, 1, index)

    def cover(self, partition: int, offset: int, rows: int, first: int) -> None:
        """Record that the ``rows`` rows just appended are those of the message at (partition, offset) from row
        index ``first`` on (extending the last segment when they continue it)."""
        last = self.segments[-1] if self.segments else None
        if last is not None and last.partition == partition and last.offset == offset and last.end == first:
            self.segments[-1] = Segment(partition, offset, last.rows + rows, last.first)
        else:
            self.segments.append(Segment(partition, offset, rows, first))

    def json_body(self) -> bytes:
        return b"[" + b",".join(self.rows) + b"]"


@dataclass(slots=True)
class Packed:
    """What adding a message produced: closed requests, rows that cannot be sent, and truncated values."""

    requests: list[Request] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)
    truncated_values: int = 0


def serialise_row(row: Mapping[str, Any], max_field_bytes: int = MAX_FIELD_BYTES) -> tuple[bytes, int]:
    """A row as compact JSON without empty values, and how many values were truncated to ``max_field_bytes``."""
    return _compact(row, orjson.dumps(row), max_field_bytes)


def _compact(row: Mapping[str, Any], data: bytes, max_field_bytes: int) -> tuple[bytes, int]:
    """``serialise_row`` given ``data``, the plain ``orjson.dumps`` of ``row``."""
    # Decoded rows are sparse (null columns absent), so the filtered copy is rarely needed: look for an empty value
    # in the output (a null, or "" right after a key; quotes inside strings are escaped) before building one.
    if b":null" in data or b'":""' in data:
        row = {k: v for k, v in row.items() if v is not None and v != ""}
        data = orjson.dumps(row)
    if len(data) <= max_field_bytes:  # no single value can be longer than the whole row
        return data, 0
    compact = dict(row)
    truncated = 0
    for key, value in compact.items():
        if isinstance(value, str) and len(value) * 4 > max_field_bytes:
            encoded = value.encode("utf-8")
            if len(encoded) > max_field_bytes:
                compact[key] = truncate_utf8(encoded, max_field_bytes)
                truncated += 1
    return (orjson.dumps(compact) if truncated else data), truncated


def serialise_rows_of(rows: Iterable[Mapping[str, Any]],
                      max_field_bytes: int = MAX_FIELD_BYTES) -> tuple[list[bytes], dict[int, int]]:
    """Each row's JSON (``serialise_row``), and per row index the values truncated in it (when any)."""
    out: list[bytes] = []
    truncated: dict[int, int] = {}
    dumps = orjson.dumps
    for index, row in enumerate(rows):
        data = dumps(row)
        # _compact's tests, inline: most rows have no empty value and nothing to truncate, and need no call
        if len(data) > max_field_bytes or b":null" in data or b'":""' in data:
            data, count = _compact(row, data, max_field_bytes)
            if count:
                truncated[index] = count
        out.append(data)
    return out, truncated


def truncate_utf8(encoded: bytes, limit: int) -> str:
    """The longest prefix of ``encoded`` that, with a marker, fits in ``limit`` bytes, cut on a character boundary."""
    keep = limit - len(TRUNCATED_MARK.encode("utf-8"))
    return encoded[:keep].decode("utf-8", errors="ignore") + TRUNCATED_MARK


def gzip_body(json_body: bytes, level: int) -> bytes:
    """Gzip framing (what ``Content-Encoding: gzip`` means; the SDK detects it from the magic bytes).

    Levels 1-3 use ISA-L (``isal``), whose level 1 costs about a sixth of zlib's level 1 and compresses JSON rows a
    little better; 4-9 are zlib's levels (ISA-L has none above 3). Both release the GIL while compressing.
    """
    module: Any = isal_zlib if level <= ISAL_MAX_LEVEL else zlib
    compressor = module.compressobj(level, module.DEFLATED, 16 + module.MAX_WBITS)
    return bytes(compressor.compress(json_body) + compressor.flush())


def split_request(request: Request) -> tuple[Request, Request]:
    """Two requests with the first and second half of the rows, segments divided exactly."""
    if request.row_count < 2:
        raise ValueError("a request of one row cannot be split")
    half = request.row_count // 2
    first = Request(shard=request.shard, trace_headers=request.trace_headers)
    second = Request(shard=request.shard, trace_headers=request.trace_headers)
    index = 0
    for seg in request.segments:
        for row_index in range(seg.first, seg.end):
            target = first if index < half else second
            target.add(seg.partition, seg.offset, request.rows[index], row_index)
            index += 1
    return first, second


def encode(request: Request, max_wire_bytes: int = MAX_REQUEST_BYTES, level: int = 1) -> list[tuple[Request, bytes]]:
    """Gzip ``request``; if the compressed body is still over ``max_wire_bytes``, split until every part fits.

    A single row that does not fit even alone comes back with an empty body; the caller dead-letters it.
    """
    body = gzip_body(request.json_body(), level)
    if len(body) <= max_wire_bytes:
        return [(request, body)]
    if request.row_count < 2:
        return [(request, b"")]
    first, second = split_request(request)
    return encode(first, max_wire_bytes, level) + encode(second, max_wire_bytes, level)


class RequestBuilder:
    """Accumulates rows into open requests (one per shard when ``shard_of`` is given) and closes them when full."""

    def __init__(
        self,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        max_field_bytes: int = MAX_FIELD_BYTES,
        shard_of: Callable[[str], int] | None = None,
    ) -> None:
        self.max_request_bytes = max_request_bytes
        self.max_field_bytes = max_field_bytes
        self.shard_of = shard_of
        self._open: dict[int | None, Request] = {}

    @property
    def open_rows(self) -> int:
        return sum(r.row_count for r in self._open.values())

    def add(
        self,
        partition: int,
        offset: int,
        computer: str,
        rows: Iterable[Mapping[str, Any]],
        trace_headers: TraceHeaders = None,
        first_row: int = 0,
    ) -> Packed:
        """Add the rows of the message at (partition, offset); the first of ``rows`` is its row ``first_row``."""
        serialised, truncated = serialise_rows_of(rows, self.max_field_bytes)
        packed = self.add_json(partition, offset, computer, serialised, trace_headers, first_row)
        packed.truncated_values += sum(truncated.values())
        return packed

    def add_json(
        self,
        partition: int,
        offset: int,
        computer: str,
        rows: Sequence[bytes],
        trace_headers: TraceHeaders = None,
        first_row: int = 0,
    ) -> Packed:
        """``add`` for rows already serialised (``serialise_row``: no empty values, long values truncated)."""
        packed = Packed()
        shard = self.shard_of(computer) if self.shard_of is not None else None
        current = self._open.pop(shard, None)
        if rows and max(map(len, rows)) + 2 > self.max_request_bytes:
            current = self._add_each(packed, current, shard, partition, offset, rows, trace_headers, first_row)
        elif rows:
            current = self._add_runs(packed, current, shard, partition, offset, rows, trace_headers, first_row)
        if current is not None:
            self._open[shard] = current
        return packed

    def _add_runs(self, packed: Packed, current: Request | None, shard: int | None, partition: int, offset: int,
                  rows: Sequence[bytes], trace_headers: TraceHeaders, first_row: int) -> Request | None:
        """Every row fits in a request: fill requests a run of rows at a time, found from the running sizes (no
        Python step per row)."""
        limit = self.max_request_bytes
        # ends[k] = the lengths of rows[:k] plus one separator each: a request of n >= 1 rows is 1 + that long
        ends = list(map(operator.add, accumulate(map(len, rows), initial=0), count()))
        start, total = 0, len(rows)
        while start < total:
            filled = current is not None and current.row_count > 0
            base = current.raw_bytes if current is not None and filled else 1
            stop = bisect_right(ends, limit - base + ends[start], start) - 1
            if stop == start:  # not one more row fits: the open request is full (an empty one takes any row)
                assert current is not None
                packed.requests.append(current)
                current = None
                continue
            current = self._attach(current, shard, trace_headers, partition, offset, list(rows[start:stop]),
                                   base + ends[stop] - ends[start], first_row + start)
            if stop < total:
                packed.requests.append(current)
                current = None
            start = stop
        return current

    def _add_each(self, packed: Packed, current: Request | None, shard: int | None, partition: int, offset: int,
                  rows: Sequence[bytes], trace_headers: TraceHeaders, first_row: int) -> Request | None:
        """Row by row, when some row is too large for any request (it is rejected, the others packed)."""
        limit, field_limit = self.max_request_bytes, self.max_field_bytes
        size = current.raw_bytes if current is not None else 2
        filled = current is not None and current.row_count > 0
        run: list[bytes] = []  # this message's rows for ``current``, attached in one step
        run_start = first_row  # row index of run[0]
        for index, data in enumerate(rows, first_row):
            length = len(data)
            if length + 2 > limit:
                packed.rejected.append(RejectedRow(
                    Segment(partition, offset, 1, index), data,
                    f"row-too-large: {length} bytes of JSON after truncating values to {field_limit} "
                    f"bytes; one request may carry at most {limit}",
                ))
                if run:  # the indices of the run stop here: attach it, the next row starts a new segment
                    current = self._attach(current, shard, trace_headers, partition, offset, run, size, run_start)
                    run = []
                run_start = index + 1
                continue
            if filled and size + 1 + length > limit:
                packed.requests.append(self._attach(current, shard, trace_headers, partition, offset, run, size,
                                                    run_start))
                current, run, size, filled = None, [], 2, False
                run_start = index
            size += length + 1 if filled else length
            filled = True
            run.append(data)
        if run or current is not None:
            current = self._attach(current, shard, trace_headers, partition, offset, run, size, run_start)
        return current

    @staticmethod
    def _attach(request: Request | None, shard: int | None, trace_headers: TraceHeaders, partition: int,
                offset: int, rows: list[bytes], raw_bytes: int, first: int) -> Request:
        """``rows`` (row indices from ``first`` on) of the message at (partition, offset) appended to ``request``
        (a new one when None)."""
        if request is None:
            request = Request(shard=shard, trace_headers=trace_headers)
        if rows:
            request.rows.extend(rows)
            request.raw_bytes = raw_bytes
            request.cover(partition, offset, len(rows), first)
        return request

    def drain(self) -> list[Request]:
        """Close and return every open request (at a checkpoint, or before giving up partitions)."""
        requests = [r for r in self._open.values() if r.rows]
        self._open.clear()
        return requests
