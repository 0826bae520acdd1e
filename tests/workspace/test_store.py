"""The SQLite store: typed tables behind views, schema changes, and what readers see."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from workspace.dcr import Column, Table, load_table
from workspace.shaping import ShapedBatch
from workspace.store import RequestOutcome, Store, open_reader, run_query

TABLE = Table("App_CL", (Column("TimeGenerated", "datetime"), Column("Msg", "string"), Column("N", "int"),
                         Column("Type", "string")))


def write(store: Store, table: str, rows: list[dict[str, object]]) -> None:
    batch = ShapedBatch(table=table)
    for row in rows:
        batch.groups.setdefault(tuple(row), []).append(tuple(row.values()))
    now = datetime.now(UTC).isoformat()
    store.write(RequestOutcome("dcr-x", "Custom-App", now, 204, [batch], records_received=len(rows)))


def test_missing_strings_read_as_empty_and_other_types_as_null(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure_table(TABLE)
    write(store, "App_CL", [{"TimeGenerated": "2026-01-01T00:00:00.0000000Z"}])
    columns, rows = run_query(open_reader(tmp_path), "SELECT Msg, N, Type, _RequestId FROM App_CL")
    assert rows == [("", None, "App_CL", "")]
    assert columns == ["Msg", "N", "Type", "_RequestId"]


def test_a_changed_table_gains_columns_and_keeps_rows(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure_table(TABLE)
    write(store, "App_CL", [{"Msg": "before"}])
    wider = Table("App_CL", (*TABLE.columns, Column("Extra", "string")))
    store.ensure_table(wider)
    write(store, "App_CL", [{"Msg": "after", "Extra": "x"}])
    _, rows = run_query(open_reader(tmp_path), "SELECT Msg, Extra FROM App_CL ORDER BY Msg DESC")
    assert rows == [("before", ""), ("after", "x")]


def test_a_store_from_before_the_views_is_migrated(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "workspace.db")
    db.execute("CREATE TABLE SecurityEvent (TimeGenerated TEXT, Computer TEXT NOT NULL DEFAULT '')")
    db.execute("INSERT INTO SecurityEvent (TimeGenerated, Computer) VALUES ('2026-01-01T00:00:00.0000000Z', 'old')")
    db.commit()
    db.close()
    store = Store(tmp_path)
    store.ensure_table(load_table("SecurityEvent"))
    write(store, "SecurityEvent", [{"Computer": "new", "EventID": 1}])
    _, rows = run_query(open_reader(tmp_path), "SELECT Computer, EventID, Type FROM SecurityEvent ORDER BY rowid")
    assert rows == [("old", None, "SecurityEvent"), ("new", 1, "SecurityEvent")]


def test_readers_cannot_write(tmp_path: Path) -> None:
    Store(tmp_path).ensure_table(TABLE)
    reader = open_reader(tmp_path)
    try:
        reader.execute("DELETE FROM _store_App_CL")
    except sqlite3.OperationalError as exc:
        assert "readonly" in str(exc)
    else:
        raise AssertionError("a reader connection could delete rows")
