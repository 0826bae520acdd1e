"""SecurityEventBatch message values -> the JSON of each row, exactly as the Logs Ingestion requests carry it.

A row is sent as compact JSON without its empty values (absent means empty in the table), with any value longer
than ``max_field_bytes`` truncated. Two paths write the same bytes:

* **reference**: ``schemas.codec.decode_security_batch`` makes a dict per row, ``serialise_row`` dumps it with
  orjson (and drops empty values, truncates long ones);
* **native**: the C Avro engine decodes the message value straight to each row's JSON
  (``schemas._avrocodec.Program.decode_json``), with no dict per row. It is used when the extension is built,
  ``SECSTREAM_NATIVE_CODEC`` is not ``0`` and ``SECSTREAM_NATIVE_ROW_JSON`` is not ``0``, for data written with the
  current SecurityEventBatch schema; anything else (an older schema version, a corrupt value, a row with a value
  to truncate) goes through the reference path, so errors and dead-letter reasons are the reference's.

Besides the JSON the sink needs, per row, only its ``Computer`` and ``TimeGenerated`` (for ``secstream status``):
the native path hands those over as small dicts (``status_rows``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from schemas import native
from schemas.avsc import ROW_SCHEMA, SECURITY_EVENT_BATCH
from schemas.codec import HEADER_SIZE, MAGIC_BYTE, Codec, default_codec
from sinks.request_builder import MAX_FIELD_BYTES, serialise_row, serialise_rows_of

DISABLE_ENV = "SECSTREAM_NATIVE_ROW_JSON"  # "0": serialise decoded row dicts even when the native codec is on
STATUS_COLUMNS = ("Computer", "TimeGenerated")  # what StatusRecorder.took reads from a row


@dataclass(slots=True)
class RowBatch:
    """One message's rows as JSON, and what else the sink needs from them."""

    computer: str
    rows: list[bytes]  # per row, its JSON as sent
    status_rows: Sequence[dict[str, Any]]  # per row, at least its Computer and TimeGenerated when present
    truncated: dict[int, int] = field(default_factory=dict)  # row index -> values truncated in it

    def truncated_values(self, start: int = 0, end: int | None = None) -> int:
        """Values truncated in rows ``start`` to ``end``."""
        stop = len(self.rows) if end is None else end
        return sum(n for index, n in self.truncated.items() if start <= index < stop)


def native_enabled() -> bool:
    """True when rows are decoded straight to JSON: the native codec is on and ``SECSTREAM_NATIVE_ROW_JSON`` is
    not 0."""
    return native.enabled() and native.switched_on(DISABLE_ENV)


def serialise_rows(batch: Mapping[str, Any], max_field_bytes: int = MAX_FIELD_BYTES) -> RowBatch:
    """The reference path: a decoded ``SecurityEventBatch`` dict's rows as JSON."""
    rows = batch["rows"]
    serialised, truncated = serialise_rows_of(rows, max_field_bytes)
    return RowBatch(batch["computer"], serialised, rows, truncated)


class RowDecoder:
    """Message value -> ``RowBatch``; ``DecodeError`` (from the codec) when it is not a SecurityEventBatch.

    ``native``: decode straight to JSON (True; RuntimeError when the extension is missing), never (False), or
    when ``native_enabled()`` (None).
    """

    def __init__(self, max_field_bytes: int = MAX_FIELD_BYTES, codec: Codec | None = None,
                 native_json: bool | None = None) -> None:
        self.max_field_bytes = max_field_bytes
        self._codec = codec
        use = native_enabled() if native_json is None else native_json
        if use and not native.available():
            raise RuntimeError(f"the native codec is not built ({native.IMPORT_ERROR})")
        self._program: Any = None
        self._native_ids: dict[int, bool] = {}  # schema id -> written with the current schema
        if use:
            schema = self.codec.security_schema
            self._program = native.build(schema.definition, (ROW_SCHEMA[SECURITY_EVENT_BATCH],))

    @property
    def codec(self) -> Codec:
        return self._codec if self._codec is not None else default_codec()

    @property
    def native_in_use(self) -> bool:
        return self._program is not None

    def decode(self, value: bytes) -> RowBatch:
        native_json = self._program is not None and isinstance(value, bytes)
        if native_json and len(value) > HEADER_SIZE and value[0] == MAGIC_BYTE:
            batch = self._native(value)
            if batch is not None:
                return batch
        return serialise_rows(self.codec.decode_security_batch(value), self.max_field_bytes)

    def _current(self, schema_id: int) -> bool:
        """Data with ``schema_id`` was written with the current schema (what the native program reads)."""
        known = self._native_ids.get(schema_id)
        if known is None:
            codec = self.codec
            try:
                known = codec.ids.writer_schema(codec.security_schema, schema_id) is codec.security_schema.parsed
            except Exception:  # unknown or unrelated id: the reference path says why
                return False
            self._native_ids[schema_id] = known
        return known

    def _native(self, value: bytes) -> RowBatch | None:
        """The rows by the native path, or None to take the reference path."""
        if not self._current(int.from_bytes(value[1:HEADER_SIZE], "big")):
            return None
        try:
            record, end, status_rows = self._program.decode_json(value, HEADER_SIZE, STATUS_COLUMNS, orjson.dumps)
        except Exception:  # corrupt: the reference decoder raises the DecodeError with the reason
            return None
        if end != len(value):
            return None
        rows: list[bytes] = record["rows"]
        batch = RowBatch(record["computer"], rows, status_rows)
        if rows and max(map(len, rows)) > self.max_field_bytes:
            self._truncate(value, batch)
        return batch

    def _truncate(self, value: bytes, batch: RowBatch) -> None:
        """Rows long enough to hold a value over the limit, serialised by the reference path (rare)."""
        decoded = self.codec.decode_security_batch(value)["rows"]
        limit = self.max_field_bytes
        for index, data in enumerate(batch.rows):
            if len(data) > limit:
                batch.rows[index], count = serialise_row(decoded[index], limit)
                if count:
                    batch.truncated[index] = count
