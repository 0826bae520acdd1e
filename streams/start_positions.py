"""When Faust seeks its stream partitions back to their committed offsets, also rewind those never committed.

After every rebalance Faust restores the tables with the consumer's flow and the streams' flow control running and
the stream partitions paused. Once restored, it resumes the stream partitions, seeks them to their committed
offsets ("Seek stream partitions to committed offsets") and resumes flow control again, which clears the streams'
queues: records of stream partitions handed out before that are dropped. Records fetched while the consumer's flow
is held are dropped too, and Faust's ``getmany`` then seeks to committed offsets again. aiokafka's
``seek_to_committed`` only seeks a partition whose committed offset is above 0, so a partition never committed (a
new topic, or a first message that failed) stayed where the dropped records left it: those records were skipped for
good. Seen as a worker that became ready and never processed the message waiting at offset 0.

The replacement of Faust's ``AIOKafkaConsumerThread.seek_to_committed`` calls aiokafka's own ``seek_to_committed``
and then, for partitions of the stream's own topics, seeks a committed offset of 0 explicitly and resets a
partition with no committed offset by the consumer's ``auto_offset_reset`` policy: where aiokafka started it when
it was assigned. Nothing of that partition has been processed by this worker at that point.

For that second seek it holds the consumer's flow if the flow is running when the seek starts: that is the
recovery's seek, and Faust resumes the flow right after it. Without the hold the consumer would hand out the
records at the rewound position before the streams' queues are cleared, and they would be dropped again. When the
flow is already held (the seek of ``getmany`` after dropping records), it is left alone: the recovery may resume the
flow while the seek runs, and a hold taken after that would never be released, leaving a worker that is ready and
never fetches. Holding the flow for the first seek as well coincided with table recoveries that stalled after a
partition move, so that seek is left as it is.

The method is Faust's (faust-streaming 0.15); it is replaced only if it has the expected form, otherwise a warning
is logged and Faust's behaviour stays.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from streams.library_hooks import MethodHook

log = logging.getLogger(__name__)

POLICIES = ("earliest", "latest")

_topics: frozenset[str] = frozenset()
_policy = "earliest"


def installed_topics() -> frozenset[str]:
    return _topics if HOOK.installed else frozenset()


def install_uncommitted_start(topics: Collection[str], policy: str = "earliest") -> bool:
    """Start never-committed partitions of ``topics`` per ``policy`` whenever Faust seeks to committed offsets."""
    global _topics, _policy
    if policy not in POLICIES:
        raise ValueError(f"auto_offset_reset must be one of {POLICIES}, not {policy!r}")
    if not HOOK.install():
        return False
    _topics, _policy = frozenset(topics), policy
    return True


def uninstall_uncommitted_start() -> None:
    HOOK.uninstall()


def left_behind(committed: Mapping[Any, Any], topics: Collection[str]) -> tuple[list[Any], list[Any]]:
    """Partitions of ``topics`` that aiokafka's seek does not move: committed at 0, and never committed."""
    at_zero = [tp for tp, offset in committed.items() if tp.topic in topics and offset == 0]
    uncommitted = [tp for tp, offset in committed.items() if tp.topic in topics and (offset is None or offset < 0)]
    return at_zero, uncommitted


async def start_left_behind(consumer: Any, at_zero: list[Any], uncommitted: list[Any], policy: str) -> None:
    for tp in at_zero:
        consumer.seek(tp, 0)
    if uncommitted:
        log.debug("no committed offset for %s: starting from the %s offset", sorted(uncommitted), policy)
        reset = consumer.seek_to_beginning if policy == "earliest" else consumer.seek_to_end
        await reset(*uncommitted)


def _consumer_thread_class() -> type:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    return AIOKafkaConsumerThread


def _seeking_uncommitted_too(original: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
    @functools.wraps(original)
    async def seek_to_committed(self: Any) -> Mapping[Any, Any]:
        consumer = self._ensure_consumer()
        # Read before the first await: only a seek entered with the flow running is the recovery's, which Faust
        # follows by resuming the flow; a hold taken in any other seek may outlive the last resume.
        may_hold_flow = self.consumer.flow_active
        committed: Mapping[Any, Any] = await self.call_thread(consumer.seek_to_committed)
        at_zero, uncommitted = left_behind(committed, _topics)
        if at_zero or uncommitted:
            if may_hold_flow:
                # The records these partitions are rewound to would otherwise be handed out, and dropped, before
                # Faust clears the streams' queues.
                self.consumer.stop_flow()
            await self.call_thread(start_left_behind, consumer, at_zero, uncommitted, _policy)
        return committed

    return seek_to_committed


HOOK = MethodHook(
    _consumer_thread_class, "seek_to_committed", ("self",), coroutine=True, wrap=_seeking_uncommitted_too,
    own=True, package="faust-streaming", feature="the seek to committed offsets after a rebalance", logger=log,
    without_it="records fetched while a table is restored may be skipped for good")
