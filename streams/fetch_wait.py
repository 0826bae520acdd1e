"""After an empty fetch, wait before fetching again (``stream.empty_fetch_wait_ms``), as a Kafka broker would.

Kafka holds a Fetch that finds no records for up to ``fetch.max.wait.ms`` (1500 ms as Faust configures aiokafka).
A broker that answers it at once (the embedded noida-db) makes aiokafka's fetcher loop on empty fetches: Faust's
consumer thread then keeps the CPU and takes the GIL from the worker's own thread. This module wraps aiokafka's
``Fetcher._proc_fetch_request`` so that a fetch which added no records and came back sooner than the wait is
followed by the rest of the wait. Against Kafka the fetch itself took at least that long, so nothing changes.

Why that method: aiokafka runs it as one task per broker node, and the node counts as in flight until it ends.
Waiting inside it therefore holds back the next fetch to that node only, exactly as a fetch that Kafka holds does;
the fetch loop, other nodes, and the consumer's heartbeats, commits and rebalances (the coordinator's own tasks) go
on. A cancellation (an assignment change, ``consumer.stop()``) ends the wait at once with the method's usual
result, as aiokafka expects of it (it awaits cancelled fetch tasks without expecting an exception). A seek during
the wait is served when the wait ends, as it would be after a held fetch.

The method is private to aiokafka (checked against 0.14): the wrapper is installed only if it has the expected
form; otherwise a warning is logged and the consumer runs without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from streams.library_hooks import MethodHook

log = logging.getLogger(__name__)

FetchMethod = Callable[[Any, Any, Any, Any], Awaitable[Any]]

_wait_seconds = 0.0


def _fetcher_class() -> type:
    from aiokafka.consumer.fetcher import Fetcher

    return Fetcher


def installed_wait_seconds() -> float:
    """The wait now in force; 0.0 when the wrapper is not installed."""
    return _wait_seconds if HOOK.installed else 0.0


def install_empty_fetch_wait(wait_ms: float) -> bool:
    """Make aiokafka's fetcher wait up to ``wait_ms`` after an empty fetch (process-wide; idempotent).

    ``wait_ms`` <= 0 removes the wrapper if it was installed. Returns whether the wait is in force.
    """
    global _wait_seconds
    if wait_ms <= 0:
        uninstall_empty_fetch_wait()
        return False
    if not HOOK.install():
        return False
    _wait_seconds = wait_ms / 1000.0
    log.debug("aiokafka fetcher: waiting up to %g ms after an empty fetch", wait_ms)
    return True


def uninstall_empty_fetch_wait() -> None:
    """Put aiokafka's own method back (no-op when the wrapper is not installed)."""
    HOOK.uninstall()


def _waiting(fetch: FetchMethod) -> FetchMethod:
    @functools.wraps(fetch)
    async def fetch_then_wait_if_empty(self: Any, assignment: Any, node_id: Any, request: Any) -> Any:
        loop = asyncio.get_running_loop()
        started = loop.time()
        records_added = await fetch(self, assignment, node_id, request)
        rest = _wait_seconds - (loop.time() - started)
        if records_added or rest <= 0 or getattr(self, "_closed", False) or not getattr(assignment, "active", True):
            return records_added
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            return records_added  # aiokafka's method absorbed a cancellation: the result is no longer wanted
        with contextlib.suppress(asyncio.CancelledError):  # aiokafka awaits cancelled fetch tasks for their result
            await asyncio.sleep(rest)
        return records_added

    return fetch_then_wait_if_empty


HOOK = MethodHook(
    _fetcher_class, "_proc_fetch_request", ("self", "assignment", "node_id", "request"), coroutine=True,
    wrap=_waiting, package="aiokafka", feature="stream.empty_fetch_wait_ms", logger=log,
    without_it="an idle consumer may keep a CPU busy against a broker that answers empty fetches at once")
