"""The native many-row INSERT (workspace._bulkinsert) against the pure-Python reference (executemany).

Both paths must store the same values with the same SQLite types, on real golden rows shaped by the bundled
data flow and on fuzzed values, refuse what they cannot bind in the same way, and leave no reference behind.
With ``SECSTREAM_REQUIRE_NATIVE_BULKINSERT=1`` (set by ``make test``) a missing extension is a failure, not a skip.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import GOLDEN
from workspace import bulkinsert
from workspace.bulkinsert import DISABLE_ENV, native_insert, python_insert
from workspace.dcr import DEFAULT_DCR_DIR, load_dcrs
from workspace.shaping import FlowShaper, format_datetime
from workspace.store import RequestOutcome, Store, open_reader

REQUIRED = os.environ.get("SECSTREAM_REQUIRE_NATIVE_BULKINSERT", "") == "1"
COLUMNS = ("t", "i", "r", "n")  # TEXT, INTEGER, REAL and no affinity: every conversion SQLite may apply
TABLE_DDL = "CREATE TABLE x (t TEXT, i INTEGER, r REAL, n)"


def require_native() -> None:
    if bulkinsert._bulkinsert is None:
        if REQUIRED:
            pytest.fail(f"SECSTREAM_REQUIRE_NATIVE_BULKINSERT=1 but the extension did not load: "
                        f"{bulkinsert.IMPORT_ERROR}")
        pytest.skip(f"workspace._bulkinsert is not built: {bulkinsert.IMPORT_ERROR}")


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(TABLE_DDL)
    return db


def insert_sql(width: int, rows: int, fixed: int) -> str:
    """The store's statement shape: constants ?1..?fixed repeated in every row, then each row's own values."""
    names = ", ".join(COLUMNS[:width] + COLUMNS[width:width + fixed])
    tail = [f"?{i + 1}" for i in range(fixed)]
    values = ", ".join("(" + ", ".join([f"?{fixed + r * width + j + 1}" for j in range(width)] + tail) + ")"
                       for r in range(rows))
    return f"INSERT INTO x ({names}) VALUES {values}"


def contents(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
    """Every stored value with its SQLite type; floats by their bits (NaN is stored as NULL by both paths)."""
    rows = db.execute("SELECT t, typeof(t), i, typeof(i), r, typeof(r), n, typeof(n) FROM x ORDER BY rowid")
    return [tuple(v.hex() if isinstance(v, float) else v for v in row) for row in rows]


def test_native_extension_loads_when_required() -> None:
    """``make test`` sets SECSTREAM_REQUIRE_NATIVE_BULKINSERT=1: this fails if the extension did not build or load."""
    if not REQUIRED:
        pytest.skip("SECSTREAM_REQUIRE_NATIVE_BULKINSERT is not set")
    assert bulkinsert.IMPORT_ERROR is None, bulkinsert.IMPORT_ERROR


def test_the_store_uses_the_native_path_unless_switched_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_native()
    store = Store(tmp_path / "on")
    assert store.native
    store.close()
    monkeypatch.setenv(DISABLE_ENV, "0")
    store = Store(tmp_path / "off")
    assert not store.native
    store.close()


def golden_batches() -> list[list[dict[str, Any]]]:
    received = datetime.now(UTC)
    batches = []
    for path in sorted(GOLDEN.rglob("*.jsonl")):
        rows = [{k: v for k, v in json.loads(line).items() if not k.startswith("_") or k == "_ResourceId"}
                for line in path.read_text().splitlines() if line.strip()]
        for i, row in enumerate(rows):  # half in the window (kept), half too old (replaced by the receive time)
            if i % 2:
                row["TimeGenerated"] = format_datetime(received)
        batches.append(rows)
    return batches


def test_golden_rows_are_stored_the_same_by_both_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real SecurityEvent rows through the bundled data flow into two stores: identical tables, value and type."""
    require_native()
    dcr = next(iter(load_dcrs(DEFAULT_DCR_DIR).values()))
    (flow,) = dcr.flows
    shaper = FlowShaper(flow, dcr.streams[flow.stream], resource_id="/subscriptions/x/resourceGroups/y")
    received = datetime.now(UTC)
    outcomes = []
    for i, rows in enumerate(golden_batches()):
        batch = shaper.shape(rows, received, f"request-{i}")
        outcomes.append(RequestOutcome(dcr.immutable_id, flow.stream, format_datetime(received), 204, [batch],
                                       records_received=len(rows)))
    assert sum(o.batches[0].rows for o in outcomes) > 1000

    dumps = []
    for name, switch in (("native", "1"), ("python", "0")):
        monkeypatch.setenv(DISABLE_ENV, switch)
        store = Store(tmp_path / name)
        assert store.native == (name == "native")
        store.ensure_table(flow.table)
        store.write_group(outcomes)
        store.close()
        reader = open_reader(tmp_path / name)
        columns = [r[1] for r in reader.execute("PRAGMA table_info(_store_SecurityEvent)")]
        select = ", ".join(f'"{c}", typeof("{c}")' for c in columns)
        dumps.append([tuple(r) for r in reader.execute(f"SELECT {select} FROM _store_SecurityEvent ORDER BY rowid")])
        reader.close()
    native_rows, python_rows = dumps
    assert len(native_rows) == sum(o.batches[0].rows for o in outcomes)
    assert native_rows == python_rows


