"""The column and Activity catalogs against the reference data, and the generated SecurityEvent schema."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemas.avsc import message_schema, read_avsc
from schemas.catalog import ACTIVITY_DESCRIPTIONS, COLUMN_TYPES, COLUMNS, activity
from schemas.codec import decode_security_batch, encode_security_batch
from schemas.generate import main as generate_main
from tests.conftest import GOLDEN, REFERENCE

AVRO_TYPE = {"string": "string", "int": "int", "real": "double", "datetime": "string", "guid": "string"}


def reference_columns() -> list[dict[str, Any]]:
    return list(json.loads((REFERENCE / "securityevent_columns.json").read_text(encoding="utf-8")))


def test_columns_are_the_reference_columns_in_order() -> None:
    ref = reference_columns()
    assert len(COLUMNS) == len(ref) == 237
    assert [(c["name"], c["type"]) for c in ref] == COLUMNS
    assert {t for _, t in COLUMNS} == {"string", "int", "real", "datetime", "guid"}


def test_security_event_avsc_matches_the_reference_columns() -> None:
    fields = read_avsc("SecurityEvent", 1)["fields"]
    assert [(f["name"], f["type"]) for f in fields] == [
        (c["name"], ["null", AVRO_TYPE[c["type"]]]) for c in reference_columns()
    ]
    assert all("default" in f and f["default"] is None for f in fields)
    batch = message_schema("SecurityEventBatch").definition
    assert [f["name"] for f in batch["fields"]] == ["computer", "batch_id", "source_batch_id", "rows"]


def test_generated_schemas_are_up_to_date() -> None:
    assert generate_main(["--check"]) == 0


def golden_rows(relative: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (GOLDEN / relative).read_text(encoding="utf-8").splitlines()]


# Golden files that are table rows, not query projections with computed columns (see its MANIFEST.md).
TABLE_ROW_FILES = ["msticpy/all_events_df.jsonl", "otrf/Log4Shell_securityauditing_java_serialized_object.jsonl",
                   "azure-sentinel/asim_userManagement_subset.jsonl", "azure-sentinel/asim_authentication_subset.jsonl"]


@pytest.mark.parametrize("relative", TABLE_ROW_FILES)
def test_golden_rows_use_only_catalog_columns(relative: str) -> None:
    rows = golden_rows(relative)
    assert rows
    for row in rows:
        unknown = [name for name in row if name not in COLUMN_TYPES and not name.startswith("_")]
        assert not unknown


def test_full_width_export_has_catalog_types_and_round_trips() -> None:
    """The workspace export with every column (nulls kept) has the catalog's types and survives the codec."""
    python_type = {"string": str, "int": int, "real": float, "datetime": str, "guid": str}
    rows = golden_rows("msticpy/all_events_df.jsonl")
    for row in rows:
        assert len(row) >= 220
        for name, value in row.items():
            if value is not None:
                assert isinstance(value, python_type[COLUMN_TYPES[name]]), (name, value)
    batch = {"computer": rows[0]["Computer"], "batch_id": "b", "source_batch_id": "s", "rows": rows}
    decoded = decode_security_batch(encode_security_batch(batch))
    assert decoded["rows"] == [{k: v for k, v in row.items() if v is not None} for row in rows]


def reference_activities() -> dict[str, Any]:
    return dict(json.loads((REFERENCE / "activity_catalog_sources.json").read_text(encoding="utf-8"))["ids"])


def test_activity_matches_reference_for_every_researched_id() -> None:
    ids = reference_activities()
    assert len(ids) >= 400
    for event_id, entry in ids.items():
        assert activity(int(event_id)) == entry["activity"], event_id


def test_activity_catalog_is_the_reference_file() -> None:
    ref = json.loads((REFERENCE / "activity_catalog.json").read_text(encoding="utf-8"))
    assert {int(k): v for k, v in ref.items()} == ACTIVITY_DESCRIPTIONS


@pytest.mark.parametrize(
    ("event_id", "expected"),
    [(4624, "4624 - An account was successfully logged on."), (412, "412"), (4763, "4763"), (65535, "65535")],
)
def test_activity_known_and_unknown(event_id: int, expected: str) -> None:
    assert activity(event_id) == expected


def test_activity_agrees_with_rows_the_agents_wrote() -> None:
    """Where a golden row's Activity text equals the catalog's, both sources agree; count the matches."""
    agree = disagree = 0
    for path in GOLDEN.rglob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if "Activity" in row and isinstance(row.get("EventID"), int):
                if activity(row["EventID"]) == row["Activity"]:
                    agree += 1
                else:
                    disagree += 1
    assert agree > 0
    assert agree >= disagree
