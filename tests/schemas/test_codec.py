"""Round trips of both batch schemas through the wire format, and how bad input is refused."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.catalog import COLUMN_NAMES
from schemas.codec import (
    DecodeError,
    decode_raw_batch,
    decode_security_batch,
    encode_raw_batch,
    encode_security_batch,
    peek_schema_id,
)
from tests.schemas.conftest import raw_batch, security_batch, stored

LARGE = settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def sparse(batch: dict[str, Any]) -> dict[str, Any]:
    return {**batch, "rows": [{k: v for k, v in row.items() if v is not None} for row in batch["rows"]]}


@LARGE
@given(raw_batch)
def test_raw_batch_round_trip(batch: dict[str, Any]) -> None:
    data = encode_raw_batch(batch)
    assert data[:5] == b"\x00\x00\x00\x00\x65"  # magic byte, local schema id 101
    assert decode_raw_batch(data) == batch


@LARGE
@given(security_batch)
def test_security_batch_round_trip_is_sparse(batch: dict[str, Any]) -> None:
    data = encode_security_batch(batch)
    assert peek_schema_id(data) == 201
    assert decode_security_batch(data) == sparse(batch)


def test_null_and_empty_stay_distinct() -> None:
    _, stored_batch = stored("RawEventBatch.v1")
    event = dict(stored_batch["events"][0])
    event.update(event_data=[{"name": "A", "value": ""}, {"name": "A", "value": None}, {"name": None, "value": ""}],
                 user_data_xml="", rendered_message=None)
    batch = {**stored_batch, "events": [event]}
    assert decode_raw_batch(encode_raw_batch(batch))["events"][0] == event
    rows = [{"Account": "", "AccountType": None, "EventID": 0}]
    decoded = decode_security_batch(encode_security_batch({"computer": "", "batch_id": "", "source_batch_id": "",
                                                           "rows": rows}))
    assert decoded["rows"] == [{"Account": "", "EventID": 0}]


def test_missing_optional_fields_take_their_defaults() -> None:
    event = {"event_id": 4624, "time_created": 16811123219710164,
             "provenance": {"source_format": "evtx", "read_time_us": 1}}
    batch = {"host": "h", "batch_id": "b", "sequence": 0, "send_time_us": 0, "events": [event]}
    decoded = decode_raw_batch(encode_raw_batch(batch))["events"][0]
    assert decoded["event_data"] == [] and decoded["channel"] == "" and decoded["provider_guid"] is None
    assert decoded["time_created"] == 16811123219710164  # 100 ns precision kept
    assert decoded["provenance"]["agent_id"] == "" and decoded["provenance"]["collector_id"] is None


def test_very_large_values_round_trip() -> None:
    _, stored_batch = stored("RawEventBatch.v1")
    big = "x\u00e9\U0001f600" * 700_000  # ~6 MB of UTF-8
    event = dict(stored_batch["events"][0], rendered_message=big, time_created=2**63 - 1,
                 event_data=[{"name": f"n{i}", "value": str(i)} for i in range(20_000)])
    batch = {**stored_batch, "sequence": -(2**63), "events": [event] * 3}
    assert decode_raw_batch(encode_raw_batch(batch)) == batch
    row = dict.fromkeys(c for c in COLUMN_NAMES if c in ("EventData", "CommandLine")) | {"EventData": big,
                                                                                     "EventID": 2**31 - 1}
    security = {"computer": "h", "batch_id": "b", "source_batch_id": "s", "rows": [row] * 3}
    assert decode_security_batch(encode_security_batch(security)) == sparse(security)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than the 5-byte wire-format header"),
        (b"\x00\x00\x00", "shorter than the 5-byte"),
        (b'{"host": "h"}', "first byte is 0x7b, expected 0x00"),
        (b"\x00\x00\x00\x00\x07abc", "unknown schema id 7"),
        (b"\x00\x00\x00\x00\xc9", "expected a RawEventBatch, got schema id 201 = SecurityEventBatch v1"),
        (b"\x00\x00\x00\x00\x65\x02h", "not valid Avro for schema id 101"),
    ],
)
def test_garbage_raw_batch_is_a_decode_error_that_says_why(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_raw_batch(data)


def test_trailing_bytes_and_truncation_are_decode_errors() -> None:
    raw, _ = stored("RawEventBatch.v1")
    security, _ = stored("SecurityEventBatch.v1")
    with pytest.raises(DecodeError, match="1 trailing bytes"):
        decode_raw_batch(raw + b"\x00")
    with pytest.raises(DecodeError, match="1 trailing bytes"):
        decode_security_batch(security + b"\x00")
    with pytest.raises(DecodeError, match="not valid Avro"):
        decode_raw_batch(raw[:-40])
    with pytest.raises(DecodeError, match="not valid Avro"):
        decode_security_batch(security[:-40])
    with pytest.raises(DecodeError, match="expected bytes, got str"):
        decode_security_batch("not bytes")  # type: ignore[arg-type]


@settings(max_examples=300)
@given(st.sampled_from([b"\x00\x00\x00\x00\x65", b"\x00\x00\x00\x00\xc9"]), st.binary(max_size=400))
def test_random_payload_decodes_or_raises_decode_error(header: bytes, body: bytes) -> None:
    for decode in (decode_raw_batch, decode_security_batch):
        try:
            decoded = decode(header + body)
        except DecodeError:
            continue
        assert isinstance(decoded, dict)


@settings(max_examples=100)
@given(st.integers(0, 3000), st.integers(0, 255))
def test_corrupted_stored_payload_never_escapes_as_another_exception(offset: int, byte: int) -> None:
    for name, decode in (("RawEventBatch.v1", decode_raw_batch), ("SecurityEventBatch.v1", decode_security_batch)):
        data, _ = stored(name)
        corrupted = bytearray(data)
        corrupted[5 + offset % (len(data) - 5)] = byte
        with contextlib.suppress(DecodeError):
            decode(bytes(corrupted))
