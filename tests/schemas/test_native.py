"""The native engine (schemas._avrocodec) and the pure-Python codecs against fastavro, hostile input, and leaks.

Both engines are tested on every run: ``engine`` is a ``Codec`` forced to one of them. With
``SECSTREAM_REQUIRE_NATIVE_CODEC=1`` (set by ``make test``) a missing extension is a failure, not a skip.
"""

from __future__ import annotations

import contextlib
import gc
import io
import math
import os
import sys
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import native
from schemas.codec import Codec, DecodeError, EncodeError, default_codec
from schemas.compiled import compile_record
from tests.schemas.conftest import EVERYTHING, everything_record, fastavro_bytes, raw_batch, security_batch, stored

REQUIRED = os.environ.get("SECSTREAM_REQUIRE_NATIVE_CODEC", "") == "1"
needs_native = pytest.mark.skipif(not native.available() and not REQUIRED,
                                  reason=f"native codec not built: {native.IMPORT_ERROR}")
SLOW_DATA = [HealthCheck.too_slow, HealthCheck.data_too_large]
LARGE = settings(max_examples=60, deadline=None, suppress_health_check=SLOW_DATA)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ENGINES = ["native", "python"]


_CODECS: dict[str, Codec] = {}


def require_native() -> None:
    """Skip without the extension, or fail when ``SECSTREAM_REQUIRE_NATIVE_CODEC=1`` says it must be there."""
    if not native.available():
        if REQUIRED:
            pytest.fail(f"SECSTREAM_REQUIRE_NATIVE_CODEC=1 but the extension did not load: {native.IMPORT_ERROR}")
        pytest.skip(f"native codec not built: {native.IMPORT_ERROR}")


def make_codec(engine: str) -> Codec:
    if engine == "native":
        require_native()
    if engine not in _CODECS:
        _CODECS[engine] = Codec(native=engine == "native")
    return _CODECS[engine]


@pytest.fixture(params=ENGINES, scope="module")
def engine(request: pytest.FixtureRequest) -> Codec:
    return make_codec(request.param)


def sparse(batch: dict[str, Any]) -> dict[str, Any]:
    return {**batch, "rows": [{k: v for k, v in row.items() if v is not None} for row in batch["rows"]]}


# --- which engine runs ---------------------------------------------------------------------------------------


def test_native_engine_is_the_one_in_use_when_required() -> None:
    """``make test`` sets SECSTREAM_REQUIRE_NATIVE_CODEC=1: this fails if the C extension did not build or load."""
    if not REQUIRED:
        pytest.skip("SECSTREAM_REQUIRE_NATIVE_CODEC is not set")
    assert native.available(), f"the native codec did not load: {native.IMPORT_ERROR}"
    assert os.environ.get(native.DISABLE_ENV, "1") != "0", "SECSTREAM_NATIVE_CODEC=0 contradicts the requirement"
    assert default_codec().native_in_use == {"RawEventBatch": True, "SecurityEventBatch": True}


@needs_native
def test_env_var_forces_the_python_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.DISABLE_ENV, "0")
    assert Codec().native_in_use == {"RawEventBatch": False, "SecurityEventBatch": False}
    monkeypatch.setenv(native.DISABLE_ENV, "1")
    assert Codec().native_in_use == {"RawEventBatch": True, "SecurityEventBatch": True}


def test_each_engine_is_what_it_says(engine: Codec) -> None:
    kind = type(engine._fast["RawEventBatch"]).__module__
    assert (kind == "schemas._avrocodec") == engine.native_in_use["RawEventBatch"]


# --- byte-for-byte against fastavro --------------------------------------------------------------------------


@pytest.mark.parametrize("engine_name", ENGINES)
@LARGE
@given(batch=raw_batch)
def test_raw_batch_is_fastavro_byte_for_byte(engine_name: str, batch: dict[str, Any]) -> None:
    codec = make_codec(engine_name)
    payload = codec.encode_raw_batch(batch)
    assert payload[:5] == b"\x00\x00\x00\x00\x65"
    assert payload[5:] == fastavro_bytes(codec.raw_schema.parsed, batch)
    decoded = codec.decode_raw_batch(payload)
    assert decoded == batch
    read = schemaless_reader(io.BytesIO(payload[5:]), codec.raw_schema.parsed, None)
    assert decoded == read
    as_pairs = codec.decode_raw_batch(payload, event_data_pairs=True)
    assert as_pairs == _with_pairs(read)  # type: ignore[arg-type]
    assert all(type(item) is tuple for event in as_pairs["events"] for item in event["event_data"])


