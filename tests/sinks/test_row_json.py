"""Rows to JSON (``sinks.row_json``) and packing serialised rows (``RequestBuilder.add_json``).

The native path (message value -> row JSON in C) must send exactly what the reference path (decoded dicts ->
orjson) sends, for the golden rows, rows with values to truncate, and messages either path refuses.
"""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import native
from schemas.codec import DecodeError, encode_security_batch
from sinks.request_builder import RequestBuilder
from sinks.row_json import DISABLE_ENV, RowDecoder, native_enabled, serialise_rows
from tests.schemas.conftest import security_batch, stored
from tests.schemas.test_native import needs_native
from tests.sinks.rows import golden_rows, make_batches


def decoders(max_field_bytes: int = 65_536) -> tuple[RowDecoder, RowDecoder]:
    native_path = RowDecoder(max_field_bytes, native_json=True)
    assert native_path.native_in_use
    return native_path, RowDecoder(max_field_bytes, native_json=False)


def assert_same(value: bytes, max_field_bytes: int = 65_536) -> None:
    fast, reference = decoders(max_field_bytes)
    a, b = fast.decode(value), reference.decode(value)
    assert (a.computer, a.rows, a.truncated) == (b.computer, b.rows, b.truncated)
    for status, row in zip(a.status_rows, b.status_rows, strict=True):
        assert {k: row.get(k) for k in ("Computer", "TimeGenerated")} == \
            {k: status.get(k) for k in ("Computer", "TimeGenerated")}


@needs_native
def test_golden_batches_are_sent_alike_by_both_paths() -> None:
    for _key, value in [(b"", encode_security_batch(b)) for b in make_batches(600, 200, computers=3)]:
        assert_same(value)


@needs_native
def test_what_is_sent_is_the_golden_rows_non_empty_values() -> None:
    rows = [dict(row) for row in golden_rows()]
    value = encode_security_batch({"computer": "c", "batch_id": "b", "source_batch_id": "s", "rows": rows})
    batch = decoders()[0].decode(value)
    assert [json.loads(r) for r in batch.rows] == [{k: v for k, v in row.items() if v not in (None, "")}
                                                    for row in rows]


@needs_native
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=security_batch, limit=st.sampled_from([24, 100, 65_536]))
def test_generated_batches_and_truncation_are_sent_alike(batch: dict[str, Any], limit: int) -> None:
    assert_same(encode_security_batch(batch), limit)


@needs_native
def test_long_values_are_truncated_as_the_reference_does() -> None:
    rows: list[dict[str, Any]] = [{"Computer": "c", "EventID": n, "Channel": "Security"} for n in range(5)]
    rows[1]["CommandLine"] = "é" * 400
    rows[3]["EventData"] = "<x/>" * 300
    value = encode_security_batch({"computer": "c", "batch_id": "b", "source_batch_id": "s", "rows": rows})
    assert_same(value, 256)
    batch = decoders(256)[0].decode(value)
    assert batch.truncated == {1: 1, 3: 1}
    assert batch.truncated_values(0, 2) == 1 and batch.truncated_values() == 2


@needs_native
@pytest.mark.parametrize("value", [b"", b"\x01\x00\x00\x00\xc9", b"\x00\x00\x00\x00\xc9\x02", None,
                                   b"\x00\x00\x00\x00\x65\x00"])
def test_what_the_codec_refuses_both_paths_refuse_alike(value: bytes | None) -> None:
    messages = []
    for decoder in decoders():
        with pytest.raises(DecodeError) as caught:
            decoder.decode(value)  # type: ignore[arg-type]
        messages.append(str(caught.value))
    assert messages[0] == messages[1]


@needs_native
def test_an_older_schema_version_takes_the_reference_path() -> None:
    payload, _expected = stored("SecurityEventBatch.v1")
    assert_same(payload)


@needs_native
def test_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DISABLE_ENV, "0")
    assert not native_enabled() and not RowDecoder().native_in_use
    monkeypatch.setenv(DISABLE_ENV, "1")
    monkeypatch.setenv(native.DISABLE_ENV, "0")
    assert not native_enabled() and not RowDecoder().native_in_use
    monkeypatch.delenv(native.DISABLE_ENV)
    assert native_enabled() and RowDecoder().native_in_use


def test_reference_path_keeps_the_decoded_rows_for_status() -> None:
    rows = [{"Computer": "a", "TimeGenerated": "t", "Channel": ""}, {"EventID": 1, "Activity": None}]
    batch = serialise_rows({"computer": "c", "rows": rows})
    assert batch.rows == [b'{"Computer":"a","TimeGenerated":"t"}', b'{"EventID":1}']
    assert batch.status_rows is rows


# --- packing serialised rows -----------------------------------------------------------------------------------


def greedy(sizes: list[list[int]], limit: int) -> list[list[tuple[int, int]]]:
    """The packing rule spelt out: rows in order, a request closes when the next row would take its JSON array
    ("[" + rows joined by "," + "]") over ``limit``; each request as (message, row) pairs."""
    requests: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    size = 2
    for message, rows in enumerate(sizes):
        for index, length in enumerate(rows):
            extra = length + (1 if current else 0)
            if current and size + extra > limit:
                requests.append(current)
                current, size, extra = [], 2, length
            current.append((message, index))
            size += extra
    return requests + ([current] if current else [])


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.lists(st.integers(2, 60), max_size=12), min_size=1, max_size=8),
       limit=st.integers(64, 300), first=st.integers(0, 3))
def test_add_json_packs_as_the_greedy_rule(sizes: list[list[int]], limit: int, first: int) -> None:
    builder = RequestBuilder(max_request_bytes=limit)
    requests = []
    for message, lengths in enumerate(sizes):
        rows = [b"{" + bytes([97 + message]) * (n - 2) + b"}" for n in lengths]
        packed = builder.add_json(0, message, "host", rows, first_row=first)
        assert not packed.rejected
        requests += packed.requests
    requests += builder.drain()
    got = []
    for request in requests:
        assert request.raw_bytes == len(request.json_body()) <= limit
        pairs = [(s.offset, s.first + i - first) for s in request.segments for i in range(s.rows)]
        assert len(pairs) == request.row_count
        got.append(pairs)
        for seg_a, seg_b in pairwise(request.segments):  # adjacent runs of one message are merged
            assert (seg_a.offset, seg_a.end) != (seg_b.offset, seg_b.first)
    assert got == greedy(sizes, limit)


def test_add_json_rejects_a_row_larger_than_any_request() -> None:
    builder = RequestBuilder(max_request_bytes=100)
    packed = builder.add_json(0, 7, "host", [b"{}", b"{" + b"x" * 120 + b"}", b'{"a":1}'])
    assert [(r.segment.offset, r.segment.first) for r in packed.rejected] == [(7, 1)]
    (request,) = builder.drain()
    assert request.rows == [b"{}", b'{"a":1}']
    assert [(s.first, s.rows) for s in request.segments] == [(0, 1), (2, 1)]
