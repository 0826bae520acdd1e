"""Faust's seek back to committed offsets also rewinds stream partitions that were never committed.

Faust drops records its consumer handed out while a table was restored and then seeks every stream partition to
its committed offset. aiokafka's ``seek_to_committed`` skips a partition with no committed offset (or offset 0), so
those records were skipped for good: a worker became ready and never processed the message at offset 0 (seen in
``tests/streams/test_worker_failure.py`` in about one run in seven). Checked here on the real broker with a plain
aiokafka consumer that has read past uncommitted records, and with Faust's own flow switches around the seek: the
rewind holds the consumer's flow only in a seek entered with the flow running (the recovery's, which Faust follows
by resuming it), never in one entered with the flow held, where the recovery may resume it while the seek runs.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from confluent_kafka import Producer
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from secstream.config import Settings
from secstream.kafka import producer_config
from streams import start_positions
from streams.app import build_app
from streams.start_positions import (
    install_uncommitted_start,
    installed_topics,
    left_behind,
    start_left_behind,
    uninstall_uncommitted_start,
)
from tests.streams.hook_support import library_as_shipped, scratch_topics, warnings_of_refused_install

FAUST_METHOD = inspect.getattr_static(AIOKafkaConsumerThread, "seek_to_committed")
RECORDS = 3


@pytest.fixture(autouse=True)
def _faust_as_shipped() -> Iterator[None]:
    yield from library_as_shipped(uninstall_uncommitted_start)


@pytest.fixture
def topics(settings: Settings) -> Iterator[tuple[str, str]]:
    """A stream topic and another one, 3 partitions each, RECORDS records in every partition."""
    names = (settings.topics.raw, settings.topics.normalized)
    with scratch_topics(settings, names, 3, "start position test"):
        producer = Producer(producer_config(settings.kafka))
        for name in names:
            for partition in range(3):
                for n in range(RECORDS):
                    producer.produce(name, value=b"%d" % n, partition=partition)
        assert producer.flush(30) == 0
        yield names


async def _read_everything(settings: Settings, tps: list[TopicPartition], committed: dict[TopicPartition, int],
                           policy: str = "earliest") -> AIOKafkaConsumer:
    """A group consumer that committed ``committed`` and then read every record without committing again."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, group_id=uuid.uuid4().hex,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    consumer.assign(tps)
    if committed:
        await consumer.commit({tp: OffsetAndMetadata(offset, "") for tp, offset in committed.items()})
    for tp in tps:
        consumer.seek(tp, 0)
    seen = 0
    while seen < RECORDS * len(tps):
        seen += sum(len(records) for records in (await consumer.getmany(timeout_ms=1000)).values())
    assert [await consumer.position(tp) for tp in tps] == [RECORDS] * len(tps)
    return consumer


def test_partitions_never_committed_start_again_from_the_policy(settings: Settings,
                                                                topics: tuple[str, str]) -> None:
    stream, other = topics
    never, at_two, at_zero = (TopicPartition(stream, p) for p in range(3))
    elsewhere = TopicPartition(other, 0)

    async def scenario() -> dict[TopicPartition, int]:
        consumer = await _read_everything(settings, [never, at_two, at_zero, elsewhere], {at_two: 2, at_zero: 0})
        try:
            # aiokafka alone leaves the never-committed partition (and the one committed at 0) where reading left it.
            committed = await consumer.seek_to_committed()
            assert await consumer.position(never) == RECORDS
            assert await consumer.position(at_zero) == RECORDS
            await start_left_behind(consumer, *left_behind(committed, {stream}), "earliest")
            return {tp: await consumer.position(tp) for tp in (never, at_two, at_zero, elsewhere)}
        finally:
            await consumer.stop()

    positions = asyncio.run(scenario())
    assert positions == {never: 0, at_two: 2, at_zero: 0, elsewhere: RECORDS}


def test_the_latest_policy_starts_at_the_end(settings: Settings, topics: tuple[str, str]) -> None:
    stream, _ = topics
    never = TopicPartition(stream, 0)

    async def scenario() -> int:
        consumer = await _read_everything(settings, [never], {})
        try:
            consumer.seek(never, 1)
            committed = await consumer.seek_to_committed()
            await start_left_behind(consumer, *left_behind(committed, {stream}), "latest")
            return int(await consumer.position(never))
        finally:
            await consumer.stop()

    assert asyncio.run(scenario()) == RECORDS


class _FaustFlow:
    """The consumer's flow state, switched by Faust's own ``stop_flow`` / ``resume_flow``."""

    def __init__(self, running: bool) -> None:
        self.flow_active = True
        self.can_resume_flow, self.suspend_flow = asyncio.Event(), asyncio.Event()
        (self.resume_flow if running else self.stop_flow)()

    def stop_flow(self) -> None:
        FaustConsumer.stop_flow(cast(Any, self))

    def resume_flow(self) -> None:
        FaustConsumer.resume_flow(cast(Any, self))


