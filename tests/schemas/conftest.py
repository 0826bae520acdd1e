"""Hypothesis strategies and stored payloads for the schema tests."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from fastavro import schemaless_writer
from hypothesis import strategies as st

from schemas.catalog import COLUMNS

DATA = Path(__file__).resolve().parent / "data"

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
TEXT = st.text()  # any Unicode scalar value (no lone surrogates: UTF-8 cannot carry them)
OPT_TEXT = st.none() | TEXT
OPT_INT32 = st.none() | INT32
OPT_INT64 = st.none() | INT64

event_data_item = st.fixed_dictionaries({"name": OPT_TEXT, "value": OPT_TEXT})

provenance = st.fixed_dictionaries({
    "source_format": st.sampled_from(["evtx", "xml", "winlogbeat", "nxlog", "otrf", "wineventlog"]),
    "agent_id": TEXT,
    "collector_id": OPT_TEXT,
    "read_time_us": INT64,
    "source_ref": OPT_TEXT,
})

raw_event = st.fixed_dictionaries({
    "provider_name": TEXT,
    "provider_guid": OPT_TEXT,
    "event_source_name": OPT_TEXT,
    "event_id": INT32,
    "qualifiers": OPT_INT32,
    "version": OPT_INT32,
    "level": OPT_INT32,
    "task": OPT_INT32,
    "opcode": OPT_INT32,
    "keywords": OPT_TEXT,
    "time_created": INT64,  # 100 ns ticks: every long must survive, including before 1970
    "event_record_id": OPT_INT64,
    "activity_id": OPT_TEXT,
    "related_activity_id": OPT_TEXT,
    "process_id": OPT_INT64,
    "thread_id": OPT_INT64,
    "channel": TEXT,
    "computer": TEXT,
    "user_id": OPT_TEXT,
    "event_data": st.lists(event_data_item, max_size=30),
    "user_data_xml": OPT_TEXT,
    "rendered_message": OPT_TEXT,
    "provenance": provenance,
})

raw_batch = st.fixed_dictionaries({
    "host": TEXT,
    "batch_id": TEXT,
    "sequence": INT64,
    "agent_id": TEXT,
    "send_time_us": INT64,
    "events": st.lists(raw_event, max_size=8),
})


def _column_value(kind: str) -> st.SearchStrategy[Any]:
    if kind == "int":
        return INT32
    if kind == "real":
        return st.floats(allow_nan=False)
    if kind == "guid":
        return st.uuids().map(str)
    if kind == "datetime":
        return st.datetimes().map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z")
    return TEXT


security_row = st.fixed_dictionaries(
    {}, optional={name: st.none() | _column_value(kind) for name, kind in COLUMNS}
)

security_batch = st.fixed_dictionaries({
    "computer": TEXT,
    "batch_id": TEXT,
    "source_batch_id": TEXT,
    "rows": st.lists(security_row, max_size=6),
})


# A record schema with every construct the engines cover, including those the batch schemas lack.
EVERYTHING: dict[str, Any] = {
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

everything_record = st.fixed_dictionaries({
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


def fastavro_bytes(parsed_schema: Any, value: Any) -> bytes:
    """What fastavro writes for ``value``: the bytes every engine must match."""
    out = io.BytesIO()
    schemaless_writer(out, parsed_schema, value)
    return out.getvalue()


def stored(name: str) -> tuple[bytes, dict[str, Any]]:
    """A stored payload written by an earlier schema version and the batch it holds."""
    expected = json.loads((DATA / f"{name}.json").read_text(encoding="utf-8"))
    return (DATA / f"{name}.avro").read_bytes(), expected