def _with_pairs(batch: dict[str, Any]) -> dict[str, Any]:
    return {**batch, "events": [{**event, "event_data": [(item["name"], item["value"]) for item in event["event_data"]]}
                                for event in batch["events"]]}


def test_a_batch_of_an_older_writer_schema_gives_pairs_too() -> None:
    payload, expected = stored("RawEventBatch.v1")
    for engine_name in ENGINES:
        assert make_codec(engine_name).decode_raw_batch(payload, event_data_pairs=True) == _with_pairs(expected)


@needs_native
def test_only_a_plain_record_can_be_decoded_as_a_tuple() -> None:
    nodes = native.compile_nodes(EVERYTHING)
    assert nodes is not None
    for index, node in enumerate(nodes):
        flagged = (*nodes[:index], (node[0], node[1] | native.TUPLE, *node[2:]), *nodes[index + 1:])
        if node[0] == native.KINDS["record"] and not node[1] & native.SPARSE:
            native._avrocodec.Program(flagged)
        else:
            with pytest.raises(ValueError, match="only a non-sparse record"):
                native._avrocodec.Program(flagged)


@pytest.mark.parametrize("engine_name", ENGINES)
@settings(max_examples=40, deadline=None, suppress_health_check=SLOW_DATA)
@given(batch=security_batch)
def test_security_batch_is_fastavro_byte_for_byte(engine_name: str, batch: dict[str, Any]) -> None:
    codec = make_codec(engine_name)
    payload = codec.encode_security_batch(batch)
    assert payload[5:] == fastavro_bytes(codec.security_schema.parsed, batch)
    assert codec.decode_security_batch(payload) == sparse(batch)
    full = schemaless_reader(io.BytesIO(payload[5:]), codec.security_schema.parsed, None)
    assert isinstance(full, dict)
    assert sparse(full) == sparse(batch)


everything_parsed = parse_schema(EVERYTHING)


@pytest.fixture(params=ENGINES, scope="module")
def everything(request: pytest.FixtureRequest) -> Any:
    """The ``EVERYTHING`` record codec of one engine: a native program or the compiled Python functions."""
    if request.param == "native":
        require_native()
        built: Any = native.build(EVERYTHING)
    else:
        built = compile_record(EVERYTHING)
    assert built is not None
    return built


@settings(max_examples=300, deadline=None)
@given(value=everything_record)
def test_every_construct_is_fastavro_byte_for_byte(everything: Any, value: dict[str, Any]) -> None:
    """bytes, float, double, boolean, nested arrays, nullable records: the constructs the batch schemas lack."""
    data = everything.encode(value)
    assert data == fastavro_bytes(everything_parsed, value)
    decoded, end = everything.decode(data, 0)
    assert end == len(data)
    assert decoded == schemaless_reader(io.BytesIO(data), everything_parsed, None)


@pytest.mark.parametrize("infinity", [math.inf, -math.inf])
def test_edge_values(everything: Any, infinity: float) -> None:
    value = {"s": "\x00é\U0001f600", "b": bytearray(b"\x00\xff"), "i": -(2**31), "l": 2**63 - 1, "flag": False,
             "d": math.nan, "f": infinity, "tags": [None, ""], "matrix": [[-(2**63)], []],
             "inner": {"x": None, "ys": []}}
    decoded, _ = everything.decode(everything.encode(value), 0)
    assert math.isnan(decoded["d"]) and decoded["f"] == infinity
    assert decoded["b"] == b"\x00\xff" and decoded["l"] == 2**63 - 1 and decoded["matrix"] == [[-(2**63)], []]


