"""The SQLite store: typed tables behind views, schema changes, group commits, and what readers see."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from workspace.dcr import Column, Table, load_table
from workspace.shaping import ShapedBatch
from workspace.store import (
    CHECKPOINT_BYTES,
    PAGE_SIZE,
    ROWS_PER_INSERT,
    RequestOutcome,
    Store,
    open_reader,
    run_query,
)

TABLE = Table("App_CL", (Column("TimeGenerated", "datetime"), Column("Msg", "string"), Column("N", "int"),
                         Column("Type", "string")))


def write(store: Store, table: str, rows: list[dict[str, object]]) -> None:
    batch = ShapedBatch(table=table)
    for row in rows:
        batch.add_rows(tuple(row), [tuple(row.values())])
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


def outcome(table: str, rows: list[dict[str, object]], request_id: str) -> RequestOutcome:
    batch = ShapedBatch(table=table, constants={"_RequestId": request_id})  # as the shaper stamps it
    for row in rows:
        batch.add_rows(tuple(row), [tuple(row.values())])
    batch.rows = len(rows)
    return RequestOutcome("dcr-x", "Custom-App", datetime.now(UTC).isoformat(), 204, [batch],
                          records_received=len(rows))


def test_rows_keep_their_order_and_values_across_multi_row_inserts(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure_table(TABLE)
    count = 3 * ROWS_PER_INSERT + 5  # whole multi-row statements plus a remainder
    rows: list[dict[str, object]] = [{"Msg": f"m{i}", "N": i} for i in range(count)]
    rows[7] = {"Msg": "only a message"}  # another column set in the middle
    store.write(outcome("App_CL", rows, "r1"))
    _, stored = run_query(open_reader(tmp_path), "SELECT Msg, N FROM App_CL ORDER BY rowid")
    by_column_set = [r for r in rows if "N" in r] + [rows[7]]  # groups are written one column set at a time
    assert stored == [(r["Msg"], r.get("N")) for r in by_column_set]


@pytest.mark.parametrize("limit", [5, 7])  # 2 columns per row + 1 constant: two rows per statement; three
def test_multi_row_inserts_stay_within_the_bound_parameter_limit(tmp_path: Path, limit: int) -> None:
    store = Store(tmp_path)
    store.ensure_table(TABLE)
    store.db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)  # as in SQLite before 3.32 (999), but lower
    rows: list[dict[str, object]] = [{"Msg": f"m{i}", "N": i} for i in range(ROWS_PER_INSERT + 3)]
    store.write(outcome("App_CL", rows, "r1"))  # 2 columns each, plus _RequestId once per statement
    _, stored = run_query(open_reader(tmp_path), "SELECT Msg, N FROM App_CL ORDER BY rowid")
    assert stored == [(r["Msg"], r["N"]) for r in rows]


def test_a_failing_request_in_a_group_is_rolled_back_alone(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure_table(TABLE)
    broken = outcome("App_CL", [{"Msg": "partial"}] * (ROWS_PER_INSERT + 1), "bad")
    broken.batches[0].add_rows(("Msg", "NoSuchColumn"), [("x", 1)])  # written after the valid rows, then fails
    results = store.write_group([outcome("App_CL", [{"Msg": "a"}] * 3, "good-1"), broken,
                                 outcome("App_CL", [{"Msg": "c"}] * 2, "good-2")])
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], sqlite3.OperationalError) and "NoSuchColumn" in str(results[1])
    reader = open_reader(tmp_path)
    _, stored = run_query(reader, "SELECT _RequestId, count(*) FROM App_CL GROUP BY 1 ORDER BY 1")
    assert stored == [("good-1", 3), ("good-2", 2)]  # nothing of the failed request, not even its valid rows
    _, metrics = run_query(reader, "SELECT Value FROM DCRMetrics WHERE Metric = 'rows_received'")
    assert metrics == [(5,)]


@pytest.mark.parametrize("constants", [{}, {"_RequestId": "r9", "Msg": "same"}])
def test_rows_with_no_column_of_their_own_are_stored(tmp_path: Path, constants: dict[str, object]) -> None:
    """A record whose every value was dropped is still a row: its constants only, or no value at all."""
    store = Store(tmp_path)
    store.ensure_table(TABLE)
    batch = ShapedBatch(table="App_CL", constants=constants, rows=3)
    batch.add_rows((), [(), (), ()])
    store.write(RequestOutcome("dcr-x", "Custom-App", datetime.now(UTC).isoformat(), 204, [batch]))
    _, rows = run_query(open_reader(tmp_path), "SELECT _RequestId, Msg, N FROM App_CL")
    assert rows == [(constants.get("_RequestId", ""), constants.get("Msg", ""), None)] * 3


def test_a_single_write_raises_its_failure_and_stores_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure_table(TABLE)
    broken = outcome("App_CL", [{"Msg": "partial"}], "bad")
    broken.batches[0].add_rows(("NoSuchColumn",), [(1,)])
    with pytest.raises(sqlite3.OperationalError):
        store.write(broken)
    assert run_query(open_reader(tmp_path), "SELECT count(*) FROM App_CL")[1] == [(0,)]
    store.write(outcome("App_CL", [{"Msg": "after"}], "next"))  # the store is usable afterwards
    assert run_query(open_reader(tmp_path), "SELECT count(*) FROM App_CL")[1] == [(1,)]


def test_a_new_store_uses_large_pages_and_an_existing_one_keeps_its_own(tmp_path: Path) -> None:
    fresh = Store(tmp_path / "fresh")
    assert fresh.db.execute("PRAGMA page_size").fetchone() == (PAGE_SIZE,)
    assert fresh.db.execute("PRAGMA wal_autocheckpoint").fetchone() == (CHECKPOINT_BYTES // PAGE_SIZE,)
    (tmp_path / "old").mkdir()
    db = sqlite3.connect(tmp_path / "old" / "workspace.db")
    db.execute("CREATE TABLE kept (x)")
    db.commit()
    db.close()
    old = Store(tmp_path / "old")
    old.ensure_table(TABLE)
    assert old.db.execute("PRAGMA page_size").fetchone() == (4096,)
    assert old.db.execute("PRAGMA wal_autocheckpoint").fetchone() == (CHECKPOINT_BYTES // 4096,)
    write(old, "App_CL", [{"Msg": "fine"}])
    assert run_query(open_reader(tmp_path / "old"), "SELECT Msg FROM App_CL")[1] == [("fine",)]
