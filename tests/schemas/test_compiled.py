"""The schema compiler's own behaviour: the constructs it leaves to fastavro, corrupt input.

Its agreement with fastavro on every construct (and Java-style array blocks) is tested with the native engine's,
in test_native.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from schemas.compiled import compile_record
from tests.schemas.conftest import EVERYTHING

compiled = compile_record(EVERYTHING)


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
