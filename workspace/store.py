"""The workspace's tables in SQLite: one typed table per output stream, plus DCRLogErrors and DCR metrics.

WAL mode. Requests are committed in groups (``write_group``), one savepoint each; a 204 is sent only after
the transaction holding the request's rows is committed, so anything the client saw accepted survives a
restart. ``synchronous=NORMAL`` keeps commits durable across a process crash (not across power loss), which
is what an emulator needs.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workspace.bulkinsert import Insert, native_insert, python_insert
from workspace.dcr import Column, Table
from workspace.errors import ApiError
from workspace.paths import DB_NAME
from workspace.shaping import EXTRA_COLUMNS, RowBlock, ShapedBatch, platform_defaults

_SQL_TYPES = {"string": "TEXT", "guid": "TEXT", "datetime": "TEXT", "dynamic": "TEXT",
              "int": "INTEGER", "long": "INTEGER", "boolean": "INTEGER", "real": "REAL"}
PAGE_SIZE = 65_536
CHECKPOINT_BYTES = 40 * 1024 * 1024
ROWS_PER_INSERT = 16  # measured: ~15% fewer write instructions per row than one row per execution
ERRORS_TABLE = "DCRLogErrors"
METRICS_TABLE = "DCRMetrics"
_META_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {ERRORS_TABLE} (
        TimeGenerated TEXT NOT NULL, DcrImmutableId TEXT NOT NULL, InputStreamId TEXT NOT NULL,
        OperationName TEXT NOT NULL, StatusCode INTEGER NOT NULL, Code TEXT NOT NULL DEFAULT '',
        Message TEXT NOT NULL, ClientRequestId TEXT NOT NULL DEFAULT '')""",
    f"""CREATE TABLE IF NOT EXISTS {METRICS_TABLE} (
        DcrImmutableId TEXT NOT NULL, InputStreamId TEXT NOT NULL, Metric TEXT NOT NULL,
        Value INTEGER NOT NULL, LastUpdated TEXT NOT NULL,
        PRIMARY KEY (DcrImmutableId, InputStreamId, Metric))""",
)


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def storage_table(table: str) -> str:
    """The physical table behind the ``table`` view."""
    return f"_store_{table}"


def column_ddl(c: Column) -> str:
    return f"{quote(c.name)} {_SQL_TYPES[c.type]}"


def view_ddl(table: Table) -> str:
    """``table`` as users see it: Kusto strings are never null, so a string left out reads as '' (or the
    platform's value for Type/SourceSystem/_IsBillable). Nulls are stored, which keeps inserts ~1/3 cheaper
    than NOT NULL DEFAULT columns on a 240-column table."""
    defaults = platform_defaults(table)
    select = []
    for c in (*table.columns, *EXTRA_COLUMNS):
        if c.type in ("string", "guid"):
            select.append(f"coalesce({quote(c.name)}, {literal(defaults.get(c.name, ''))}) AS {quote(c.name)}")
        else:
            select.append(quote(c.name))
    return f"CREATE VIEW {quote(table.name)} AS SELECT {', '.join(select)} FROM {quote(storage_table(table.name))}"


@dataclass
class ErrorRecord:
    """One DCRLogErrors row (OperationName is Ingestion for rejected calls, Transformation for drops)."""

    dcr: str
    stream: str
    operation: str
    status: int
    code: str
    message: str
    client_request_id: str


