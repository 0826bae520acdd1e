"""Apply a data flow to decoded records: what the service does between the HTTP body and the table.

Pure functions, no I/O: project onto the declared stream columns, coerce the declared types, truncate long
values, enforce the TimeGenerated window, stamp the platform-owned columns. Anything dropped is counted with
its reason, never raised: the service answers 204 and reports drops only through DCR metrics and DCRLogErrors.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import chain
from typing import Any

import orjson

from workspace.dcr import RESERVED_COLUMNS, Column, DataFlow, Table

MAX_FIELD_BYTES = 65_536  # "Maximum size of one field value: 64 KB", longer values are truncated
PAST_WINDOW = timedelta(days=2)  # older TimeGenerated values are replaced by the receive time
FUTURE_WINDOW = timedelta(days=1)
SOURCE_SYSTEM = "RestAPI"
# Emulator bookkeeping columns, after the table's own.
TIME_RECEIVED = "_TimeReceived"
REQUEST_ID = "_RequestId"
ORIGINAL_TIME_GENERATED = "_OriginalTimeGenerated"
EXTRA_COLUMNS = (Column(TIME_RECEIVED, "datetime"), Column(REQUEST_ID, "string"),
                 Column(ORIGINAL_TIME_GENERATED, "datetime"))  # set only when TimeGenerated was replaced

_INVALID = object()
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_DATETIME = re.compile(r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,7})\d*)?Z?")
_SECONDS = r"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d"
# The form the sink sends (and the store keeps): checked for a whole column at once, in C.
_CANONICAL = _SECONDS + r"\.\d{7}Z"
_CANONICAL_COLUMN = re.compile(f"(?:{_CANONICAL}\n)*{_CANONICAL}")
# Also accepted for a whole column at once: 0-6 fractional digits (e.g. agents' millisecond times), padded in C.
_SHORT = _SECONDS + r"(?:\.\d{1,7})?Z"
_SHORT_COLUMN = re.compile(f"(?:{_SHORT}\n)*{_SHORT}")
_CANONICAL_LENGTH = 28  # 2023-04-10T07:47:01.9710164Z
_SECONDS_LENGTH = 20  # 2023-04-10T07:47:01Z
_GUID_COLUMN = re.compile(r"(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\n)*"
                          r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_GUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def format_datetime(value: datetime) -> str:
    """Kusto's datetime text: UTC, 7 fractional digits, ``Z``; it also sorts as text."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond:06d}0Z"


def parse_datetime(value: str) -> str | None:
    """An ISO-8601 string in canonical form, or None when it is not a datetime. A missing offset means UTC."""
    m = _DATETIME.fullmatch(value)
    if m is not None:
        day, clock, fraction = m.groups()
        try:
            datetime.fromisoformat(f"{day}T{clock}")
        except ValueError:
            return None
        return f"{day}T{clock}.{(fraction or '').ljust(7, '0')}Z"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return format_datetime(parsed)


def canonical_datetimes(values: Sequence[str]) -> bool:
    """True when every value is already in canonical form and names a real day."""
    return bool(_CANONICAL_COLUMN.fullmatch("\n".join(values))) and _real_days(values)


def _real_days(values: Sequence[str]) -> bool:
    """True when the date part (first 10 characters) of every value names a real day."""
    try:
        for day in {v[:10] for v in values}:
            date.fromisoformat(day)
    except ValueError:
        return False
    return True


def datetime_column(values: Sequence[str]) -> Sequence[str] | None:
    """A column of datetime strings in canonical form, converted for the whole column at once: the values as they
    are when already canonical; padded to 7 fractional digits when all have the same shorter form (e.g. agents'
    millisecond times); None when the values need ``parse_datetime`` one by one."""
    if canonical_datetimes(values):
        return values
    lengths = set(map(len, values))
    if len(lengths) != 1:
        return None
    text = "\n".join(values)
    if not _SHORT_COLUMN.fullmatch(text) or not _real_days(values):
        return None
    # The form is fixed-width but for the fraction, so equal lengths mean equal fraction digits: pad them all.
    (length,) = lengths
    pad = ".0000000" if length == _SECONDS_LENGTH else "0" * (_CANONICAL_LENGTH - length)
    return (text + "\n").replace("Z\n", pad + "Z\n")[:-1].split("\n")