def test_absent_fields_take_their_defaults(everything: Any) -> None:
    value = {"s": "", "b": b"", "i": 0, "flag": True, "d": 0.0, "f": None, "matrix": [], "inner": None}
    data = everything.encode(value)
    assert data == fastavro_bytes(everything_parsed, value)
    decoded, _ = everything.decode(data, 0)
    assert decoded["l"] is None and decoded["tags"] == []


def test_blocks_with_byte_counts_are_read(everything: Any) -> None:
    """Java writers may emit array blocks as (-count, byte size); a reader must accept them."""
    value = {"s": "a", "b": b"", "i": 1, "flag": True, "d": 0.0, "matrix": [], "tags": ["x", None], "inner": None}
    plain = everything.encode(value)
    tags_at = plain.index(b"\x04\x02\x02x\x00\x00")  # count 2, "x", null, end
    blocked = plain[:tags_at] + b"\x03\x08" + plain[tags_at + 1:]  # count -2, 4 bytes
    assert everything.decode(blocked, 0)[0] == everything.decode(plain, 0)[0]


def test_native_encode_writes_the_prefix_first() -> None:
    require_native()
    program = native.build(EVERYTHING)
    assert program is not None
    value = {"s": "", "b": b"", "i": 0, "flag": True, "d": 0.0, "matrix": [], "inner": None}
    assert program.encode(value, b"\x00\x01") == b"\x00\x01" + program.encode(value)


def test_schemas_the_engine_leaves_to_others() -> None:
    assert native.compile_nodes({"type": "record", "name": "R", "fields": [
        {"name": "x", "type": {"type": "map", "values": "string"}}]}) is None
    if native.available():  # items that can take zero bytes: a count could not be checked against the bytes left
        assert native.build({"type": "record", "name": "R", "fields": [
            {"name": "x", "type": {"type": "array", "items": "null"}}]}) is None
    # A sparse record needs nullable primitives with default null.
    assert native.compile_nodes({"type": "record", "name": "R", "fields": [{"name": "x", "type": "string"}]},
                                sparse={"R"}) is None


# --- encode errors: the same refusals from both engines -------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b.pop("host"), "lacks the required field 'host'"),
        (lambda b: b["events"][0].pop("provenance"), "lacks the required field 'provenance'"),
        (lambda b: b["events"][0].update(event_id="4624"), r"events\[\]\.event_id: expected an Avro int"),
        (lambda b: b["events"][0].update(event_id=2**31), r"events\[\]\.event_id: expected an Avro int"),
        (lambda b: b["events"][0].update(event_id=True), r"events\[\]\.event_id: expected an Avro int"),
        (lambda b: b["events"][0].update(time_created=2**63), r"events\[\]\.time_created: expected an Avro long"),
        (lambda b: b["events"][0].update(channel=None), r"events\[\]\.channel: null in a non-null field"),
        (lambda b: b["events"][0].update(channel="\ud800"), "surrogate"),
        (lambda b: b["events"][0]["provenance"].update(read_time_us=1.5), "read_time_us"),
        (lambda b: b["events"][0]["event_data"].append({"name": 5, "value": None}), "name"),
        (lambda b: b.update(sequence=2**63), "sequence: expected an Avro long"),
    ],
)
def test_raw_batch_that_does_not_fit_is_refused_by_both(engine: Codec, mutate: Any, message: str) -> None:
    _, batch = stored("RawEventBatch.v1")
    mutate(batch)
    with pytest.raises(EncodeError, match=message):
        engine.encode_raw_batch(batch)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"EventId": 4624}, "unknown column 'EventId'"),
        ({"EventID": "4624"}, "column EventID: expected an int"),
        ({"EventID": 2**31}, "column EventID: expected an int"),
        ({"EventID": True}, "column EventID: expected an int"),
        ({"Account": 5}, "column Account: expected str"),
        ({"Account": "\udc80"}, "surrogate"),
        ({"_BilledSize": "1.5"}, "column _BilledSize: expected a number"),
    ],
)
def test_security_row_that_does_not_fit_is_refused_by_both(engine: Codec, row: dict[str, Any], message: str) -> None:
    with pytest.raises(EncodeError, match=message):
        engine.encode_security_batch({"computer": "h", "batch_id": "b", "source_batch_id": "s", "rows": [row]})


