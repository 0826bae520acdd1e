"""Group commit: one thread shapes and writes every request; requests that arrive while a transaction is being
written share the next one.

Each request keeps its own savepoint inside the shared transaction, so a request whose rows cannot be written
fails alone, and its answer is released only after the COMMIT that made its rows durable. One thread (instead
of a shaping thread and a writing thread) means no GIL hand-off per row: SQLite's ``step`` releases the GIL on
every row, and with a second Python thread waiting that became a lock round trip per row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from workspace.store import RequestOutcome, Store

log = logging.getLogger("secstream.workspace")
R = TypeVar("R")
DEFAULT_MAX_GROUP = 32  # requests per transaction: bounds how long the first of them waits for its answer


@dataclass
class _Job(Generic[R]):
    """``prepare`` runs on the committer thread and returns what to store and what to hand back."""

    prepare: Callable[[], tuple[RequestOutcome, R]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[R]


@dataclass
class _Exclusive:
    """Work that needs the store to itself (e.g. deleting every row), between two transactions."""

    call: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


def _settle(future: asyncio.Future[Any], result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # the request was cancelled (client went away): nobody is waiting for the answer
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _answer(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any = None,
            error: BaseException | None = None) -> None:
    """Hand an answer to the waiting event loop (from the committer thread)."""
    with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits, and the committer must go on
        loop.call_soon_threadsafe(_settle, future, result, error)


class GroupCommitter:
    """The store's only writer. ``submit`` from the event loop; answers come back after the commit."""

    def __init__(self, store: Store, max_group: int = DEFAULT_MAX_GROUP) -> None:
        self.store = store
        self.max_group = max_group
        self.transactions = 0  # committed group transactions (for tests and benchmarks)
        self.requests = 0  # requests whose rows those transactions committed
        self._queue: queue.SimpleQueue[_Job[Any] | _Exclusive | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="workspace-committer", daemon=True)
        self._thread.start()

    async def submit(self, prepare: Callable[[], tuple[RequestOutcome, R]]) -> R:
        """Run ``prepare`` on the committer thread, store its outcome, and return its reply once committed.
        An exception from ``prepare`` or from writing this request's rows is raised here, for this request
        only."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.put(_Job(prepare, loop, future))
        return await future

    async def exclusive(self, call: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Exclusive(call, loop, future))
        return await future

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    # -- the committer thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            group: list[_Job[Any]] = []
            while item is not None:
                if isinstance(item, _Exclusive):
                    self._commit(group)
                    group = []
                    self._run_exclusive(item)
                else:
                    group.append(item)
                if len(group) >= self.max_group:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            self._commit(group)
            if item is None:
                return

    def _run_exclusive(self, item: _Exclusive) -> None:
        try:
            result = item.call()
        except Exception as exc:
            _answer(item.loop, item.future, None, exc)
        else:
            _answer(item.loop, item.future, result)

    def _commit(self, group: list[_Job[Any]]) -> None:
        if not group:
            return
        prepared: list[tuple[_Job[Any], RequestOutcome, Any]] = []
        for job in group:
            try:
                outcome, reply = job.prepare()
            except Exception as exc:
                _answer(job.loop, job.future, None, exc)
            else:
                prepared.append((job, outcome, reply))
        if not prepared:
            return
        try:
            failures = self.store.write_group([outcome for _, outcome, _ in prepared])
        except Exception as exc:  # the COMMIT itself failed: nothing of this group is stored
            log.error("workspace store: a transaction of %d requests failed: %s", len(prepared), exc)
            for job, _, _ in prepared:
                _answer(job.loop, job.future, None, exc)
            return
        self.transactions += 1
        self.requests += failures.count(None)
        for (job, _, reply), failure in zip(prepared, failures, strict=True):
            _answer(job.loop, job.future, reply, failure)
