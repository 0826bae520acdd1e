"""Compile an Avro record schema into a pair of plain Python functions (encode, decode) specialised to it.

fastavro interprets the schema for every value (about a microsecond per union field on this machine class). For
the schemas here (records, arrays, ``["null", X]`` unions and primitives) straight-line code generated once per
schema does the same job with a few bytecodes per value. Output is byte-for-byte what fastavro writes (the tests
compare the two on random batches); anything the compiler does not cover makes ``compile_record`` return None and
the codec uses fastavro.

Generated decode functions take ``(buf: bytes, pos: int)`` and return ``(record, pos)``; they raise ValueError,
IndexError or UnicodeDecodeError on corrupt input. Encode functions take the record and return bytes; they raise
ValueError/TypeError/KeyError/AttributeError for data that does not fit.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from schemas.nullable_record import read_varint, zigzag_varint

_SMALL = [bytes([n << 1]) for n in range(64)]
_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")
_PRIMITIVES = ("string", "bytes", "int", "long", "boolean", "double", "float", "null")
_RANGES = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


class Unsupported(Exception):
    """A schema construct the compiler leaves to fastavro."""


def _check_int(value: Any, kind: str, field: str) -> int:
    low, high = _RANGES[kind]
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{field}: expected an Avro {kind} (a Python int in [{low}, {high}]), got {value!r}")
    return value


def _bad_branch(byte: int, pos: int, field: str) -> None:
    raise ValueError(f"{field}: union branch {byte} at offset {pos} (expected 0 or 1)")


def _not_str(value: Any, field: str) -> bytes:
    raise TypeError(f"{field}: expected str, got {type(value).__name__}")


def _bad_length(size: int, pos: int, total: int, field: str) -> None:
    raise ValueError(f"{field}: length {size} at offset {pos} runs past the end of {total} bytes")


class _Writer:
    """Accumulates indented source lines and fresh variable names."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.counter = 0

    def var(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)


def _field_type(field: dict[str, Any]) -> tuple[Any, bool]:
    """(the non-null type, nullable) for a field; Unsupported for other unions."""
    kind = field["type"]
    if isinstance(kind, list):
        if len(kind) == 2 and kind[0] == "null" and not isinstance(kind[1], list):
            return kind[1], True
        raise Unsupported(f"union {kind}")
    return kind, False


def _type_name(kind: Any) -> str:
    return kind if isinstance(kind, str) else str(kind.get("type"))


# --- encoder -------------------------------------------------------------------------------------------------


def _encode_value(w: _Writer, kind: Any, value: str, indent: int, label: str) -> None:
    if isinstance(kind, list):  # ["null", X], checked by check_supported
        w.emit(indent, f"if {value} is None: out(b'\\x00')")
        w.emit(indent, "else:")
        w.emit(indent + 1, "out(b'\\x02')")
        _encode_value(w, kind[1], value, indent + 1, label)
        return
    name = _type_name(kind)
    if name == "string":
        data = w.var("b")
        w.emit(indent, f"{data} = {value}.encode('utf-8') if type({value}) is str else not_str({value}, {label!r})")
        w.emit(indent, f"n = len({data})")
        w.emit(indent, f"out(SMALL[n] if n < 64 else zz(n)); out({data})")
    elif name == "bytes":
        w.emit(indent, f"n = len({value})")
        w.emit(indent, f"out(SMALL[n] if n < 64 else zz(n)); out(bytes({value}))")
    elif name in ("int", "long"):
        w.emit(indent, f"if type({value}) is int and 0 <= {value} < 64: out(SMALL[{value}])")
        w.emit(indent, f"else: out(zz(check_int({value}, {name!r}, {label!r})))")
    elif name == "boolean":
        w.emit(indent, f"if type({value}) is not bool: raise TypeError({label!r} + ': expected bool')")
        w.emit(indent, f"out(b'\\x01' if {value} else b'\\x00')")
    elif name == "double":
        w.emit(indent, f"out(DOUBLE.pack({value}))")
    elif name == "float":
        w.emit(indent, f"out(FLOAT.pack({value}))")
    elif name == "record":
        _encode_record(w, kind, value, indent, label)
    elif name == "array":
        items, item = w.var("items"), w.var("item")
        w.emit(indent, f"{items} = {value}")
        w.emit(indent, f"if {items}:")
        w.emit(indent + 1, f"out(zz(len({items})))")
        w.emit(indent + 1, f"for {item} in {items}:")
        _encode_value(w, kind["items"], item, indent + 2, f"{label}[]")
        w.emit(indent, "out(b'\\x00')")
    elif name == "null":
        pass
    else:
        raise Unsupported(name)