def test_security_envelope_is_checked_by_both(engine: Codec) -> None:
    with pytest.raises(EncodeError, match="computer"):
        engine.encode_security_batch({"batch_id": "b", "source_batch_id": "s", "rows": []})
    with pytest.raises(EncodeError, match="lacks the required field 'rows'"):
        engine.encode_security_batch({"computer": "h", "batch_id": "b", "source_batch_id": "s"})
    with pytest.raises(EncodeError, match="rows: expected a list"):
        engine.encode_security_batch({"computer": "h", "batch_id": "b", "source_batch_id": "s", "rows": None})


@needs_native
@settings(max_examples=40, deadline=None, suppress_health_check=SLOW_DATA)
@given(batch=security_batch, data=st.data())
def test_a_row_is_written_alike_whatever_its_key_order_and_key_objects(batch: dict[str, Any],
                                                                       data: st.DataObject) -> None:
    """The encoder finds a column by its name's identity first: equal names that are other str objects, in any
    order, must give fastavro's bytes all the same."""
    codec = make_codec("native")
    expected = fastavro_bytes(codec.security_schema.parsed, batch)

    def rekeyed(row: dict[str, Any]) -> dict[str, Any]:
        items = data.draw(st.permutations(list(row.items())))
        copies = data.draw(st.booleans())
        return {(key.encode().decode() if copies else key): value for key, value in items}

    again = {**batch, "rows": [rekeyed(row) for row in batch["rows"]]}
    assert codec.encode_security_batch(again)[5:] == expected


# --- hostile input --------------------------------------------------------------------------------------------

PAYLOADS = {name: stored(name)[0] for name in ("RawEventBatch.v1", "SecurityEventBatch.v1")}


def _decode(codec: Codec, name: str, data: bytes) -> dict[str, Any] | None:
    """The decoded batch, or None for a DecodeError; any other exception fails the test."""
    decode = codec.decode_raw_batch if name.startswith("Raw") else codec.decode_security_batch
    try:
        return decode(data)
    except DecodeError:
        return None


def _agrees(name: str, data: bytes) -> None:
    """The native engine reads ``data`` or refuses it, never crashes; what it reads, the Python codec reads alike.
    A RawEventBatch read with EventData pairs is refused or read exactly when it is without."""
    fast = _decode(make_codec("native"), name, data)
    if fast is not None:
        assert _decode(make_codec("python"), name, data) == fast
    if name.startswith("Raw"):
        try:
            as_pairs: dict[str, Any] | None = make_codec("native").decode_raw_batch(data, event_data_pairs=True)
        except DecodeError:
            as_pairs = None
        assert as_pairs == (None if fast is None else _with_pairs(fast))


@needs_native
@FUZZ
@given(st.sampled_from(sorted(PAYLOADS)), st.binary(max_size=600))
def test_random_bytes_are_refused_or_read(name: str, body: bytes) -> None:
    header = PAYLOADS[name][:5]
    _agrees(name, header + body)


@needs_native
@FUZZ
@given(st.sampled_from(sorted(PAYLOADS)), st.data())
def test_mangled_real_payloads_are_refused_or_read(name: str, data: st.DataObject) -> None:
    payload = bytearray(PAYLOADS[name])
    for _ in range(data.draw(st.integers(1, 4))):
        operation = data.draw(st.sampled_from(["flip", "set", "truncate", "extend", "insert", "delete"]))
        if len(payload) <= 6:
            break
        at = data.draw(st.integers(5, len(payload) - 1))
        if operation == "flip":
            payload[at] ^= 1 << data.draw(st.integers(0, 7))
        elif operation == "set":
            payload[at] = data.draw(st.sampled_from([0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF]))
        elif operation == "truncate":
            del payload[at:]
        elif operation == "extend":
            payload += data.draw(st.binary(min_size=1, max_size=20))
        elif operation == "insert":
            payload[at:at] = data.draw(st.binary(min_size=1, max_size=10))
        else:
            del payload[at:at + data.draw(st.integers(1, 10))]
    _agrees(name, bytes(payload))


