"""Group commit: requests that queue up during a transaction share the next one, each answered on its own and
only once its rows are committed."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from workspace.committer import GroupCommitter
from workspace.dcr import Column, Table
from workspace.errors import ApiError
from workspace.shaping import ShapedBatch
from workspace.store import RequestOutcome, Store, open_reader, run_query

TABLE = Table("App_CL", (Column("Msg", "string"), Column("N", "int")))


def outcome(request_id: str, rows: int, *, broken: bool = False) -> RequestOutcome:
    batch = ShapedBatch(table="App_CL", rows=rows)
    batch.add_rows(("Msg", "N", "_RequestId"), [(f"m{i}", i, request_id) for i in range(rows)])
    if broken:  # fails after its valid rows were inserted
        batch.add_rows(("NoSuchColumn",), [(1,)])
    return RequestOutcome("dcr-x", "Custom-App", datetime.now(UTC).isoformat(), 204, [batch],
                          records_received=rows)


def stored(state: Path, request_id: str) -> int:
    db = open_reader(state)
    try:
        return int(run_query(db, "SELECT count(*) FROM App_CL WHERE _RequestId = ?", (request_id,))[1][0][0])
    finally:
        db.close()


def test_queued_requests_share_a_transaction_and_are_answered_after_the_commit(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure_table(TABLE)
    committer = GroupCommitter(store)
    gate = threading.Event()
    seen_at_answer: dict[str, int] = {}

    def blocked() -> tuple[RequestOutcome, str]:
        gate.wait(10)  # holds the committer thread until the other requests have queued up
        return outcome("first", 2), "first"

    def preparer(request_id: str) -> Callable[[], tuple[RequestOutcome, str]]:
        def prepare() -> tuple[RequestOutcome, str]:
            if request_id == "refused":
                raise ApiError(400, "InvalidPayload", "refused while shaping")
            return outcome(request_id, 3, broken=request_id == "broken"), request_id
        return prepare

    async def request(make: Callable[[], tuple[RequestOutcome, str]], name: str) -> str:
        reply = await committer.submit(make)
        seen_at_answer[name] = stored(tmp_path, name)  # what a reader sees the moment the answer arrives
        return str(reply)

    async def scenario() -> list[object]:
        first = asyncio.create_task(request(blocked, "first"))
        await asyncio.sleep(0.05)
        names = ["r0", "r1", "broken", "refused", "r2"]
        rest = [asyncio.create_task(request(preparer(n), n)) for n in names]
        await asyncio.sleep(0.05)
        gate.set()
        return list(await asyncio.gather(first, *rest, return_exceptions=True))

    try:
        results = asyncio.run(scenario())
    finally:
        committer.close()
    assert results[:3] == ["first", "r0", "r1"] and results[5] == "r2"
    assert isinstance(results[3], Exception) and "NoSuchColumn" in str(results[3])
    assert isinstance(results[4], ApiError) and results[4].status == 400
    assert committer.transactions == 2  # the blocked request alone, then the five that queued behind it
    assert committer.requests == 4  # first, r0, r1, r2: "broken" was rolled back, "refused" never written
    assert seen_at_answer == {"first": 2, "r0": 3, "r1": 3, "r2": 3}  # committed before each answer
    assert stored(tmp_path, "broken") == 0


def test_exclusive_work_runs_between_transactions(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure_table(TABLE)
    committer = GroupCommitter(store)

    async def scenario() -> None:
        await committer.submit(lambda: (outcome("before", 4), None))
        await committer.exclusive(lambda: store.delete_all(["App_CL"]))
        await committer.submit(lambda: (outcome("after", 1), None))

    try:
        asyncio.run(scenario())
    finally:
        committer.close()
    assert (stored(tmp_path, "before"), stored(tmp_path, "after")) == (0, 1)


def test_close_finishes_queued_work(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure_table(TABLE)
    committer = GroupCommitter(store, max_group=2)

    def prepare(i: int) -> Callable[[], tuple[RequestOutcome, int]]:
        return lambda: (outcome(f"q{i}", 1), i)

    async def scenario() -> list[int]:
        tasks = [asyncio.create_task(committer.submit(prepare(i))) for i in range(5)]
        await asyncio.sleep(0)
        return list(await asyncio.gather(*tasks))

    try:
        assert asyncio.run(scenario()) == [0, 1, 2, 3, 4]
    finally:
        committer.close()
    assert committer.transactions >= 3  # at most two requests per transaction
    assert [stored(tmp_path, f"q{i}") for i in range(5)] == [1] * 5


def test_a_failed_commit_fails_every_request_of_the_group(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure_table(TABLE)
    committer = GroupCommitter(store)

    async def scenario() -> list[str | BaseException]:
        store.db.close()  # BEGIN of the next transaction fails: nothing can be committed
        return list(await asyncio.gather(committer.submit(lambda: (outcome("x", 1), "x")),
                                         return_exceptions=True))

    try:
        (result,) = asyncio.run(scenario())
    finally:
        committer.close()
    assert isinstance(result, sqlite3.ProgrammingError) and "closed" in str(result)


def test_a_closed_event_loop_does_not_stop_the_committer(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ensure_table(TABLE)
    committer = GroupCommitter(store)
    gate = threading.Event()

    def blocked() -> tuple[RequestOutcome, str]:
        gate.wait(10)
        return outcome("orphan", 1), "orphan"

    async def give_up() -> str:  # the caller stops waiting and its event loop closes before the answer
        return await asyncio.wait_for(committer.submit(blocked), 0.05)

    async def later() -> str:
        return await asyncio.wait_for(committer.submit(lambda: (outcome("later", 2), "later")), 10)

    try:
        with pytest.raises(TimeoutError):
            asyncio.run(give_up())
        gate.set()
        assert asyncio.run(later()) == "later"
    finally:
        committer.close()
    assert (stored(tmp_path, "orphan"), stored(tmp_path, "later")) == (1, 2)  # the orphan's rows are still stored