def _encode_record(w: _Writer, schema: dict[str, Any], record: str, indent: int, label: str) -> None:
    for field in schema["fields"]:
        kind, nullable = _field_type(field)
        value = w.var("v")
        field_label = f"{label}.{field['name']}".lstrip(".")
        if "default" in field:
            w.emit(indent, f"{value} = {record}.get({field['name']!r}, {field['default']!r})")
        elif nullable:
            w.emit(indent, f"{value} = {record}.get({field['name']!r})")
        else:
            w.emit(indent, f"{value} = {record}[{field['name']!r}]")
        if not nullable and _type_name(kind) not in ("null", "record", "array"):
            w.emit(indent, f"if {value} is None: raise TypeError({field_label!r} + ': null in a non-null field')")
        _encode_value(w, field["type"], value, indent, field_label)


# --- decoder -------------------------------------------------------------------------------------------------


def _read_varint_into(w: _Writer, target: str, indent: int) -> None:
    w.emit(indent, "c = buf[pos]")
    w.emit(indent, f"if c < 128: {target} = (c >> 1) ^ -(c & 1); pos += 1")
    w.emit(indent, f"else: {target}, pos = read_varint(buf, pos)")


def _decode_value(w: _Writer, kind: Any, target: str, indent: int, label: str) -> None:
    if isinstance(kind, list):  # ["null", X], checked by check_supported
        w.emit(indent, "c = buf[pos]; pos += 1")
        w.emit(indent, f"if c == 0: {target} = None")
        w.emit(indent, "elif c == 2:")
        _decode_value(w, kind[1], target, indent + 1, label)
        w.emit(indent, f"else: bad_branch(c, pos - 1, {label!r})")
        return
    name = _type_name(kind)
    if name in ("string", "bytes"):
        # Lengths below 64 take one byte (even: zigzag of a non-negative number). A slice running past the end
        # is caught by the record's end-of-buffer check.
        convert = ".decode()" if name == "string" else ""
        w.emit(indent, "n = buf[pos]")
        w.emit(indent, "if n < 128 and not n & 1:")
        w.emit(indent + 1, "s = pos + 1; pos = s + (n >> 1)")
        w.emit(indent + 1, f"{target} = buf[s:pos]{convert}")
        w.emit(indent, "else:")
        w.emit(indent + 1, "n, s = read_varint(buf, pos); pos = s + n")
        w.emit(indent + 1, f"if n < 0 or pos > total: bad_length(n, s, total, {label!r})")
        w.emit(indent + 1, f"{target} = buf[s:pos]{convert}")
    elif name in ("int", "long"):
        _read_varint_into(w, target, indent)
    elif name == "boolean":
        w.emit(indent, f"{target} = buf[pos] != 0; pos += 1")
    elif name in ("double", "float"):
        size = 8 if name == "double" else 4
        w.emit(indent, f"if pos + {size} > total: bad_length({size}, pos, total, {label!r})")
        w.emit(indent, f"{target} = {name.upper()}.unpack_from(buf, pos)[0]; pos += {size}")
    elif name == "record":
        _decode_record(w, kind, target, indent, label)
    elif name == "array":
        items, count, item = w.var("items"), w.var("count"), w.var("item")
        w.emit(indent, f"{items} = []")
        w.emit(indent, "while True:")
        _read_varint_into(w, count, indent + 1)
        w.emit(indent + 1, f"if {count} == 0: break")
        w.emit(indent + 1, f"if {count} < 0:")
        w.emit(indent + 2, f"{count} = -{count}")
        _read_varint_into(w, "n", indent + 2)  # the block's byte size, unused
        w.emit(indent + 1, f"for _ in range({count}):")
        _decode_value(w, kind["items"], item, indent + 2, f"{label}[]")
        w.emit(indent + 2, f"{items}.append({item})")
        w.emit(indent, f"{target} = {items}")
    elif name == "null":
        w.emit(indent, f"{target} = None")
    else:
        raise Unsupported(name)


