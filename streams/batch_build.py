"""Build (and compress) the output producer's record batches in a thread, off the worker's event loop.

The worker's own thread bounds its rate: it runs ``BatchProcessor.process`` and Faust's event loop, which also runs
aiokafka's producer. aiokafka builds each record batch when it sends it (``SendProduceReqHandler.create_request``
calls ``MessageBatch.get_data_buffer``), and building compresses the whole batch: zstd of a 300 KB output message
takes about 1.4 µs per input event, 7-8 % of that thread's time, during which nothing else of the worker runs.
cramjam, which aiokafka compresses with, releases the GIL, so the same work in another thread runs beside the
worker's own (as librdkafka's threads do for a confluent-kafka stage).

This module wraps ``SendProduceReqHandler.do``, which aiokafka runs as one task per broker node with that node
counted as in flight: before the original builds the request, the wrapper builds the task's batches in one
dedicated thread and awaits them. ``get_data_buffer`` keeps the built buffer, so the request (and any retry) uses it.
The batches were already drained from the accumulator, so nothing else touches them meanwhile; order per partition
and per node is unchanged (the node stays in flight until the task ends). A build error surfaces from ``do`` as it
did from ``create_request``; a cancellation while the build runs cancels ``do`` before it sends, as aiokafka
expects.

The method is private to aiokafka (checked against 0.14): the wrapper is installed only if it has the expected
form; otherwise a warning is logged and batches are built on the event loop as before.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from streams.library_hooks import MethodHook

log = logging.getLogger(__name__)

THREAD_NAME = "secstream-batch-build"

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _handler_class() -> type:
    from aiokafka.producer.sender import SendProduceReqHandler

    return SendProduceReqHandler


def install_threaded_batch_build(enabled: bool = True) -> bool:
    """Build the producer's batches in a thread (process-wide; idempotent). False removes the wrapper."""
    if not enabled:
        uninstall_threaded_batch_build()
        return False
    return HOOK.install()


def uninstall_threaded_batch_build() -> None:
    HOOK.uninstall()


def installed() -> bool:
    return HOOK.installed


def _builder() -> ThreadPoolExecutor:
    # One thread: a second would only contend for the GIL with the worker's own during the batches' Python parts.
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)
        return _executor


def build_batches(batches: Iterable[Any]) -> None:
    for batch in batches:
        batch.get_data_buffer()


def _building_first(do: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    @functools.wraps(do)
    async def build_then_do(self: Any, node_id: Any) -> Any:
        batches = list(getattr(self, "_batches", {}).values())
        if batches:
            await asyncio.get_running_loop().run_in_executor(_builder(), build_batches, batches)
        return await do(self, node_id)

    return build_then_do


HOOK = MethodHook(
    _handler_class, "do", ("self", "node_id"), coroutine=True, wrap=_building_first, own=True,
    package="aiokafka", feature="stream.producer_build_thread", logger=log,
    without_it="output batches are built and compressed on the worker's event loop")
