"""Faust's seek back to committed offsets also rewinds stream partitions that were never committed.

Faust drops records its consumer handed out while a table was restored and then seeks every stream partition to
its committed offset. aiokafka's ``seek_to_committed`` skips a partition with no committed offset (or offset 0), so
those records were skipped for good: a worker became ready and never processed the message at offset 0 (seen in
``tests/streams/test_worker_failure.py`` in about one run in seven). Checked here on the real broker with a plain
aiokafka consumer that has read past uncommitted records.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from confluent_kafka import Producer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from secstream.config import Settings
from secstream.kafka import producer_config
from secstream.topics import TopicSpec, delete_topics, ensure_topics
from streams import start_positions
from streams.app import build_app
from streams.start_positions import (
    install_uncommitted_start,
    installed_topics,
    left_behind,
    start_left_behind,
    uninstall_uncommitted_start,
)

FAUST_METHOD = inspect.getattr_static(AIOKafkaConsumerThread, "seek_to_committed")
RECORDS = 3


@pytest.fixture(autouse=True)
def _faust_as_shipped() -> Iterator[None]:
    uninstall_uncommitted_start()
    yield
    uninstall_uncommitted_start()


@pytest.fixture
def topics(settings: Settings) -> Iterator[tuple[str, str]]:
    """A stream topic and another one, 3 partitions each, RECORDS records in every partition."""
    names = (settings.topics.raw, settings.topics.normalized)
    ensure_topics(settings, [TopicSpec(name, 3, "start position test", {"retention.ms": "3600000"}) for name in names])
    producer = Producer(producer_config(settings.kafka))
    for name in names:
        for partition in range(3):
            for n in range(RECORDS):
                producer.produce(name, value=b"%d" % n, partition=partition)
    assert producer.flush(30) == 0
    yield names
    delete_topics(settings, list(names))


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
    if replacement is None:
        monkeypatch.delattr(AIOKafkaConsumerThread, "seek_to_committed")
    else:
        monkeypatch.setattr(AIOKafkaConsumerThread, "seek_to_committed", replacement)
    monkeypatch.setattr(start_positions.HOOK, "warned", set())
    with caplog.at_level(logging.WARNING, logger="streams.start_positions"):
        assert not install_uncommitted_start(["a"])
        assert not install_uncommitted_start(["a"])
    assert vars(AIOKafkaConsumerThread).get("seek_to_committed") is replacement
    assert installed_topics() == frozenset()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and problem in warnings[0], warnings
