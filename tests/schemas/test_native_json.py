"""``Program.decode_json``: SecurityEvent rows straight from Avro to the JSON the sink sends.

The reference is what the sink does without it: the row dict ``decode`` returns, empty values left out, through
``orjson.dumps``. Checked on the golden rows (and against their source values), on generated rows with every
kind of string, on mangled payloads (refused exactly when ``decode`` refuses them), and for leaks.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from typing import Any

import orjson
import pytest
from fastavro import parse_schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import native
from schemas.avsc import ROW_SCHEMA, SECURITY_EVENT_BATCH
from tests.schemas.conftest import EVERYTHING, everything_record, fastavro_bytes, security_batch, stored
from tests.schemas.test_native import PAYLOADS, _blocks_after, make_codec, needs_native, require_native
from tests.sinks.rows import golden_rows

STATUS = ("Computer", "TimeGenerated")
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Strings that exercise the escaping: control characters, quotes, backslashes, DEL, non-ASCII, astral, U+2028,
# at lengths around the 16-byte blocks the C code scans
TRICKY = st.text(alphabet=st.sampled_from([*map(chr, range(0x20)), '"', "\\", "/", "\x7f", "a", "Z", " ", "é",
                                           "\u2028", "\u20ac", "\U0001f600", "<", ">", "&", "'"]), max_size=40)


def program() -> Any:
    require_native()
    codec = make_codec("native")
    built = native.build(codec.security_schema.definition, (ROW_SCHEMA[SECURITY_EVENT_BATCH],))
    assert built is not None
    return built


def reference_json(row: dict[str, Any]) -> bytes:
    """What the sink sends for a decoded row: orjson without empty values."""
    return orjson.dumps({k: v for k, v in row.items() if v is not None and v != ""})


def decode_both(payload: bytes) -> tuple[Any, Any]:
    """(decode's record, decode_json's (record, end, projections)); each is an exception when refused."""
    built = program()
    results: list[Any] = []
    for call in (lambda: built.decode(payload, 5), lambda: built.decode_json(payload, 5, STATUS, orjson.dumps)):
        try:
            results.append(call())
        except (ValueError, TypeError) as exc:
            results.append(exc)
    return results[0], results[1]


def assert_agree(payload: bytes) -> None:
    """decode_json refuses ``payload`` exactly when decode does, and otherwise writes the reference JSON."""
    plain, fused = decode_both(payload)
    if isinstance(plain, Exception) or isinstance(fused, Exception):
        assert type(plain) is type(fused), (plain, fused)
        assert str(plain) == str(fused)
        return
    (record, end), (json_record, json_end, projections) = plain, fused
    assert json_end == end
    assert {k: v for k, v in json_record.items() if k != "rows"} == {k: v for k, v in record.items() if k != "rows"}
    assert json_record["rows"] == [reference_json(row) for row in record["rows"]]
    assert projections == [{k: row[k] for k in STATUS if k in row} for row in record["rows"]]


def batch_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"computer": "WIN-DC01.contoso.local", "batch_id": "b", "source_batch_id": "s", "rows": rows}


@needs_native
def test_golden_rows_are_the_reference_json_and_their_source_values() -> None:
    rows = [dict(row) for row in golden_rows()]
    payload = make_codec("native").encode_security_batch(batch_of(rows))
    assert_agree(payload)
    record, _end, projections = program().decode_json(payload, 5, STATUS, orjson.dumps)
    assert len(record["rows"]) == len(rows) > 100
    for sent, source in zip(record["rows"], rows, strict=True):
        assert json.loads(sent) == {k: v for k, v in source.items() if v is not None and v != ""}
    assert [p.get("Computer") for p in projections] == [r.get("Computer") for r in rows]


@needs_native
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=security_batch)
def test_generated_batches_are_the_reference_json(batch: dict[str, Any]) -> None:
    assert_agree(make_codec("native").encode_security_batch(batch))


@needs_native
@FUZZ
@given(values=st.lists(TRICKY, min_size=1, max_size=8), empty=st.booleans())
def test_every_kind_of_string_is_escaped_as_orjson_does(values: list[str], empty: bool) -> None:
    columns = ["Activity", "EventData", "Account", "Computer", "TimeGenerated", "SubjectUserName", "CommandLine",
               "ParentProcessName"]
    row: dict[str, Any] = dict(zip(columns, values, strict=False))
    row["EventID"] = 4624
    if empty:
        row["Channel"] = ""
    assert_agree(make_codec("native").encode_security_batch(batch_of([row, {}, row])))


@needs_native
@pytest.mark.parametrize("value", [0.0, -0.0, 1.0, 0.1, 1e16, 1e-7, 123456789.0, 5e-324, 1.7976931348623157e308,
                                   math.inf, -math.inf, math.nan, 1234.5678])
def test_reals_are_written_as_orjson_writes_them(value: float) -> None:
    """orjson's float format is not repr's (1e-7, not 1e-07; NaN and infinities as null)."""
    payload = make_codec("native").encode_security_batch(batch_of([{"_BilledSize": value, "EventID": -1}]))
    assert_agree(payload)
    record, _end, _projections = program().decode_json(payload, 5, STATUS, orjson.dumps)
    assert b'"_BilledSize":' + orjson.dumps(value) in record["rows"][0]


@needs_native
@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_are_refused_or_read_alike(body: bytes) -> None:
    assert_agree(PAYLOADS["SecurityEventBatch.v1"][:5] + body)


@needs_native
@FUZZ
@given(st.data())
def test_mangled_real_payloads_are_refused_or_read_alike(data: st.DataObject) -> None:
    rows = [dict(row) for row in golden_rows()[:6]]
    payload = bytearray(make_codec("native").encode_security_batch(batch_of(rows)))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(5, len(payload) - 1))
        operation = data.draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        if operation == "flip":
            payload[at] ^= 1 << data.draw(st.integers(0, 7))
        elif operation == "set":
            payload[at] = data.draw(st.sampled_from([0x00, 0x01, 0x02, 0x03, 0x7F, 0x80, 0xC0, 0xED, 0xFF]))
        elif operation == "truncate":
            del payload[at:]
        elif operation == "insert":
            payload[at:at] = data.draw(st.binary(min_size=1, max_size=10))
        else:
            del payload[at:at + data.draw(st.integers(1, 10))]
        if len(payload) <= 6:
            break
    assert_agree(bytes(payload))


@needs_native
@pytest.mark.parametrize("text", [b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\xff",
                                  b"ok\xe2\x82\xac\xf0\x9f\x98\x80"])
def test_utf8_is_checked_as_decode_checks_it(text: bytes) -> None:
    """Surrogates, overlong forms, code points past U+10FFFF and cut sequences are refused; valid text is read."""
    payload = bytearray(make_codec("native").encode_security_batch(batch_of([{"Activity": "@@@@@@"}])))
    at = payload.index(b"@@@@@@")
    payload[at - 1:at + 6] = bytes([len(text) * 2]) + text  # the string's length varint, then the bytes
    assert_agree(bytes(payload))
    valid = text == b"ok\xe2\x82\xac\xf0\x9f\x98\x80"
    assert isinstance(decode_both(bytes(payload))[1], UnicodeDecodeError) is not valid


@needs_native
@settings(max_examples=50, deadline=None)
@given(value=everything_record)
def test_a_schema_without_sparse_records_decodes_as_decode_does(value: dict[str, Any]) -> None:
    built = native.build(EVERYTHING)
    assert built is not None
    data = fastavro_bytes(parse_schema(EVERYTHING), value)
    assert built.decode_json(data, 0, (), orjson.dumps) == (*built.decode(data, 0), [])


@needs_native
def test_refusals() -> None:
    built = program()
    payload = stored("SecurityEventBatch.v1")[0]
    with pytest.raises(TypeError):
        built.decode_json(payload, 5, STATUS)
    with pytest.raises(TypeError, match="tuple"):
        built.decode_json(payload, 5, list(STATUS), orjson.dumps)
    with pytest.raises(TypeError, match="at most"):
        built.decode_json(payload, 5, ("a",) * 9, orjson.dumps)
    with pytest.raises(TypeError, match="str"):
        built.decode_json(payload, 5, (1,), orjson.dumps)
    with pytest.raises(TypeError, match="callable"):
        built.decode_json(payload, 5, STATUS, None)
    with pytest.raises(ValueError, match="outside"):
        built.decode_json(payload, len(payload) + 1, STATUS, orjson.dumps)
    real = make_codec("native").encode_security_batch(batch_of([{"_BilledSize": 1.5}]))
    with pytest.raises(TypeError, match="bytes"):
        built.decode_json(real, 5, STATUS, str)
    with pytest.raises(ZeroDivisionError):
        built.decode_json(real, 5, STATUS, lambda value: 1 / 0)


@needs_native
def test_bytes_in_a_sparse_record_have_no_json_form() -> None:
    schema = {"type": "record", "name": "Outer", "fields": [
        {"name": "rows", "type": {"type": "array", "items": {"type": "record", "name": "Row", "fields": [
            {"name": "blob", "type": ["null", "string"], "default": None},
            {"name": "flag", "type": ["null", "boolean"], "default": None},
        ]}}}]}
    nodes = native.compile_nodes(schema, ("Row",))
    assert nodes is not None
    # schemas.native refuses a bytes field with a default, so a sparse bytes field only comes from a hand-made
    # program: the string field made bytes
    nodes = tuple((native.KINDS["bytes"], *node[1:]) if node[2] == "blob" else node for node in nodes)
    built = native._avrocodec.Program(nodes)
    data = built.encode({"rows": [{"flag": True}, {"flag": False}, {}]})
    assert built.decode_json(data, 0, ("flag",), orjson.dumps)[0] == {
        "rows": [b'{"flag":true}', b'{"flag":false}', b"{}"]}
    with pytest.raises(ValueError, match="no JSON form"):
        built.decode_json(built.encode({"rows": [{"blob": b"x"}]}), 0, (), orjson.dumps)


@needs_native
def test_no_leaks_on_success_and_on_every_error_path() -> None:
    built = program()
    codec = make_codec("native")
    good = codec.encode_security_batch(batch_of([dict(row) for row in golden_rows()[:20]]))
    real = codec.encode_security_batch(batch_of([{"Computer": "h", "TimeGenerated": "t", "_BilledSize": 2.5}]))
    corrupt = [good[:cut] for cut in range(6, len(good), 211)]
    bad_utf8 = bytearray(codec.encode_security_batch(batch_of([{"Computer": "h", "Activity": "@@"}])))
    at = bad_utf8.index(b"@@")
    bad_utf8[at:at + 2] = b"\xed\xa0"
    marker = "".join(["Not", "AColumn"])  # a name only this test holds: a missing decref shows in its count

    def work() -> None:
        built.decode_json(good, 5, STATUS, orjson.dumps)
        built.decode_json(real, 5, ("Computer", marker), orjson.dumps)
        for data in [*corrupt, bytes(bad_utf8)]:
            with pytest.raises(ValueError):
                built.decode_json(data, 5, STATUS, orjson.dumps)
        with pytest.raises(TypeError):
            built.decode_json(real, 5, STATUS, str)
        with pytest.raises(struct.error):
            built.decode_json(real, 5, STATUS, lambda value: struct.pack("b", 1000))

    refs = sys.getrefcount(marker)
    baseline = _blocks_after(10, work)
    after = _blocks_after(100, work)
    assert after - baseline < 50, f"{after - baseline} blocks more after 100 rounds"
    assert sys.getrefcount(marker) == refs
