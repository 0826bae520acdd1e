"""Batch serialisation: one Kafka message value = one Avro batch in the Confluent wire format.

Wire format: magic byte ``0``, the schema id as 4 bytes big-endian, then the batch as schemaless Avro (fastavro).
Schema ids come from the versioned ``.avsc`` files (``schemas.avsc``: RawEventBatch v1 = 101, SecurityEventBatch
v1 = 201) or, when configured, from a Confluent Schema Registry (``schemas.registry``). A reader decodes data
written with any older version of a schema through Avro schema resolution into the current version's shape.

Batches are plain dicts with the field names of the ``.avsc`` files; absent keys take the field's default.
Both schemas' current versions go through codecs specialised to them, which write the same bytes as fastavro
many times faster: the native engine (``schemas.native``, a C extension running a program compiled from the
schema) when it is built and not disabled with ``SECSTREAM_NATIVE_CODEC=0``; otherwise pure Python:
RawEventBatch through code generated from its schema (``schemas.compiled``), SecurityEventBatch, whose rows have
237 nullable columns of which ~30 are filled, through ``schemas.nullable_record``. Decoded SecurityEvent rows are
sparse: a null column is absent from the row dict. Data written with an older schema version is read by fastavro
with Avro schema resolution.

``decode_raw_batch(data, event_data_pairs=True)`` gives each EventData item as a ``(name, value)`` tuple instead of a
``{"name": ..., "value": ...}`` dict: the stream stage reads events that way, where making, reading and freeing
millions of small dicts was a tenth of its work (``schemas.event_data`` reads either form). Encoding takes dicts.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol

from fastavro import schemaless_reader, schemaless_writer

from schemas import native as native_engine
from schemas.avsc import (
    AVRO_DIR,
    RAW_EVENT_BATCH,
    ROW_SCHEMA,
    SECURITY_EVENT_BATCH,
    MessageSchema,
    by_local_id,
    message_schema,
)
from schemas.compiled import compile_record
from schemas.event_data import pairs
from schemas.nullable_record import EnvelopeCodec

MAGIC_BYTE = 0
HEADER_SIZE = 5
# The record type of RawEvent.event_data's items, decoded as (name, value) tuples on request.
EVENT_DATA_ITEM = "EventDataItem"

__all__ = [
    "Codec",
    "DecodeError",
    "EncodeError",
    "LocalSchemaIds",
    "SchemaIds",
    "configure",
    "decode_raw_batch",
    "decode_security_batch",
    "default_codec",
    "encode_raw_batch",
    "encode_security_batch",
    "peek_schema_id",
]


class DecodeError(ValueError):
    """A message value that is not a batch this codec can read; the message says why (for dead-letter records)."""


class EncodeError(ValueError):
    """A batch that does not fit its schema (wrong type, missing required field, value out of range)."""


class BodyCodec(Protocol):
    """Schemaless Avro of one schema: ``encode(record) -> bytes``, ``decode(buf, pos) -> (record, end)``."""

    @property
    def encode(self) -> Callable[[dict[str, Any]], bytes]: ...

    @property
    def decode(self) -> Callable[[bytes, int], tuple[dict[str, Any], int]]: ...


class SchemaIds(Protocol):
    """Where schema ids come from: the local ``.avsc`` table or a schema registry."""

    def writer_id(self, schema: MessageSchema) -> int:
        """The id to stamp on data written with ``schema``."""
        ...

    def writer_schema(self, expected: MessageSchema, schema_id: int) -> Any:
        """The parsed schema that data with ``schema_id`` was written with; DecodeError if unknown or unrelated."""
        ...


class LocalSchemaIds:
    """Schema ids from the versioned ``.avsc`` files, no registry needed."""

    def __init__(self, avro_dir: Path = AVRO_DIR) -> None:
        self.avro_dir = avro_dir

    def writer_id(self, schema: MessageSchema) -> int:
        return schema.local_id

    def writer_schema(self, expected: MessageSchema, schema_id: int) -> Any:
        found = by_local_id(schema_id, self.avro_dir)
        if found is None:
            raise DecodeError(
                f"{expected.name}: unknown schema id {schema_id} (local ids: {expected.name} v1..v{expected.version}"
                f" = {expected.local_id - expected.version + 1}..{expected.local_id}; a schema registry id "
                "needs schema_registry.url configured)"
            )
        if found.name != expected.name:
            raise DecodeError(f"expected a {expected.name}, got schema id {schema_id} = {found.name} v{found.version}")
        return found.parsed


Encoder = Callable[[dict[str, Any], bytes], bytes]  # (batch, wire-format header) -> message value


def _prefixing(encode: Callable[[dict[str, Any]], bytes]) -> Encoder:
    return lambda batch, header: header + encode(batch)


class Codec:
    """Encodes and decodes the message schemas' current versions with ids from ``ids``.

    ``native``: use the C engine (True), the pure-Python codecs (False), or the C engine when it is built and
    ``SECSTREAM_NATIVE_CODEC`` is not ``0`` (None, the default). ``native_in_use`` tells which one was taken.
    """

    def __init__(self, ids: SchemaIds | None = None, avro_dir: Path = AVRO_DIR, native: bool | None = None) -> None:
        self.ids: SchemaIds = ids if ids is not None else LocalSchemaIds(avro_dir)
        self.raw_schema = message_schema(RAW_EVENT_BATCH, avro_dir=avro_dir)
        self.security_schema = message_schema(SECURITY_EVENT_BATCH, avro_dir=avro_dir)
        self._headers: dict[str, bytes] = {}
        self._writers: dict[tuple[str, int], Any] = {}
        # Codecs specialised to the current versions; data written by older versions goes through fastavro.
        self._fast: dict[str, BodyCodec] = {}
        self._fast_encode: dict[str, Encoder] = {}
        self.native_in_use: dict[str, bool] = {}
        use_native = native_engine.enabled() if native is None else native
        if use_native and not native_engine.available():
            raise RuntimeError(f"the native codec is not built ({native_engine.IMPORT_ERROR})")
        for schema, sparse in ((self.raw_schema, ()), (self.security_schema, (ROW_SCHEMA[SECURITY_EVENT_BATCH],))):
            program = native_engine.build(schema.definition, sparse) if use_native else None
            if program is not None:
                self._fast[schema.name] = program
                self._fast_encode[schema.name] = program.encode
                self.native_in_use[schema.name] = True
                continue
            fallback = (compile_record(schema.definition) if schema.name == RAW_EVENT_BATCH
                        else EnvelopeCodec.for_schema(schema.definition))
            if fallback is not None:
                self._fast[schema.name] = fallback
                self._fast_encode[schema.name] = _prefixing(fallback.encode)
            self.native_in_use[schema.name] = False
        self._raw_pairs = (native_engine.build(self.raw_schema.definition, tuples=(EVENT_DATA_ITEM,))
                           if self.native_in_use.get(RAW_EVENT_BATCH) else None)

    def encode_raw_batch(self, batch: dict[str, Any]) -> bytes:
        return self._encode(self.raw_schema, batch)

    def decode_raw_batch(self, data: bytes, event_data_pairs: bool = False) -> dict[str, Any]:
        if not event_data_pairs:
            return self._decode(self.raw_schema, data)
        return self._decode(self.raw_schema, data, self._raw_pairs, _event_data_to_pairs)

    def encode_security_batch(self, batch: dict[str, Any]) -> bytes:
        return self._encode(self.security_schema, batch)

    def decode_security_batch(self, data: bytes) -> dict[str, Any]:
        return self._decode(self.security_schema, data)

    def _header(self, schema: MessageSchema) -> bytes:
        header = self._headers.get(schema.name)
        if header is None:
            header = bytes([MAGIC_BYTE]) + self.ids.writer_id(schema).to_bytes(4, "big")
            self._headers[schema.name] = header
        return header

    def _encode(self, schema: MessageSchema, batch: dict[str, Any]) -> bytes:
        header = self._header(schema)  # a registry problem is not the batch's fault: not an EncodeError
        fast = self._fast_encode.get(schema.name)
        try:
            if fast is not None:
                return fast(batch, header)
            out = BytesIO()
            out.write(header)
            schemaless_writer(out, schema.parsed, batch)
            return out.getvalue()
        except KeyError as exc:
            raise EncodeError(f"{schema.name} does not fit schema v{schema.version}: a record lacks the required "
                              f"field {exc.args[0]!r}") from exc
        except (TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise EncodeError(f"{schema.name} does not fit schema v{schema.version}: {exc}") from exc

    def _writer_schema(self, schema: MessageSchema, schema_id: int) -> Any:
        key = (schema.name, schema_id)
        writer = self._writers.get(key)
        if writer is None:
            writer = self.ids.writer_schema(schema, schema_id)
            self._writers[key] = writer
        return writer

    def _decode(self, schema: MessageSchema, data: bytes, program: BodyCodec | None = None,
                reshape: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """``program``: the native program that reads the current version in another shape than the usual one;
        ``reshape`` gives that shape to what the other paths read."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError(f"{schema.name}: expected bytes, got {type(data).__name__}")
        if len(data) < HEADER_SIZE:
            raise DecodeError(f"{schema.name}: {len(data)} bytes is shorter than the 5-byte wire-format header")
        if data[0] != MAGIC_BYTE:
            raise DecodeError(
                f"{schema.name}: first byte is 0x{data[0]:02x}, expected 0x00 (not Confluent wire format)"
            )
        schema_id = int.from_bytes(data[1:HEADER_SIZE], "big")
        writer = self._writer_schema(schema, schema_id)
        fast = self._fast.get(schema.name) if writer is schema.parsed else None
        if fast is not None and program is not None:  # a `program` exists only beside a native `fast`
            fast, reshape = program, None
        try:
            if fast is not None:
                record, end = fast.decode(bytes(data), HEADER_SIZE)
            else:
                record, end = self._read_fastavro(schema, writer, data)
        except Exception as exc:  # corrupt input surfaces as many exception types
            raise DecodeError(
                f"{schema.name}: payload of {len(data)} bytes is not valid Avro for schema id {schema_id}"
                f" ({type(exc).__name__}: {exc})"
            ) from None
        if end != len(data):
            raise DecodeError(
                f"{schema.name}: {len(data) - end} trailing bytes after the batch (schema id {schema_id})"
            )
        if reshape is not None:
            reshape(record)
        return record

    def _read_fastavro(self, schema: MessageSchema, writer: Any, data: bytes) -> tuple[dict[str, Any], int]:
        stream = BytesIO(data)
        stream.seek(HEADER_SIZE)
        record = schemaless_reader(stream, writer, None if writer is schema.parsed else schema.parsed)
        if not isinstance(record, dict):
            raise ValueError(f"decoded to {type(record).__name__}, expected a record")
        if schema.name == SECURITY_EVENT_BATCH:  # the shape the fast path returns: null columns left out
            rows = record.get("rows") or []
            record["rows"] = [{k: v for k, v in row.items() if v is not None} for row in rows]
        return record, stream.tell()


