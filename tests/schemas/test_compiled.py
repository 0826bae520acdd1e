"""The schema compiler against fastavro on every construct it covers, and its fallback for the rest."""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.compiled import compile_record
from tests.schemas.conftest import INT32, INT64, OPT_TEXT, TEXT

SCHEMA: dict[str, Any] = {
    "type": "record", "name": "Everything", "namespace": "test",
    "fields": [
        {"name": "s", "type": "string"},
        {"name": "b", "type": "bytes"},
        {"name": "i", "type": "int"},
        {"name": "l", "type": ["null", "long"], "default": None},
        {"name": "flag", "type": "boolean"},
        {"name": "d", "type": "double"},
        {"name": "f", "type": ["null", "float"]},
        {"name": "tags", "type": {"type": "array", "items": ["null", "string"]}, "default": []},
        {"name": "matrix", "type": {"type": "array", "items": {"type": "array", "items": "long"}}},
        {"name": "inner", "type": ["null", {"type": "record", "name": "Inner", "fields": [
            {"name": "x", "type": ["null", "string"], "default": None},
            {"name": "ys", "type": ["null", {"type": "array", "items": "int"}]},
        ]}]},
    ],
}

record = st.fixed_dictionaries({
    "s": TEXT,
    "b": st.binary(),
    "i": INT32,
    "l": st.none() | INT64,
    "flag": st.booleans(),
    "d": st.floats(allow_nan=False),
    "f": st.none() | st.floats(width=32, allow_nan=False),
    "tags": st.lists(OPT_TEXT, max_size=5),
    "matrix": st.lists(st.lists(INT64, max_size=4), max_size=4),
    "inner": st.none() | st.fixed_dictionaries({"x": OPT_TEXT, "ys": st.none() | st.lists(INT32, max_size=4)}),
})

compiled = compile_record(SCHEMA)
parsed = parse_schema(SCHEMA)


@settings(max_examples=200)
@given(record)
def test_compiled_codec_is_fastavro_byte_for_byte(value: dict[str, Any]) -> None:
    assert compiled is not None
    out = io.BytesIO()
    schemaless_writer(out, parsed, value)
    data = compiled.encode(value)
    assert data == out.getvalue()
    decoded, end = compiled.decode(data, 0)
    assert end == len(data)
    assert decoded == schemaless_reader(io.BytesIO(data), parsed, None)


def test_nan_and_infinities_survive() -> None:
    assert compiled is not None
    value = {"s": "", "b": b"", "i": 0, "flag": False, "d": math.nan, "f": math.inf, "matrix": [], "inner": None}
    decoded, _ = compiled.decode(compiled.encode(value), 0)
    assert math.isnan(decoded["d"]) and decoded["f"] == math.inf


def test_blocks_with_byte_counts_are_read() -> None:
    """Java writers may emit array blocks as (-count, byte size); a reader must accept them."""
    assert compiled is not None
    value = {"s": "a", "b": b"", "i": 1, "flag": True, "d": 0.0, "matrix": [], "tags": ["x", None], "inner": None}
    plain = compiled.encode(value)
    tags_at = plain.index(b"\x04\x02\x02x\x00\x00")  # count 2, "x", null, end
    blocked = plain[:tags_at] + b"\x03\x08" + plain[tags_at + 1:]  # count -2, 4 bytes
    assert compiled.decode(blocked, 0)[0] == compiled.decode(plain, 0)[0]


@pytest.mark.parametrize(
    "field_type",
    [
        {"type": "enum", "name": "E", "symbols": ["A", "B"]},
        {"type": "map", "values": "string"},
        {"type": "fixed", "name": "F", "size": 4},
        ["null", "string", "long"],
        ["string", "null"],
        {"type": "string", "logicalType": "uuid"},
        "test.Inner",
    ],
)
def test_constructs_left_to_fastavro(field_type: Any) -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "x", "type": field_type}]}
    assert compile_record(schema) is None


def test_corrupt_input_raises() -> None:
    assert compiled is not None
    value = {"s": "abc", "b": b"xy", "i": 7, "flag": True, "d": 1.5, "matrix": [[1]], "inner": {"x": "q", "ys": [1]}}
    data = compiled.encode(value)
    for cut in range(len(data)):
        with pytest.raises((ValueError, IndexError, UnicodeDecodeError)):
            compiled.decode(data[:cut], 0)
    assert data[:9] == b"\x06abc\x04xy\x0e\x00"  # s, b, i, then the union branch of l (null)
    with pytest.raises(ValueError, match="l: union branch 4 at offset 8"):
        compiled.decode(data[:8] + b"\x04" + data[9:], 0)