def canonical_guids(values: Sequence[str]) -> bool:
    """True when every value already is a lowercase GUID without braces (what _to_guid would produce)."""
    return _GUID_COLUMN.fullmatch("\n".join(values)) is not None


def truncate_utf8(value: str, limit: int) -> str | None:
    """``value`` cut to at most ``limit`` UTF-8 bytes on a character boundary, or None when it fits."""
    if len(value) * 4 <= limit:
        return None
    raw = value.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return None
    return raw[:limit].decode("utf-8", "ignore")


# Each converter returns the stored value or _INVALID. Strings and ints take an inline fast path in shape().
def _to_int(lo: int, hi: int) -> Callable[[Any], Any]:
    def convert(v: Any) -> Any:
        return v if type(v) is int and lo <= v <= hi else _INVALID
    return convert


def _to_real(v: Any) -> Any:
    return float(v) if type(v) in (int, float) else _INVALID


def _to_bool(v: Any) -> Any:
    return int(v) if type(v) is bool else _INVALID


def _to_datetime(v: Any) -> Any:
    if type(v) is not str:
        return _INVALID
    parsed = parse_datetime(v)
    return _INVALID if parsed is None else parsed


def _to_dynamic(v: Any) -> Any:
    return orjson.dumps(v).decode()


def _to_guid(v: Any) -> Any:
    if type(v) is not str:
        return _INVALID
    bare = v.strip("{}")
    return bare.lower() if _GUID.fullmatch(bare) else _INVALID


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "int": _to_int(*_INT32),
    "long": _to_int(*_INT64),
    "real": _to_real,
    "boolean": _to_bool,
    "datetime": _to_datetime,
    "dynamic": _to_dynamic,
}


def _converter(stream_type: str, table_type: str) -> Callable[[Any], Any]:
    """How a non-null value declared ``stream_type`` in the stream lands in a ``table_type`` column."""
    if table_type == "guid" and stream_type == "string":
        return _to_guid
    if table_type == "string" and stream_type == "dynamic":
        return _to_dynamic
    if stream_type == table_type or (stream_type, table_type) == ("int", "long"):
        return _CONVERTERS[stream_type] if stream_type != "string" else _to_string
    base = _CONVERTERS.get(stream_type, _to_string)
    target = _CONVERTERS.get(table_type)

    def adapt(v: Any) -> Any:  # a stream/table type mismatch: Kusto's implicit conversion to the column type
        got = base(v)
        if got is _INVALID:
            return got
        if table_type == "string":
            return str(got)
        return target(got) if target is not None else _INVALID
    return adapt


def _to_string(v: Any) -> Any:
    return v if type(v) is str else _INVALID


def platform_defaults(table: Table) -> dict[str, str]:
    """Values the platform sets on every row of ``table`` whatever the client sends (log-standard-columns.md)."""
    defaults = {"Type": table.name, "SourceSystem": SOURCE_SYSTEM, "_IsBillable": "True"}
    names = {c.name for c in table.columns}
    return {k: v for k, v in defaults.items() if k in names}


@dataclass(frozen=True)
class _ColumnPlan:
    """How one stream column is checked and stored. ``fast_type``: a column whose values all have this Python
    type (and fit ``bounds``) is stored as is, with no per-value work."""

    convert: Callable[[Any], Any]
    stream_type: str
    empty: Any  # what a null or dropped value is stored as: '' for strings (Kusto strings are never null)
    fast_type: type | None = None
    bounds: tuple[int, int] | None = None
    fast_column: Callable[[Sequence[Any]], bool] | None = None  # a whole-column check for str values
    column_convert: Callable[[Sequence[str]], Sequence[str] | None] | None = None  # a whole-column conversion


def _plan(stream_type: str, table_type: str) -> _ColumnPlan:
    empty = "" if table_type in ("string", "guid") else None
    if stream_type == table_type == "string":
        return _ColumnPlan(_to_string, stream_type, empty, str)
    if stream_type == "int" and table_type in ("int", "long"):
        return _ColumnPlan(_CONVERTERS["int"], stream_type, empty, int, _INT32)
    if stream_type == table_type == "long":
        return _ColumnPlan(_CONVERTERS["long"], stream_type, empty, int, _INT64)
    if (stream_type, table_type) == ("string", "guid"):
        return _ColumnPlan(_to_guid, stream_type, empty, fast_column=canonical_guids)
    if stream_type == table_type == "datetime":
        return _ColumnPlan(_to_datetime, stream_type, empty, column_convert=datetime_column)
    return _ColumnPlan(_converter(stream_type, table_type), stream_type, empty)


