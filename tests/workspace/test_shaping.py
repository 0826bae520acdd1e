"""Applying the bundled SecurityEvent data flow: projection, types, truncation, TimeGenerated, reserved columns."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import GOLDEN
from workspace.dcr import DEFAULT_DCR_DIR, load_dcrs
from workspace.shaping import (
    ORIGINAL_TIME_GENERATED,
    REQUEST_ID,
    TIME_RECEIVED,
    FlowShaper,
    ShapedBatch,
    canonical_datetimes,
    datetime_column,
    format_datetime,
    parse_datetime,
    truncate_utf8,
)

RECEIVED = datetime(2026, 11, 22, 12, 0, 0, 123456, tzinfo=UTC)
NOW = format_datetime(RECEIVED)


def shaper(max_field_bytes: int = 65_536) -> FlowShaper:
    dcr = next(iter(load_dcrs(DEFAULT_DCR_DIR).values()))
    (flow,) = dcr.flows
    return FlowShaper(flow, dcr.streams[flow.stream], max_field_bytes)


def stored(batch: ShapedBatch) -> list[dict[str, Any]]:
    """Every stored row as a dict, the request's constant columns included, column set by column set."""
    rows = []
    for columns, block in batch.groups.items():
        width = len(columns)
        for i in range(block.count):
            rows.append(dict(zip(columns, block.values[i * width:(i + 1) * width], strict=True)) | batch.constants)
    return rows


def shape(records: list[Any], **kw: Any) -> tuple[ShapedBatch, list[dict[str, Any]]]:
    batch = shaper(**kw).shape(records, RECEIVED, "req-1")
    return batch, stored(batch)


def test_golden_rows_keep_every_declared_value() -> None:
    """Real agent rows: every value of a declared column lands unchanged (times canonicalised)."""
    lines = (GOLDEN / "azure-sentinel" / "asim_userManagement_subset.jsonl").read_text().splitlines()
    golden = [{k: v for k, v in json.loads(line).items() if not k.startswith("_")} for line in lines]
    for row in golden:
        row["TimeGenerated"] = NOW
    for row in golden:
        batch, (out,) = shape([row])
        assert not batch.columns_dropped
        for name, value in row.items():
            if name in ("TenantId", "Type", "SourceSystem"):
                continue
            if name == "TimeCollected":
                assert out[name] == parse_datetime(value)
            else:
                assert out[name] == value, name


def test_undeclared_columns_and_wrong_types_are_dropped_and_counted() -> None:
    batch, (row,) = shape([{"TimeGenerated": NOW, "Computer": "h", "EventID": "4624", "eventid": 4624,
                            "Extra": 1, "LogonType": 3.5, "Level": 8, "MG": "not-a-guid", "Task": True}])
    assert batch.rows == 1
    assert dict(batch.columns_dropped) == {
        ("EventID", "not an int"): 1, ("eventid", "not declared in the stream"): 1,
        ("Extra", "not declared in the stream"): 1, ("LogonType", "not an int"): 1,
        ("Level", "not a string"): 1, ("MG", "not a string"): 1, ("Task", "not an int"): 1,
    }
    assert row["Computer"] == "h" and row["EventID"] is None and row["Level"] == ""
    assert row["MG"] == ""  # a dropped string/guid value reads as '' like any empty string


def test_only_bad_values_are_dropped_within_a_column() -> None:
    batch, rows = shape([{"TimeGenerated": NOW, "EventID": v} for v in (4624, "x", 2**31, None, 4625)])
    assert [r.get("EventID") for r in rows] == [4624, None, None, None, 4625]
    assert batch.columns_dropped[("EventID", "not an int")] == 2


def test_values_over_64kb_are_truncated_on_a_character_boundary() -> None:
    long_ascii = "A" * 70_000
    long_multibyte = "é" * 40_000  # 80,000 UTF-8 bytes
    batch, rows = shape([{"TimeGenerated": NOW, "EventData": long_ascii},
                         {"TimeGenerated": NOW, "EventData": long_multibyte},
                         {"TimeGenerated": NOW, "EventData": "B" * 65_536}])
    assert [len(r["EventData"].encode()) for r in rows] == [65_536, 65_536, 65_536]
    assert rows[1]["EventData"] == "é" * 32_768
    assert batch.values_truncated == 2


def test_truncate_utf8_never_splits_a_character() -> None:
    assert truncate_utf8("€€€", 7) == "€€"
    assert truncate_utf8("short", 7) is None


@pytest.mark.parametrize(("offset", "replaced"), [
    (timedelta(0), False), (-timedelta(days=1, hours=23), False), (timedelta(hours=23), False),
    (-timedelta(days=2, seconds=1), True), (timedelta(days=1, seconds=1), True), (-timedelta(days=400), True),
])
def test_time_generated_outside_the_window_becomes_the_receive_time(offset: timedelta, replaced: bool) -> None:
    sent = format_datetime(RECEIVED + offset)
    batch, (row,) = shape([{"TimeGenerated": sent, "Computer": "h"}])
    assert row["TimeGenerated"] == (NOW if replaced else sent)
    assert row.get(ORIGINAL_TIME_GENERATED) == (sent if replaced else None)
    assert batch.time_generated_replaced == int(replaced)