class _ConsumerThreadAround:
    """Faust's consumer thread around a real aiokafka consumer: ``call_thread`` runs the call in this loop, after
    ``meanwhile`` (once, on the first call: what the event loop runs while the seek waits for the thread)."""

    def __init__(self, aiokafka_consumer: AIOKafkaConsumer, flow: _FaustFlow,
                 meanwhile: Callable[[_FaustFlow], object] | None) -> None:
        self._aiokafka, self.consumer, self._meanwhile = aiokafka_consumer, flow, meanwhile

    def _ensure_consumer(self) -> AIOKafkaConsumer:
        return self._aiokafka

    async def call_thread(self, fun: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        meanwhile, self._meanwhile = self._meanwhile, None
        if meanwhile is not None:
            meanwhile(self.consumer)
        return await fun(*args)


def _seek_as_installed(settings: Settings, stream: str, committed: dict[int, int], flow_running: bool,
                       meanwhile: Callable[[_FaustFlow], object] | None = None) -> tuple[bool, list[int]]:
    """The installed seek on a consumer that read every record of ``stream``'s three partitions: whether the flow
    runs after it, and the partitions' positions."""
    assert install_uncommitted_start([stream])
    tps = [TopicPartition(stream, p) for p in range(3)]

    async def scenario() -> tuple[bool, list[int]]:
        consumer = await _read_everything(settings, tps, {tps[p]: offset for p, offset in committed.items()})
        try:
            thread = _ConsumerThreadAround(consumer, _FaustFlow(flow_running), meanwhile)
            await AIOKafkaConsumerThread.seek_to_committed(thread)  # type: ignore[arg-type]
            return thread.consumer.flow_active, [await consumer.position(tp) for tp in tps]
        finally:
            await consumer.stop()

    return asyncio.run(scenario())


def test_the_recovery_seek_holds_the_flow_for_the_rewind(settings: Settings, topics: tuple[str, str]) -> None:
    flow_running, positions = _seek_as_installed(settings, topics[0], {1: 2}, flow_running=True)
    assert positions == [0, 2, 0]
    assert not flow_running  # Faust's recovery resumes it after the seek


def test_a_seek_with_nothing_to_rewind_leaves_the_flow_running(settings: Settings,
                                                               topics: tuple[str, str]) -> None:
    flow_running, positions = _seek_as_installed(settings, topics[0], {0: 1, 1: 2, 2: 1}, flow_running=True)
    assert positions == [1, 2, 1]
    assert flow_running


def test_a_seek_entered_with_the_flow_held_never_holds_it_after_a_resume(settings: Settings,
                                                                         topics: tuple[str, str]) -> None:
    """Faust's ``getmany`` seeks after dropping records fetched while the flow was held; the recovery resumed the
    flow while that seek ran. A hold taken then would be released by nobody: a ready worker that never fetches."""
    flow_running, positions = _seek_as_installed(settings, topics[0], {}, flow_running=False,
                                                 meanwhile=lambda flow: flow.resume_flow())
    assert positions == [0, 0, 0]
    assert flow_running


# ------------------------------------------------------------------------------------------ install and guard
def test_the_worker_installs_it_for_its_raw_topic(settings: Settings) -> None:
    build_app(settings)
    assert installed_topics() == {settings.topics.raw}
    assert inspect.getattr_static(AIOKafkaConsumerThread, "seek_to_committed") is not FAUST_METHOD


def test_installing_is_idempotent_and_uninstalling_restores_faust() -> None:
    assert install_uncommitted_start(["a"])
    wrapped = inspect.getattr_static(AIOKafkaConsumerThread, "seek_to_committed")
    assert install_uncommitted_start(["b"])
    assert inspect.getattr_static(AIOKafkaConsumerThread, "seek_to_committed") is wrapped
    assert installed_topics() == {"b"}
    uninstall_uncommitted_start()
    assert inspect.getattr_static(AIOKafkaConsumerThread, "seek_to_committed") is FAUST_METHOD
    assert installed_topics() == frozenset()


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="auto_offset_reset"):
        install_uncommitted_start(["a"], "none")


def _sync_seek(self: Any) -> None:
    return None


async def _other_signature(self: Any, partitions: Any) -> None:
    return None


@pytest.mark.parametrize(("replacement", "problem"), [
    (None, "has no seek_to_committed"),
    (_sync_seek, "is not a coroutine function"),
    (_other_signature, "takes ('self', 'partitions')"),
])
def test_a_faust_without_the_expected_method_gets_a_warning_and_no_patch(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, replacement: Any, problem: str) -> None:
    warnings = warnings_of_refused_install(monkeypatch, caplog, AIOKafkaConsumerThread, "seek_to_committed",
                                           replacement, lambda: install_uncommitted_start(["a"]),
                                           "streams.start_positions", [start_positions.HOOK])
    assert vars(AIOKafkaConsumerThread).get("seek_to_committed") is replacement
    assert installed_topics() == frozenset()
    assert len(warnings) == 1 and problem in warnings[0], warnings