def _decode_record(w: _Writer, schema: dict[str, Any], target: str, indent: int, label: str) -> None:
    values = []
    for field in schema["fields"]:
        value = w.var("v")
        field_label = f"{label}.{field['name']}".lstrip(".")
        values.append((field["name"], value))
        _decode_value(w, field["type"], value, indent, field_label)
    w.emit(indent, f"if pos > total: bad_length(pos, 0, total, {label or schema.get('name')!r})")
    w.emit(indent, f"{target} = {{" + ", ".join(f"{name!r}: {value}" for name, value in values) + "}")


# --- entry point ---------------------------------------------------------------------------------------------

_NAMESPACE = {
    "SMALL": _SMALL, "DOUBLE": _DOUBLE, "FLOAT": _FLOAT, "zz": zigzag_varint, "read_varint": read_varint,
    "check_int": _check_int, "bad_branch": _bad_branch, "bad_length": _bad_length, "not_str": _not_str,
}

Encoder = Callable[[dict[str, Any]], bytes]
Decoder = Callable[[bytes, int], tuple[dict[str, Any], int]]


@dataclass(frozen=True)
class CompiledRecord:
    """The generated functions for one record schema, and their source (for reading and debugging)."""

    encode: Encoder
    decode: Decoder
    source: str


def check_supported(kind: Any) -> None:
    """Unsupported for named-type references, enums, maps, fixed and wider unions (fastavro handles those)."""
    if isinstance(kind, list):
        if len(kind) != 2 or kind[0] != "null":
            raise Unsupported(f"union {kind}")
        check_supported(kind[1])
    elif isinstance(kind, str):
        if kind not in _PRIMITIVES:
            raise Unsupported(f"named type reference {kind}")
    elif kind.get("logicalType"):
        raise Unsupported(f"logical type {kind['logicalType']}")
    elif kind["type"] == "record":
        for field in kind["fields"]:
            check_supported(field["type"])
    elif kind["type"] == "array":
        check_supported(kind["items"])
    elif kind["type"] not in _PRIMITIVES:
        raise Unsupported(str(kind["type"]))


def compile_record(schema: dict[str, Any]) -> CompiledRecord | None:
    """The compiled codec of a self-contained record schema, or None if it uses what the compiler leaves out."""
    try:
        check_supported(schema)
        w = _Writer()
        w.emit(0, "def encode(record):")
        w.emit(1, "parts = []; out = parts.append")
        _encode_record(w, schema, "record", 1, "")
        w.emit(1, "return b''.join(parts)")
        w.emit(0, "")
        w.emit(0, "def decode(buf, pos):")
        w.emit(1, "total = len(buf)")
        _decode_record(w, schema, "result", 1, "")
        w.emit(1, "return result, pos")
    except Unsupported:
        return None
    source = "\n".join(w.lines) + "\n"
    namespace: dict[str, Any] = dict(_NAMESPACE)
    exec(compile(source, f"<avro codec {schema.get('name')}>", "exec"), namespace)
    return CompiledRecord(namespace["encode"], namespace["decode"], source)