def test_missing_or_invalid_time_generated_becomes_the_receive_time() -> None:
    batch, rows = shape([{"Computer": "a"}, {"Computer": "b", "TimeGenerated": "yesterday"}])
    assert [r["TimeGenerated"] for r in rows] == [NOW, NOW]
    assert batch.time_generated_replaced == 2
    assert batch.columns_dropped[("TimeGenerated", "not a datetime")] == 1


def test_reserved_columns_are_set_by_the_server() -> None:
    batch, (row,) = shape([{"TimeGenerated": NOW, "TenantId": "mine", "Type": "Other", "_ResourceId": "/x",
                            "SourceSystem": "OpsManager", "_BilledSize": 1.0}])
    assert not batch.columns_dropped  # overwritten silently, not counted as drops
    # Type, SourceSystem and _IsBillable are the table's column defaults (see test_sdk), never client values.
    assert {"Type", "SourceSystem", "_ResourceId", "_BilledSize"}.isdisjoint(row)
    assert row["TenantId"] != "mine" and len(row["TenantId"]) == 36
    assert row[TIME_RECEIVED] == NOW and row[REQUEST_ID] == "req-1"


def test_records_that_are_not_objects_are_dropped() -> None:
    batch, rows = shape([1, "x", [1], {"TimeGenerated": NOW}])
    assert batch.rows_dropped == 3 and len(rows) == 1


def test_null_values_are_absent() -> None:
    batch, (row,) = shape([{"TimeGenerated": NOW, "Computer": None, "EventID": None}])
    assert not batch.columns_dropped and "Computer" not in row and "EventID" not in row


@pytest.mark.parametrize(("text", "canonical"), [
    ("2023-04-10T07:47:01.9710164Z", "2023-04-10T07:47:01.9710164Z"),
    ("2023-04-10T07:47:01Z", "2023-04-10T07:47:01.0000000Z"),
    ("2023-04-10T07:47:01.97Z", "2023-04-10T07:47:01.9700000Z"),
    ("2023-04-10 07:47:01", "2023-04-10T07:47:01.0000000Z"),
    ("2023-04-10T09:47:01.5+02:00", "2023-04-10T07:47:01.5000000Z"),
    ("2023-02-30T00:00:00Z", None), ("2023-04-10T25:00:00Z", None), ("nope", None),
])
def test_datetime_forms(text: str, canonical: str | None) -> None:
    assert parse_datetime(text) == canonical


@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)))
def test_fast_column_check_agrees_with_per_value_parsing(value: datetime) -> None:
    text = format_datetime(value)
    assert parse_datetime(text) == text
    assert canonical_datetimes([text, text])


def test_fast_column_check_rejects_impossible_days() -> None:
    assert not canonical_datetimes(["2023-02-29T00:00:00.0000000Z"])
    assert not canonical_datetimes(["2023-04-10T07:47:01.971Z"])


@pytest.mark.parametrize(("values", "expected"), [
    (["2023-04-10T07:47:01.971Z", "2023-04-10T07:48:02.005Z"],
     ["2023-04-10T07:47:01.9710000Z", "2023-04-10T07:48:02.0050000Z"]),
    (["2019-02-11T08:40:40Z", "2019-02-12T00:00:00Z"],
     ["2019-02-11T08:40:40.0000000Z", "2019-02-12T00:00:00.0000000Z"]),
    (["2019-02-11T08:40:40.123456Z"], ["2019-02-11T08:40:40.1234560Z"]),
    (["2023-04-10T07:47:01.971Z", "2023-04-10T07:47:01Z"], None),  # mixed forms: per value
    (["2023-04-10T07:47:01.971Z", "2023-02-30T00:00:00Z"], None),  # an impossible day: per value
    (["2023-04-10T07:47:01.971Z", "2023-04-10 07:47:01"], None),  # another form: per value
    (["2023-04-10T07:47:01.97101645Z"], None),  # more than 7 digits: per value
])
def test_whole_column_datetime_conversion(values: list[str], expected: list[str] | None) -> None:
    assert datetime_column(values) == expected
    # and whichever path a column takes, each stored value is what parsing it alone gives
    _, rows = shape([{"TimeGenerated": NOW, "TimeCollected": v} for v in values])
    assert [r.get("TimeCollected") for r in rows] == [parse_datetime(v) for v in values]


@given(st.lists(st.tuples(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)),
                          st.integers(min_value=0, max_value=7)), min_size=1, max_size=20))
def test_whole_column_datetime_conversion_agrees_with_per_value_parsing(items: list[tuple[datetime, int]]) -> None:
    values = []
    for value, digits in items:
        fraction = f"{value.microsecond:06d}0"[:digits]
        values.append(value.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if digits else "") + "Z")
    assert datetime_column(values) in (None, [parse_datetime(v) for v in values])
    same_form = values[:1] * 3
    assert datetime_column(same_form) == [parse_datetime(v) for v in same_form]


def test_guid_column_fast_path_and_per_value_path_agree() -> None:
    upper = "29ACC230-2F13-49DB-9EF2-C9B20229A10D"
    batch, rows = shape([{"TimeGenerated": NOW, "MG": upper}, {"TimeGenerated": NOW, "MG": "{" + upper + "}"}])
    assert [r["MG"] for r in rows] == [upper.lower()] * 2
    batch, rows = shape([{"TimeGenerated": NOW, "MG": upper.lower()}] * 3)
    assert [r["MG"] for r in rows] == [upper.lower()] * 3 and not batch.columns_dropped
