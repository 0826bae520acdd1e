"""Many-row INSERTs for the store: the optional native path and the pure-Python reference.

``workspace._bulkinsert`` (C, built by ``pip install`` when a compiler is present) runs the store's multi-row
``INSERT`` statements on the store's own ``sqlite3`` connection, binding text without the copy (and the malloc
and free) that Python's ``sqlite3`` makes of every value: about half of the store's instructions per row. It is
used only when it loads, the running CPython's ``sqlite3.Connection`` layout is one it knows (3.11-3.13), and the
connection handle it reads names the store's database file; otherwise, or with ``SECSTREAM_NATIVE_BULKINSERT=0``,
the store uses ``python_insert``, which stores the same values.
"""

from __future__ import annotations

import importlib
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemas.native import optional_extension, switched_on

_bulkinsert, IMPORT_ERROR = optional_extension("workspace._bulkinsert")

DISABLE_ENV = "SECSTREAM_NATIVE_BULKINSERT"  # "0": use the pure-Python path even when the extension is built
_ERRORS = {name: getattr(sqlite3, name) for name in
           ("OperationalError", "IntegrityError", "DatabaseError", "DataError", "ProgrammingError")}

# insert(sql, fixed, values, start, stop, step): one execution of ``sql`` per slice ``values[i:i + step]`` for
# i in range(start, stop, step), binding ``fixed`` as parameters 1..len(fixed) and then the slice.
Insert = Callable[[str, list[Any], list[Any], int, int, int], None]


def python_insert(db: sqlite3.Connection) -> Insert:
    """The reference: ``executemany`` with one parameter list per execution."""
    def insert(sql: str, fixed: list[Any], values: list[Any], start: int, stop: int, step: int) -> None:
        db.executemany(sql, [fixed + values[i:i + step] for i in range(start, stop, step)])
    return insert


class NativeInsert:
    """``workspace._bulkinsert.Inserter`` on ``db``; ``close()`` before the connection is closed."""

    def __init__(self, db: sqlite3.Connection, inserter: Any) -> None:
        self.db = db
        self._inserter = inserter

    def __call__(self, sql: str, fixed: list[Any], values: list[Any], start: int, stop: int, step: int) -> None:
        self._inserter.insert(sql, fixed, values, start, stop, step)

    def close(self) -> None:
        self._inserter.close()


def native_insert(db: sqlite3.Connection, path: Path) -> NativeInsert | None:
    """The native path on ``db`` (the connection to ``path``), or None when it is off or cannot be trusted."""
    if _bulkinsert is None or not switched_on(DISABLE_ENV):
        return None
    if not (3, 11) <= sys.version_info[:2] <= (3, 13) or sys.implementation.name != "cpython":
        return None
    library = getattr(importlib.import_module("_sqlite3"), "__file__", None)  # the SQLite that owns ``db``
    if library is None:  # built into the interpreter: its SQLite functions are not reachable by name
        return None
    try:
        inserter = _bulkinsert.Inserter(db, sqlite3.Connection, library, _ERRORS)
    except (ImportError, TypeError, ValueError):
        return None
    named = inserter.filename()
    if not named or Path(named).resolve() != path.resolve():  # the handle is not this connection's: never use it
        inserter.close()
        return None
    return NativeInsert(db, inserter)