HUGE = [
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a 10-byte varint: -(2**63)
    b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # 2**63 - 1
    b"\xff\xff\xff\xff\x0f",  # -2**31 - 1... a large negative length
    b"\xfe\xff\xff\xff\x0f",  # 2**31 - 1: a length far past the end
    b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # 11 bytes: no varint is that long
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f",  # overflows 64 bits
    b"\x01",  # count -1, then a block size
]


@needs_native
@pytest.mark.parametrize("name", sorted(PAYLOADS))
@pytest.mark.parametrize("number", HUGE)
def test_huge_and_negative_lengths_and_counts_are_refused(name: str, number: bytes) -> None:
    """Each length/count position of a real payload replaced by hostile varints: refused, nothing allocated."""
    codec = make_codec("native")
    decode = codec.decode_raw_batch if name.startswith("Raw") else codec.decode_security_batch
    payload = PAYLOADS[name]
    for at in range(5, min(len(payload), 400), 7):
        with contextlib.suppress(DecodeError):
            decode(payload[:at] + number + payload[at + 1:])


@needs_native
def test_a_block_count_beyond_the_bytes_left_is_refused_before_allocating() -> None:
    codec = make_codec("native")
    # host "", batch_id "", sequence 0, agent_id "", send_time_us 0, events: a block of 2**62 items.
    data = b"\x00\x00\x00\x00\x65" + b"\x00\x00\x00\x00\x00" + b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f"
    with pytest.raises(DecodeError, match="cannot fit"):
        codec.decode_raw_batch(data)


@needs_native
def test_other_buffer_types_and_offsets() -> None:
    program: Any = make_codec("native")._fast["RawEventBatch"]  # the C program: any buffer, checked at run time
    payload = PAYLOADS["RawEventBatch.v1"]
    expected = program.decode(payload, 5)
    assert program.decode(bytearray(payload), 5) == expected
    assert program.decode(memoryview(payload), 5) == expected
    for bad in (-1, len(payload) + 1):
        with pytest.raises(ValueError, match="outside"):
            program.decode(payload, bad)
    with pytest.raises(TypeError):
        program.decode("text", 0)


# --- reference counting --------------------------------------------------------------------------------------


def _blocks_after(rounds: int, work: Any) -> int:
    for _ in range(rounds):
        work()
    gc.collect()
    return sys.getallocatedblocks()


@needs_native
def test_no_leaks_on_success_and_on_every_error_path() -> None:
    """Allocated blocks do not grow over many encode/decode rounds, including ones that fail half-way."""
    codec = make_codec("native")
    raw_payload, raw = stored("RawEventBatch.v1")
    security_payload, security = stored("SecurityEventBatch.v1")
    bad_raw = {**raw, "events": [*raw["events"], {**raw["events"][0], "event_id": "x"}]}
    bad_rows = {**security, "rows": [*security["rows"], {"EventID": "x"}]}
    marker = "a value whose references are counted"
    marked = {**raw, "host": marker}
    corrupt = [raw_payload[:cut] for cut in range(6, len(raw_payload), 97)]
    corrupt += [security_payload[:cut] for cut in range(6, len(security_payload), 97)]

    def work() -> None:
        codec.decode_raw_batch(codec.encode_raw_batch(marked))
        codec.decode_raw_batch(codec.encode_raw_batch(marked), event_data_pairs=True)
        codec.decode_security_batch(codec.encode_security_batch(security))
        for bad, encode in ((bad_raw, codec.encode_raw_batch), (bad_rows, codec.encode_security_batch)):
            with pytest.raises(EncodeError):
                encode(bad)
        for data in corrupt:
            with pytest.raises(DecodeError):
                (codec.decode_raw_batch if data[4] == 0x65 else codec.decode_security_batch)(data)
            if data[4] == 0x65:
                with pytest.raises(DecodeError):
                    codec.decode_raw_batch(data, event_data_pairs=True)

    refs = sys.getrefcount(marker)
    baseline = _blocks_after(10, work)  # warm-up: the string cache, interned strings, size hints
    after = _blocks_after(100, work)
    assert after - baseline < 50, f"{after - baseline} blocks more after 100 rounds"
    assert sys.getrefcount(marker) == refs