@dataclass
class RowBlock:
    """Rows of one column set in one flat row-major list (``width`` values per row): what a many-row INSERT
    binds, with no tuple built per row."""

    count: int = 0
    values: list[Any] = field(default_factory=list)


@dataclass
class ShapedBatch:
    """One flow's output for one request: stored rows grouped by column set, plus what was dropped and why.
    ``constants`` are columns with the same value on every row of the request (receive time, request id,
    workspace stamps): stored on every row, but carried (and bound) once."""

    table: str
    groups: dict[tuple[str, ...], RowBlock] = field(default_factory=dict)
    constants: dict[str, Any] = field(default_factory=dict)
    rows: int = 0
    rows_dropped: int = 0
    columns_dropped: Counter[tuple[str, str]] = field(default_factory=Counter)
    values_truncated: int = 0
    time_generated_replaced: int = 0

    def add_rows(self, columns: tuple[str, ...], rows: Iterable[Sequence[Any]]) -> None:
        """Append rows given one tuple each (the shaper builds the flat list directly)."""
        block = self.groups.setdefault(columns, RowBlock())
        for row in rows:
            if len(row) != len(columns):
                raise ValueError(f"a row of {len(row)} values for {len(columns)} columns")
            block.values.extend(row)
            block.count += 1


class FlowShaper:
    """Compiled once per data flow; ``shape`` runs once per request.

    Records are grouped by their key sequence and checked column by column, so the common case (every value of
    a column has the declared type) costs a few C-level passes instead of Python work per value.
    """

    def __init__(self, flow: DataFlow, stream_columns: tuple[Column, ...], max_field_bytes: int = MAX_FIELD_BYTES,
                 resource_id: str = "") -> None:
        table_types = flow.table.column_types()
        self.table = flow.table.name
        self.max_field_bytes = max_field_bytes
        self.fast_chars = max_field_bytes // 4  # strings this short can't exceed the limit in UTF-8
        self.plans: dict[str, _ColumnPlan] = {}
        self.skipped: dict[str, str | None] = {name: None for name in RESERVED_COLUMNS}  # None = not counted
        for c in stream_columns:
            if c.name in RESERVED_COLUMNS:
                continue
            if c.name in table_types:
                self.plans[c.name] = _plan(c.type, table_types[c.name])
            else:
                self.skipped[c.name] = "not in the output table"
        # Per-workspace / per-deployment values are bound on every row; per-table constants are column defaults.
        self.stamps = {"TenantId": flow.workspace_id} if "TenantId" in table_types else {}
        if resource_id and "_ResourceId" in table_types:
            self.stamps["_ResourceId"] = resource_id
        self.has_time_generated = "TimeGenerated" in table_types

    def shape(self, records: list[Any], received: datetime, request_id: str) -> ShapedBatch:
        batch = ShapedBatch(table=self.table)
        by_keys: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for record in records:
            if type(record) is not dict:
                batch.rows_dropped += 1
                continue
            keys = tuple(record)
            group = by_keys.get(keys)
            if group is None:
                by_keys[keys] = [record]
            else:
                group.append(record)
        received_text = format_datetime(received)
        window = (format_datetime(received - PAST_WINDOW), format_datetime(received + FUTURE_WINDOW))
        batch.constants = {**self.stamps, TIME_RECEIVED: received_text, REQUEST_ID: request_id}
        for keys, group in by_keys.items():
            self._shape_group(batch, keys, group, received_text, window)
        batch.rows = sum(g.count for g in batch.groups.values())
        return batch

    def _shape_group(self, batch: ShapedBatch, keys: tuple[str, ...], group: list[dict[str, Any]],
                     received_text: str, window: tuple[str, str]) -> None:
        n = len(group)
        # Every record of the group has the same keys in the same order, so its values() line up: one flat
        # row-major list without a hash lookup per value, then a strided slice per column.
        everything = list(chain.from_iterable(map(dict.values, group)))
        columns = [everything[j::len(keys)] for j in range(len(keys))]
        names: list[str] = []
        stored: list[Sequence[Any]] = []
        for name, values in zip(keys, columns, strict=True):
            plan = self.plans.get(name)
            if plan is None:
                why = self.skipped.get(name, "not declared in the stream")
                present = n - values.count(None)
                if why is not None and present:
                    batch.columns_dropped[(name, why)] += present
                continue
            checked = self._check(batch, name, plan, values)
            if checked is None:
                continue
            names.append(name)
            stored.append(checked)
        if self.has_time_generated:
            self._time_generated(batch, names, stored, n, received_text, window)
        # Row-major, one C-level slice assignment per column: no tuple per row, nothing for the collector.
        width = len(names)
        flat: list[Any] = [None] * (n * width)
        for j, column in enumerate(stored):
            flat[j::width] = column
        block = batch.groups.get(tuple(names))
        if block is None:
            batch.groups[tuple(names)] = RowBlock(n, flat)
        else:
            block.values += flat
            block.count += n

    def _check(self, batch: ShapedBatch, name: str, plan: _ColumnPlan, values: Sequence[Any]) -> Sequence[Any] | None:
        """The column's stored values (None when every value is null), counting drops and truncations."""
        if plan.fast_type is str:
            try:  # one C pass: join fails unless every value is a str, and bounds every value's length
                total = len("".join(values))
            except TypeError:
                pass
            else:
                if total > self.fast_chars and max(map(len, values)) > self.fast_chars:
                    return self._truncate(batch, values)
                return values
        types = set(map(type, values))
        if types == {type(None)}:
            return None
        fast = plan.fast_type is not None and types == {plan.fast_type}
        if fast and plan.bounds is not None:
            fast = plan.bounds[0] <= min(values) and max(values) <= plan.bounds[1]
        elif plan.fast_column is not None and types == {str}:
            fast = plan.fast_column(values)
        elif plan.column_convert is not None and types == {str}:
            converted = plan.column_convert(values)
            if converted is not None:
                values, fast = converted, True
        if not fast:
            convert, empty, checked = plan.convert, plan.empty, []
            dropped = 0
            for v in values:
                if v is None:
                    checked.append(empty)
                    continue
                got = convert(v)
                if got is _INVALID:
                    dropped += 1
                    got = empty
                checked.append(got)
            if dropped:
                article = "an" if plan.stream_type[0] in "aeiou" else "a"
                batch.columns_dropped[(name, f"not {article} {plan.stream_type}")] += dropped
            values = checked
        if (plan.empty == "" or plan.stream_type == "dynamic") and max(map(len, values)) > self.fast_chars:
            values = self._truncate(batch, values)
        return values

    def _truncate(self, batch: ShapedBatch, values: Sequence[str]) -> list[str]:
        out = []
        for v in values:
            cut = truncate_utf8(v, self.max_field_bytes) if len(v) > self.fast_chars else None
            if cut is not None:
                batch.values_truncated += 1
                v = cut
            out.append(v)
        return out

    def _time_generated(self, batch: ShapedBatch, names: list[str], stored: list[Sequence[Any]], n: int,
                        received_text: str, window: tuple[str, str]) -> None:
        """Out-of-window or missing TimeGenerated becomes the receive time; the original is kept aside."""
        oldest, newest = window
        if "TimeGenerated" not in names:
            names.append("TimeGenerated")
            stored.append([received_text] * n)
            batch.time_generated_replaced += n
            return
        index = names.index("TimeGenerated")
        values = list(stored[index])
        present = [v for v in values if v is not None]
        if len(present) == n and oldest <= min(present) and max(present) <= newest:
            return
        originals: list[str | None] = []
        for i, v in enumerate(values):
            if v is None or not (oldest <= v <= newest):
                values[i] = received_text
                batch.time_generated_replaced += 1
            else:
                v = None
            originals.append(v)
        stored[index] = values
        names.append(ORIGINAL_TIME_GENERATED)
        stored.append(originals)


def describe_drops(batch: ShapedBatch, limit: int = 10) -> str:
    """One DCRLogErrors message for a request's dropped values and records."""
    parts = []
    if batch.columns_dropped:
        listed = ", ".join(f"{col} ({why}) x{n}" for (col, why), n in batch.columns_dropped.most_common(limit))
        if len(batch.columns_dropped) > limit:
            listed += f", and {len(batch.columns_dropped) - limit} more"
        parts.append(f"{sum(batch.columns_dropped.values())} column value(s) dropped: {listed}")
    if batch.rows_dropped:
        parts.append(f"{batch.rows_dropped} record(s) dropped (not a JSON object)")
    return "; ".join(parts)