@dataclass
class RequestOutcome:
    """Everything one request changes, written in one transaction."""

    dcr: str
    stream: str
    time: str
    status: int
    batches: list[ShapedBatch] = field(default_factory=list)
    errors: list[ErrorRecord] = field(default_factory=list)
    bytes_received: int = 0
    records_received: int = 0
    rejected: ApiError | None = None  # the error answered instead of a 204 (its DCRLogErrors row is in errors)

    def metrics(self) -> dict[str, int]:
        counts = {f"requests.{self.status}": 1, "bytes_received": self.bytes_received,
                  "rows_received": self.records_received}
        for b in self.batches:
            counts["rows_dropped"] = counts.get("rows_dropped", 0) + b.rows_dropped
            counts["columns_dropped"] = counts.get("columns_dropped", 0) + sum(b.columns_dropped.values())
            counts["values_truncated"] = counts.get("values_truncated", 0) + b.values_truncated
            counts["time_generated_replaced"] = (counts.get("time_generated_replaced", 0)
                                                 + b.time_generated_replaced)
            counts[f"rows_stored.{b.table}"] = counts.get(f"rows_stored.{b.table}", 0) + b.rows
        return {k: v for k, v in counts.items() if v}


class Store:
    """The single writer. Readers (CLI, tests) open their own read-only connections: see ``open_reader``."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / DB_NAME
        # Room for the INSERT statements of many column sets (each one-row and multi-row) without re-preparing.
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, cached_statements=256)
        # A new store gets 64 KiB pages: ~13x fewer WAL writes and checkpoint reads/writes (system calls) than 4 KiB
        # for the same rows. No effect on an existing store (its page size is fixed once it has data).
        self.db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        # Checkpoint (copy the WAL into the database, with an fsync) every ~40 MB instead of every 1000 pages.
        (page_size,) = self.db.execute("PRAGMA page_size").fetchone()
        self.db.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_BYTES // page_size}")
        for ddl in _META_DDL:
            self.db.execute(ddl)
        self._insert_sql: dict[tuple[str, tuple[str, ...], tuple[str, ...], int], str] = {}
        self._native = native_insert(self.db, self.path)
        self._insert_many: Insert = self._native or python_insert(self.db)

    def ensure_table(self, table: Table) -> None:
        """Create the table (a typed storage table and its view), or add the columns a changed definition
        introduced; existing data stays."""
        store = storage_table(table.name)
        kind = self.db.execute("SELECT type FROM sqlite_master WHERE name = ?", (table.name,)).fetchone()
        if kind == ("table",):  # a store written before the view existed: keep its rows
            self.db.execute(f"ALTER TABLE {quote(table.name)} RENAME TO {quote(store)}")
        existing = {r[1] for r in self.db.execute(f"PRAGMA table_info({quote(store)})")}
        wanted = [*table.columns, *EXTRA_COLUMNS]
        if not existing:
            self.db.execute(f"CREATE TABLE {quote(store)} ({', '.join(column_ddl(c) for c in wanted)})")
        for c in wanted:
            if existing and c.name not in existing:
                self.db.execute(f"ALTER TABLE {quote(store)} ADD COLUMN {column_ddl(c)}")
        self.db.execute(f"DROP VIEW IF EXISTS {quote(table.name)}")
        self.db.execute(view_ddl(table))

    def _insert(self, table: str, columns: tuple[str, ...], constants: tuple[str, ...], rows: int) -> str:
        """``INSERT`` of ``rows`` rows at once (one statement execution instead of ``rows``). The ``constants``
        columns take the same value on every row: bound once per execution, before the rows' own values."""
        sql = self._insert_sql.get((table, columns, constants, rows))
        if sql is None:
            target = f"{quote(storage_table(table))} ({', '.join(quote(c) for c in (*columns, *constants))})"
            # Numbered parameters: ?1.. are the constants, named again in every row; then each row's own values.
            fixed = [f"?{i + 1}" for i in range(len(constants))]
            width, first = len(columns), len(constants) + 1
            values = ", ".join(f"({', '.join([*(f'?{first + r * width + j}' for j in range(width)), *fixed])})"
                               for r in range(rows))
            sql = f"INSERT INTO {target} VALUES {values}"
            self._insert_sql[(table, columns, constants, rows)] = sql
        return sql

    def _insert_rows(self, table: str, columns: tuple[str, ...], block: RowBlock, constants: dict[str, Any]) -> None:
        """Rows in their order, ``ROWS_PER_INSERT`` per statement execution: each execution has a fixed cost
        (reset, halt, per-step bookkeeping) that a 240-column table makes worth sharing."""
        names, fixed = tuple(constants), list(constants.values())
        if not columns and not names:
            self.db.executemany(f"INSERT INTO {quote(storage_table(table))} DEFAULT VALUES", [()] * block.count)
            return
        if not columns:
            self.db.executemany(self._insert(table, columns, names, 1), [fixed] * block.count)
            return
        width, values = len(columns), block.values
        # Bounded by the connection's limit on bound parameters (999 in SQLite before 3.32).
        per = min(ROWS_PER_INSERT, (self.db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) - len(names)) // width)
        whole = block.count - block.count % per if per > 1 else 0
        if whole:
            self._insert_many(self._insert(table, columns, names, per), fixed, values, 0, whole * width, per * width)
        if whole < block.count:
            self._insert_many(self._insert(table, columns, names, 1), fixed, values, whole * width, len(values),
                              width)

    def write(self, outcome: RequestOutcome) -> None:
        """One request in its own transaction."""
        (failure,) = self.write_group([outcome])
        if failure is not None:
            raise failure

    def write_group(self, outcomes: Sequence[RequestOutcome]) -> list[Exception | None]:
        """Several requests in one transaction (group commit), each in its own savepoint: a request whose rows
        cannot be written is rolled back alone and its error returned in its place; the others are committed.
        Raises (with nothing stored) only when the transaction itself cannot be committed."""
        db = self.db
        failures: list[Exception | None] = []
        db.execute("BEGIN")
        try:
            for outcome in outcomes:
                db.execute("SAVEPOINT request")
                try:
                    self._write_one(outcome)
                except Exception as exc:
                    db.execute("ROLLBACK TO request")
                    failures.append(exc)
                else:
                    failures.append(None)
                db.execute("RELEASE request")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return failures

    def _write_one(self, outcome: RequestOutcome) -> None:
        for batch in outcome.batches:
            for columns, block in batch.groups.items():
                self._insert_rows(batch.table, columns, block, batch.constants)
        self._write_meta(outcome)

    def _write_meta(self, outcome: RequestOutcome) -> None:
        self.db.executemany(
            f"INSERT INTO {METRICS_TABLE} VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
            "Value = Value + excluded.Value, LastUpdated = excluded.LastUpdated",
            [(outcome.dcr, outcome.stream, k, v, outcome.time) for k, v in outcome.metrics().items()],
        )
        if outcome.errors:
            self.db.executemany(
                f"INSERT INTO {ERRORS_TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(outcome.time, e.dcr, e.stream, e.operation, e.status, e.code, e.message, e.client_request_id)
                 for e in outcome.errors],
            )

    def delete_all(self, tables: Iterable[str]) -> None:
        """Empty every data table and the error/metric tables (for test isolation)."""
        self.db.execute("BEGIN")
        for name in [*map(storage_table, tables), ERRORS_TABLE, METRICS_TABLE]:
            self.db.execute(f"DELETE FROM {quote(name)}")
        self.db.execute("COMMIT")

    @property
    def native(self) -> bool:
        """True when rows go through the native bulk insert (workspace.bulkinsert)."""
        return self._native is not None

    def close(self) -> None:
        if self._native is not None:
            self._native.close()
        self.db.close()


def open_reader(state_dir: Path) -> sqlite3.Connection:
    """A read-only connection to a running or stopped emulator's store."""
    path = state_dir / DB_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no workspace store at {path} (has the emulator ever run with this state dir?)")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    db.row_factory = sqlite3.Row
    return db


def run_query(db: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
    cur = db.execute(sql, params)
    columns = [d[0] for d in cur.description or ()]
    return columns, [tuple(r) for r in cur.fetchall()]
