"""Packing rows into requests: sizes, exact coverage of Kafka rows, empty values, truncation, oversize rows."""

from __future__ import annotations

import gzip
import itertools
import json
import os

import orjson
import pytest

from sinks.request_builder import (
    MAX_REQUEST_BYTES,
    TRUNCATED_MARK,
    Request,
    RequestBuilder,
    encode,
    serialise_row,
    split_request,
)
from tests.sinks.rows import make_batches


def _pack(builder: RequestBuilder, batches: list[dict]) -> tuple[list[Request], list]:
    requests, rejected = [], []
    for offset, batch in enumerate(batches):
        packed = builder.add(offset % 3, offset, batch["computer"], batch["rows"])
        requests += packed.requests
        rejected += packed.rejected
    return requests + builder.drain(), rejected


def test_requests_cover_every_row_once_in_order_and_stay_under_the_limit() -> None:
    batches = make_batches(5000, 137)
    requests, rejected = _pack(RequestBuilder(), batches)
    assert not rejected
    assert len(requests) > 1
    sent = []
    for request in requests:
        body = request.json_body()
        assert len(body) == request.raw_bytes <= MAX_REQUEST_BYTES
        ((_part, wire),) = encode(request)
        assert len(wire) <= MAX_REQUEST_BYTES
        assert json.loads(gzip.decompress(wire)) == json.loads(body)
        sent += json.loads(body)
        assert sum(s.rows for s in request.segments) == request.row_count
    # every source row arrives once, in order, exactly as the golden row minus its empty values
    source = [row for batch in batches for row in batch["rows"]]
    assert len(sent) == len(source) == 5000
    for got, want in zip(sent, source, strict=True):
        assert got == {k: v for k, v in want.items() if v not in (None, "")}
    # segments add up to each message's row count
    per_message: dict[int, int] = {}
    for request in requests:
        for seg in request.segments:
            per_message[seg.offset] = per_message.get(seg.offset, 0) + seg.rows
    assert per_message == {i: len(b["rows"]) for i, b in enumerate(batches)}


def test_a_request_is_closed_when_the_next_row_would_not_fit() -> None:
    budget = 20_000
    requests, _ = _pack(RequestBuilder(max_request_bytes=budget), make_batches(400, 50))
    assert all(r.raw_bytes <= budget for r in requests)
    for closed, following in itertools.pairwise(requests):
        assert closed.raw_bytes + 1 + len(following.rows[0]) > budget  # closed only when the next row did not fit
    assert sum(r.row_count for r in requests) == 400


def test_empty_values_are_left_out_and_nothing_else() -> None:
    row = {"EventID": 4624, "Account": "", "Computer": "A", "CommandLine": None, "Level": "0"}
    data, truncated = serialise_row(row)
    assert orjson.loads(data) == {"EventID": 4624, "Computer": "A", "Level": "0"}
    assert truncated == 0


def test_values_that_look_like_empty_json_values_are_kept_as_they_are() -> None:
    row = {"CommandLine": 'cmd /c echo {"a":null,"b":""}', "EventData": ':null ":""', "Computer": "A", "Status": 0}
    data, truncated = serialise_row(row)
    assert orjson.loads(data) == row
    assert truncated == 0


@pytest.mark.parametrize("level", [1, 2, 3, 6, 9])
def test_every_gzip_level_gives_a_standard_gzip_body(level: int) -> None:
    (batch,) = make_batches(300, 300)
    builder = RequestBuilder()
    builder.add(0, 0, batch["computer"], batch["rows"])
    (request,) = builder.drain()
    ((_, wire),) = encode(request, level=level)
    assert gzip.decompress(wire) == request.json_body()


def test_values_over_the_field_limit_are_truncated_on_a_character_boundary() -> None:
    long_text = "é" * 40_000 + "x" * 10  # 80,010 bytes of UTF-8
    data, truncated = serialise_row({"EventData": long_text, "CommandLine": "short"}, max_field_bytes=65_536)
    value = orjson.loads(data)["EventData"]
    assert truncated == 1
    assert len(value.encode("utf-8")) <= 65_536
    assert value.endswith(TRUNCATED_MARK)
    assert long_text.startswith(value.removesuffix(TRUNCATED_MARK))
    assert orjson.loads(data)["CommandLine"] == "short"


def test_a_row_too_large_even_alone_is_rejected_with_a_reason() -> None:
    builder = RequestBuilder(max_request_bytes=4096)
    big = {"Computer": "A", "EventData": "x" * 3000, "CommandLine": "y" * 3000}
    packed = builder.add(0, 7, "A", [{"Computer": "A", "EventID": 1}, big, {"Computer": "A", "EventID": 2}])
    assert len(packed.rejected) == 1
    assert packed.rejected[0].segment.offset == 7 and packed.rejected[0].segment.rows == 1
    assert "row-too-large" in packed.rejected[0].reason
    (request,) = builder.drain()
    assert request.row_count == 2


def test_split_divides_rows_and_segments_exactly() -> None:
    request = Request()
    for offset, rows in ((10, 3), (11, 1), (12, 4)):
        for i in range(rows):
            request.add(1, offset, f'{{"o":{offset},"i":{i}}}'.encode())
    first, second = split_request(request)
    assert first.rows + second.rows == request.rows
    assert [(s.offset, s.rows) for s in first.segments] == [(10, 3), (11, 1)]
    assert [(s.offset, s.rows) for s in second.segments] == [(12, 4)]
    assert first.raw_bytes == len(first.json_body()) and second.raw_bytes == len(second.json_body())


def test_incompressible_bodies_are_split_until_the_gzip_fits() -> None:
    request = Request()
    for i in range(40):
        request.add(0, i, orjson.dumps({"EventData": os.urandom(1500).hex()}))
    parts = encode(request, max_wire_bytes=30_000)
    assert len(parts) > 1
    assert all(len(body) <= 30_000 for _, body in parts)
    assert [row for part, _ in parts for row in part.rows] == request.rows


def test_sharding_by_computer_keeps_each_host_on_one_shard() -> None:
    builder = RequestBuilder(max_request_bytes=50_000, shard_of=lambda c: int(c[5:7]) % 2)
    requests, _ = _pack(builder, make_batches(600, 20, computers=4))
    for request in requests:
        hosts = {orjson.loads(r)["Computer"] for r in request.rows}
        assert {int(h[5:7]) % 2 for h in hosts} == {request.shard}


@pytest.mark.parametrize("budget", [MAX_REQUEST_BYTES, 100_000])
def test_real_rows_compress_well_below_the_raw_budget(budget: int) -> None:
    requests, _ = _pack(RequestBuilder(max_request_bytes=budget), make_batches(3000, 100))
    for request in requests:
        ((_, wire),) = encode(request)
        assert len(wire) < request.raw_bytes / 3