values = st.one_of(
    st.none(),
    st.text(st.characters(codec="utf-8"), max_size=40),  # NUL, non-ASCII, astral characters
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),  # NaN and infinities too
    st.binary(max_size=20),
    st.booleans(),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(1, 4), per=st.integers(1, 5), chunks=st.integers(0, 4), fixed=st.integers(0, 2),
       data=st.data())
def test_fuzzed_values_are_stored_the_same_by_both_paths(tmp_path_factory: pytest.TempPathFactory, width: int,
                                                         per: int, chunks: int, fixed: int, data: Any) -> None:
    require_native()
    fixed = min(fixed, len(COLUMNS) - width)
    row_values = data.draw(st.lists(values, min_size=per * chunks * width, max_size=per * chunks * width))
    constants = data.draw(st.lists(values, min_size=fixed, max_size=fixed))
    base = tmp_path_factory.mktemp("fuzz")
    native_db, python_db = connect(base / "n.db"), connect(base / "p.db")
    native = native_insert(native_db, base / "n.db")
    assert native is not None
    sql = insert_sql(width, per, fixed)
    native(sql, constants, row_values, 0, len(row_values), per * width)
    python_insert(python_db)(sql, constants, row_values, 0, len(row_values), per * width)
    assert contents(native_db) == contents(python_db)
    assert len(contents(native_db)) == per * chunks
    native.close()


def test_a_slice_of_the_values_is_inserted_from_start_to_stop(tmp_path: Path) -> None:
    require_native()
    db = connect(tmp_path / "x.db")
    native = native_insert(db, tmp_path / "x.db")
    assert native is not None
    native(insert_sql(1, 2, 1), ["c"], ["a", "b", "c", "d", "e", "f"], 2, 6, 2)
    assert db.execute("SELECT t, i FROM x ORDER BY rowid").fetchall() == [("c", "c"), ("d", "c"), ("e", "c"),
                                                                          ("f", "c")]


@pytest.mark.parametrize(("value", "error"), [
    ([1], sqlite3.ProgrammingError),  # not a type sqlite3 binds
    (2**63, OverflowError),
    ("\ud800", UnicodeEncodeError),  # a lone surrogate has no UTF-8 form
])
def test_unbindable_values_are_refused_like_python_sqlite3(tmp_path: Path, value: Any,
                                                          error: type[Exception]) -> None:
    require_native()
    dbs = {"native": connect(tmp_path / "n.db"), "python": connect(tmp_path / "p.db")}
    native = native_insert(dbs["native"], tmp_path / "n.db")
    assert native is not None
    for name, insert in (("native", native), ("python", python_insert(dbs["python"]))):
        with pytest.raises(error):
            insert(insert_sql(2, 1, 0), [], ["ok", value], 0, 2, 2)
        insert(insert_sql(2, 1, 0), [], ["after", 1], 0, 2, 2)  # the statement is still usable
        assert dbs[name].execute("SELECT t, i FROM x").fetchall() == [("after", 1)]


