"""The SecurityEvent column catalog and the EventID -> Activity catalog.

Both are copies of researched reference data kept in ``schemas/data/`` (provenance in docs/schemas.md):
``securityevent_columns.json`` (the 237 columns of the Log Analytics SecurityEvent table, in workspace order, with
their types) and ``activity_catalog.json`` (EventID -> the text after "<EventID> - " in the Activity column).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

DATA_DIR = Path(__file__).resolve().parent / "data"

ColumnType = Literal["string", "int", "long", "real", "bool", "datetime", "guid"]


def _load(name: str) -> Any:
    return json.loads((DATA_DIR / name).read_text(encoding="utf-8"))


_COLUMN_RECORDS: list[dict[str, object]] = list(_load("securityevent_columns.json"))
COLUMNS: list[tuple[str, str]] = [(str(c["name"]), str(c["type"])) for c in _COLUMN_RECORDS]
COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in COLUMNS)
COLUMN_TYPES: dict[str, str] = dict(COLUMNS)
COLUMN_DESCRIPTIONS: dict[str, str] = {str(c["name"]): str(c.get("description") or "") for c in _COLUMN_RECORDS}


def columns_of_type(kind: str) -> tuple[str, ...]:
    """Column names of workspace type ``kind`` (string, int, real, datetime, guid), in workspace order."""
    return tuple(name for name, column_type in COLUMNS if column_type == kind)


STRING_COLUMNS = columns_of_type("string")
INT_COLUMNS = columns_of_type("int")
REAL_COLUMNS = columns_of_type("real")
DATETIME_COLUMNS = columns_of_type("datetime")
GUID_COLUMNS = columns_of_type("guid")

ACTIVITY_DESCRIPTIONS: dict[int, str] = {
    int(event_id): str(text) for event_id, text in _load("activity_catalog.json").items()
}


def activity(event_id: int) -> str:
    """The Activity column for ``event_id``: "4624 - An account was successfully logged on." or the bare id."""
    description = ACTIVITY_DESCRIPTIONS.get(event_id)
    return f"{event_id} - {description}" if description else str(event_id)
