"""``stream.producer_build_thread``: aiokafka's output batches are built and compressed beside the event loop.

Checked with a real aiokafka producer against the embedded broker: with the wrapper installed every batch is built
(``MessageBatch.get_data_buffer``, aiokafka's own method, observed) first in the builder thread, never on the event
loop's, and what a consumer reads back is exactly what was sent, in order, per partition; without it the batches are
built on the event loop, as aiokafka does.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.producer.message_accumulator import MessageBatch
from aiokafka.producer.sender import SendProduceReqHandler
from pydantic import ValidationError

from secstream.config import Settings
from streams import batch_build
from streams.app import build_app
from streams.batch_build import THREAD_NAME, install_threaded_batch_build, installed, uninstall_threaded_batch_build
from tests.streams.hook_support import library_as_shipped, scratch_topics, warnings_of_refused_install

AIOKAFKA_DO = inspect.getattr_static(SendProduceReqHandler, "do")
PARTITIONS = 2
PER_PARTITION = 300


@pytest.fixture(autouse=True)
def _aiokafka_as_shipped() -> Iterator[None]:
    yield from library_as_shipped(uninstall_threaded_batch_build)


@pytest.fixture
def topic(settings: Settings) -> Iterator[str]:
    with scratch_topics(settings, [settings.topics.normalized], PARTITIONS, "batch build test"):
        yield settings.topics.normalized


def _first_builds_by_thread(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Thread names of the first ``get_data_buffer`` call of each batch (the one that builds it)."""
    seen: set[int] = set()
    threads: list[str] = []
    original = MessageBatch.get_data_buffer

    def get_data_buffer(batch: MessageBatch) -> Any:
        if id(batch) not in seen:
            seen.add(id(batch))
            threads.append(threading.current_thread().name)
        return original(batch)

    monkeypatch.setattr(MessageBatch, "get_data_buffer", get_data_buffer)
    return threads


def _round_trip(settings: Settings, topic: str) -> tuple[dict[int, list[bytes]], dict[int, list[bytes]]]:
    """Sends PER_PARTITION zstd-compressed values to each partition in small linger windows; reads them back."""
    sent = {p: [b"%d:%05d:" % (p, n) + b"x" * (n % 700) for n in range(PER_PARTITION)] for p in range(PARTITIONS)}

    async def scenario() -> dict[int, list[bytes]]:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, compression_type="zstd",
                                    linger_ms=2, max_batch_size=16_384, acks="all")
        await producer.start()
        try:
            for n in range(PER_PARTITION):
                for p in range(PARTITIONS):
                    await producer.send(topic, sent[p][n], partition=p)
                if n % 50 == 49:
                    await producer.flush()
            await producer.flush()
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, auto_offset_reset="earliest",
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
            read: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
            for _ in range(60):
                for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                    read[tp.partition].extend(r.value for r in records if r.value is not None)
                if sum(map(len, read.values())) >= PARTITIONS * PER_PARTITION:
                    break
            return read
        finally:
            await consumer.stop()

    return sent, asyncio.run(scenario())


@pytest.mark.integration
def test_batches_are_built_in_the_builder_thread_and_arrive_intact(
        settings: Settings, topic: str, monkeypatch: pytest.MonkeyPatch) -> None:
    threads = _first_builds_by_thread(monkeypatch)
    assert install_threaded_batch_build()
    sent, read = _round_trip(settings, topic)
    assert read == sent
    assert len(threads) > PARTITIONS  # several produce requests, not one
    assert {name.split("_")[0] for name in threads} == {THREAD_NAME}, threads


@pytest.mark.integration
def test_without_it_batches_are_built_on_the_event_loop(
        settings: Settings, topic: str, monkeypatch: pytest.MonkeyPatch) -> None:
    threads = _first_builds_by_thread(monkeypatch)
    sent, read = _round_trip(settings, topic)
    assert read == sent
    assert threads and set(threads) == {threading.current_thread().name}, threads


# ------------------------------------------------------------------------------------------ setting and guard
def test_the_worker_installs_it_unless_turned_off(settings: Settings) -> None:
    build_app(settings)
    assert installed() and Settings().stream.producer_build_thread
    assert inspect.getattr_static(SendProduceReqHandler, "do") is not AIOKAFKA_DO
    build_app(settings.model_copy(update={"stream": settings.stream.model_copy(
        update={"producer_build_thread": False})}))
    assert not installed()
    assert inspect.getattr_static(SendProduceReqHandler, "do") is AIOKAFKA_DO


def test_installing_is_idempotent() -> None:
    assert install_threaded_batch_build()
    wrapped = inspect.getattr_static(SendProduceReqHandler, "do")
    assert install_threaded_batch_build()
    assert inspect.getattr_static(SendProduceReqHandler, "do") is wrapped
    assert not install_threaded_batch_build(False)
    assert inspect.getattr_static(SendProduceReqHandler, "do") is AIOKAFKA_DO


def test_the_setting_is_a_boolean() -> None:
    with pytest.raises(ValidationError, match="producer_build_thread"):
        Settings(stream={"producer_build_thread": "sometimes"})


async def _other_signature(self: Any, node_id: Any, request: Any) -> None:
    return None


def _not_a_coroutine(self: Any, node_id: Any) -> None:
    return None


@pytest.mark.parametrize(("replacement", "problem"), [
    (None, "has no do"),
    (_other_signature, "takes ('self', 'node_id', 'request')"),
    (_not_a_coroutine, "is not a coroutine function"),
])
def test_an_aiokafka_without_the_expected_method_gets_a_warning_and_no_patch(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, replacement: Any, problem: str) -> None:
    warnings = warnings_of_refused_install(monkeypatch, caplog, SendProduceReqHandler, "do", replacement,
                                           install_threaded_batch_build, "streams.batch_build", [batch_build.HOOK])
    assert vars(SendProduceReqHandler).get("do") is replacement
    assert not installed()
    assert len(warnings) == 1 and problem in warnings[0] and "stream.producer_build_thread" in warnings[0], warnings