def test_sql_and_constraint_errors_raise_sqlite3_exceptions(tmp_path: Path) -> None:
    require_native()
    db = connect(tmp_path / "x.db")
    db.execute("CREATE TABLE strict_x (a TEXT NOT NULL)")
    native = native_insert(db, tmp_path / "x.db")
    assert native is not None
    with pytest.raises(sqlite3.OperationalError, match="has no column named nope"):
        native("INSERT INTO x (nope) VALUES (?1)", [], [1], 0, 1, 1)
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
        native("INSERT INTO strict_x (a) VALUES (?1)", [], ["fine", None], 0, 2, 1)
    assert db.execute("SELECT a FROM strict_x").fetchall() == [("fine",)]  # autocommit: the first row stays
    with pytest.raises(sqlite3.ProgrammingError, match="Incorrect number of bindings"):
        native("INSERT INTO x (t) VALUES (?1)", [], ["a", "b"], 0, 2, 2)


def test_bad_arguments_and_foreign_handles_are_refused(tmp_path: Path) -> None:
    require_native()
    db = connect(tmp_path / "x.db")
    other = connect(tmp_path / "other.db")
    assert native_insert(db, tmp_path / "other.db") is None  # the handle names another file: never used
    native = native_insert(db, tmp_path / "x.db")
    assert native is not None
    for start, stop, step in ((0, 3, 2), (-1, 1, 1), (0, 5, 1), (0, 2, 0), (2, 0, 1)):
        with pytest.raises(ValueError, match="whole slices"):
            native(insert_sql(1, 1, 0), [], ["a", "b", "c"], start, stop, step)
    assert bulkinsert._bulkinsert is not None
    with pytest.raises(TypeError):
        bulkinsert._bulkinsert.Inserter(object(), sqlite3.Connection, "x", {})
    native.close()
    with pytest.raises(ValueError, match="closed"):
        native(insert_sql(1, 1, 0), [], ["a"], 0, 1, 1)
    other.close()
    with pytest.raises(ValueError, match="closed"):
        bulkinsert._bulkinsert.Inserter(other, sqlite3.Connection, "x", {})
    assert db.execute("SELECT count(*) FROM x").fetchone() == (0,)


def test_many_distinct_statements_stay_usable(tmp_path: Path) -> None:
    """More statements than the cache keeps: older ones are finalized and prepared again when needed."""
    require_native()
    db = connect(tmp_path / "x.db")
    native = native_insert(db, tmp_path / "x.db")
    assert native is not None
    for round_ in range(2):
        for rows in range(1, 301):
            native(insert_sql(1, rows, 0), [], [f"{round_}-{rows}"] * rows, 0, rows, rows)
    assert db.execute("SELECT count(*) FROM x").fetchone() == (2 * sum(range(1, 301)),)


def test_no_reference_is_leaked_or_kept(tmp_path: Path) -> None:
    require_native()
    db = connect(tmp_path / "x.db")
    native = native_insert(db, tmp_path / "x.db")
    assert native is not None
    text, number, constant = "a value" * 3, 10**12 + 7, "the constant" * 2
    row_values = [text, number, 1.5, None] * 64
    before = (sys.getrefcount(text), sys.getrefcount(number), sys.getrefcount(constant))
    for _ in range(50):
        native(insert_sql(4, 16, 0), [], row_values, 0, len(row_values), 64)
        native(insert_sql(3, 1, 1), [constant], row_values[:3], 0, 3, 3)
        with pytest.raises(sqlite3.ProgrammingError):
            native(insert_sql(2, 1, 0), [], [text, [number]], 0, 2, 2)
    assert (sys.getrefcount(text), sys.getrefcount(number), sys.getrefcount(constant)) == before
    assert db.execute("SELECT count(*), count(DISTINCT t) FROM x").fetchone() == (50 * 65, 1)  # 64 + 1 per pass
    assert math.isclose(db.execute("SELECT sum(r) FROM x").fetchone()[0], 50 * 65 * 1.5)