def _event_data_to_pairs(batch: dict[str, Any]) -> None:
    for event in batch["events"]:
        event["event_data"] = pairs(event["event_data"])


def peek_schema_id(data: bytes) -> int | None:
    """The schema id in a wire-format header, or None when ``data`` has no such header (for error reports)."""
    if len(data) < HEADER_SIZE or data[0] != MAGIC_BYTE:
        return None
    return int.from_bytes(data[1:HEADER_SIZE], "big")


_default: Codec | None = None


def configure(codec: Codec) -> None:
    """Make ``codec`` the one the module-level functions use (e.g. one backed by a schema registry)."""
    global _default
    _default = codec


def default_codec() -> Codec:
    """The codec the module-level functions use: local schema ids unless ``configure`` set another."""
    global _default
    if _default is None:  # built on first use: compiling the schemas costs ~0.1 s
        _default = Codec()
    return _default


def encode_raw_batch(batch: dict[str, Any]) -> bytes:
    """A ``RawEventBatch`` dict -> message value. Raises EncodeError if it does not fit the schema."""
    return default_codec().encode_raw_batch(batch)


def decode_raw_batch(data: bytes, event_data_pairs: bool = False) -> dict[str, Any]:
    """Message value -> ``RawEventBatch`` dict (current version's shape). Raises DecodeError. ``event_data_pairs``:
    EventData items as ``(name, value)`` tuples instead of dicts."""
    return default_codec().decode_raw_batch(data, event_data_pairs)


def encode_security_batch(batch: dict[str, Any]) -> bytes:
    """A ``SecurityEventBatch`` dict -> message value. Raises EncodeError if it does not fit the schema."""
    return default_codec().encode_security_batch(batch)


def decode_security_batch(data: bytes) -> dict[str, Any]:
    """Message value -> ``SecurityEventBatch`` dict; rows hold only their non-null columns. Raises DecodeError."""
    return default_codec().decode_security_batch(data)
