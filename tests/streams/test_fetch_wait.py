"""``stream.empty_fetch_wait_ms``: aiokafka's fetcher waits after an empty fetch against the embedded broker.

The broker answers an empty Fetch at once; without the wait an idle consumer fetches in a tight loop. Fetches are
counted where aiokafka sends them (``AIOKafkaClient.send`` with a ``FetchRequest``), below the wrapped method.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.protocol.fetch import FetchRequest
from confluent_kafka import Producer
from pydantic import ValidationError

from secstream.config import Settings
from secstream.kafka import producer_config
from secstream.topics import delete_topics
from streams import fetch_wait
from streams.app import build_app, changelog_topic_name
from streams.fetch_wait import install_empty_fetch_wait, installed_wait_seconds, uninstall_empty_fetch_wait
from tests.streams.hook_support import library_as_shipped, scratch_topics, warnings_of_refused_install
from tests.streams.worker_harness import Worker

AIOKAFKA_FETCH = inspect.getattr_static(Fetcher, "_proc_fetch_request")
IDLE_SECONDS = 2.0


@pytest.fixture(autouse=True)
def _aiokafka_as_shipped() -> Iterator[None]:
    yield from library_as_shipped(uninstall_empty_fetch_wait)


@pytest.fixture
def topic(settings: Settings) -> Iterator[str]:
    with scratch_topics(settings, [settings.topics.raw], 2, "fetch wait test"):
        yield settings.topics.raw


@pytest.fixture
def fetches(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Monotonic times of the Fetch requests aiokafka sends."""
    sent: list[float] = []
    send = AIOKafkaClient.send

    async def counting_send(self: AIOKafkaClient, node_id: Any, request: Any, **kwargs: Any) -> Any:
        if isinstance(request, FetchRequest):
            sent.append(time.monotonic())
        return await send(self, node_id, request, **kwargs)

    monkeypatch.setattr(AIOKafkaClient, "send", counting_send)
    return sent


@asynccontextmanager
async def consumer_at_end(settings: Settings, *tps: TopicPartition) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False,
                                auto_offset_reset="latest")
    await consumer.start()
    try:
        consumer.assign(list(tps))
        for tp in tps:
            await consumer.position(tp)  # resolved: fetching from the end from now on
        yield consumer
    finally:
        await consumer.stop()


def produce(settings: Settings, topic: str, partition: int, value: bytes) -> None:
    producer = Producer(producer_config(settings.kafka))
    producer.produce(topic, value=value, partition=partition)
    assert producer.flush(30) == 0


async def idle_fetches(settings: Settings, topic: str, fetches: list[float]) -> int:
    async with consumer_at_end(settings, TopicPartition(topic, 0)):
        before = len(fetches)
        await asyncio.sleep(IDLE_SECONDS)
        return len(fetches) - before


async def first_message_after(consumer: AIOKafkaConsumer, action: Callable[[], Any], timeout: float = 30.0) -> float:
    """Seconds from the end of ``action`` until a waiting ``getone()`` returns a record."""
    record = asyncio.ensure_future(consumer.getone())
    await asyncio.sleep(0.5)  # idle: empty fetches, each followed by the wait
    assert not record.done()
    done = action()
    if inspect.isawaitable(done):
        await done
    started = time.monotonic()
    await asyncio.wait_for(record, timeout)
    return time.monotonic() - started


# ------------------------------------------------------------------------------------------------ the wait itself
@pytest.mark.integration
def test_an_idle_consumer_fetches_a_tenth_as_often_with_the_wait(settings: Settings, topic: str,
                                                                 fetches: list[float]) -> None:
    spinning = asyncio.run(idle_fetches(settings, topic, fetches))
    assert install_empty_fetch_wait(100)
    waiting = asyncio.run(idle_fetches(settings, topic, fetches))
    # One fetch per 100 ms at most (plus the first ones); without the wait the broker's instant answers are
    # fetched again at once.
    assert waiting <= IDLE_SECONDS / 0.1 + 5, (waiting, spinning)
    assert waiting * 10 < spinning, (waiting, spinning)


@pytest.mark.integration
def test_a_record_produced_while_idle_arrives_within_the_wait(settings: Settings, topic: str) -> None:
    assert install_empty_fetch_wait(1000)

    async def latencies() -> list[float]:
        async with consumer_at_end(settings, TopicPartition(topic, 0)) as consumer:
            return [await first_message_after(consumer, functools.partial(produce, settings, topic, 0, b"%d" % n))
                    for n in range(3)]

    for latency in asyncio.run(latencies()):
        assert latency < 1.0 + 1.0, latency  # the wait, plus a margin for a loaded machine


@pytest.mark.integration
def test_a_new_assignment_during_the_wait_fetches_at_once(settings: Settings, topic: str) -> None:
    produce(settings, topic, 1, b"elsewhere")
    assert install_empty_fetch_wait(10_000)
    other = TopicPartition(topic, 1)

    async def latency() -> float:
        async with consumer_at_end(settings, TopicPartition(topic, 0)) as consumer:

            async def reassign() -> None:
                consumer.assign([other])
                await consumer.seek_to_beginning(other)

            return await first_message_after(consumer, reassign)

    assert asyncio.run(latency()) < 5.0  # well under the 10 s wait


@pytest.mark.integration
def test_stopping_during_the_wait_is_prompt_and_clean(settings: Settings, topic: str, fetches: list[float]) -> None:
    assert install_empty_fetch_wait(10_000)

    async def stop_seconds() -> float:
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False,
                                    auto_offset_reset="latest")
        await consumer.start()
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.position(TopicPartition(topic, 0))
        for _ in range(100):
            if fetches:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)
        assert len(fetches) == 1, fetches  # one empty fetch, then the wait
        started = time.monotonic()
        await consumer.stop()  # raises if the cancelled wait leaks its CancelledError
        return time.monotonic() - started

    assert asyncio.run(stop_seconds()) < 5.0  # well under the 10 s wait


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads CPU time from /proc")
def test_an_idle_stream_worker_keeps_a_core_busy_only_without_the_wait(settings: Settings, tmp_path: Path) -> None:
    """The shipped worker, default setting against 0, side by side on the same (empty) topics."""
    apps = {wait: settings.model_copy(update={"stream": settings.stream.model_copy(update={
        "app_id": f"fetch-wait-{wait}-{uuid.uuid4().hex[:6]}", "empty_fetch_wait_ms": wait})}) for wait in (100, 0)}
    workers = {wait: Worker(s, tmp_path, f"wait{wait}") for wait, s in apps.items()}
    try:
        for worker in workers.values():
            worker.start()
        for worker in workers.values():
            worker.wait_ready(timeout=120)
        time.sleep(1.0)  # past start-up and table recovery
        pids = {wait: w.proc.pid for wait, w in workers.items() if w.proc is not None}
        before = {wait: _cpu_seconds(pid) for wait, pid in pids.items()}
        time.sleep(4.0)
        used = {wait: _cpu_seconds(pid) - before[wait] for wait, pid in pids.items()}
    finally:
        for worker in workers.values():
            worker.stop()
        t = settings.topics
        internal = [name for s in apps.values()
                    for name in (changelog_topic_name(s), f"{s.stream.app_id}-__assignor-__leader")]
        delete_topics(settings, [t.raw, t.normalized, t.dead_letter, *internal])
    # Measured idle: about 1 % of a core with the wait, 40-50 % without (load average 3 on 2 cores).
    assert used[100] * 5 < used[0], used


# ------------------------------------------------------------------------------------------ setting and guard
def test_zero_installs_nothing() -> None:
    assert not install_empty_fetch_wait(0)
    assert inspect.getattr_static(Fetcher, "_proc_fetch_request") is AIOKAFKA_FETCH
    assert installed_wait_seconds() == 0.0


def test_installing_is_idempotent_and_zero_removes_it() -> None:
    assert install_empty_fetch_wait(100)
    wrapped = inspect.getattr_static(Fetcher, "_proc_fetch_request")
    assert wrapped is not AIOKAFKA_FETCH
    assert install_empty_fetch_wait(250)
    assert inspect.getattr_static(Fetcher, "_proc_fetch_request") is wrapped  # not wrapped twice
    assert installed_wait_seconds() == 0.25
    assert not install_empty_fetch_wait(0)
    assert inspect.getattr_static(Fetcher, "_proc_fetch_request") is AIOKAFKA_FETCH


def test_the_worker_installs_the_configured_wait(settings: Settings) -> None:
    build_app(settings)
    assert installed_wait_seconds() == Settings().stream.empty_fetch_wait_ms / 1000 == 0.1
    build_app(settings.model_copy(update={"stream": settings.stream.model_copy(update={"empty_fetch_wait_ms": 40})}))
    assert installed_wait_seconds() == 0.04
    build_app(settings.model_copy(update={"stream": settings.stream.model_copy(update={"empty_fetch_wait_ms": 0})}))
    assert inspect.getattr_static(Fetcher, "_proc_fetch_request") is AIOKAFKA_FETCH


@pytest.mark.parametrize("value", [-1, 1501, "soon"])
def test_the_setting_is_bounded(value: object) -> None:
    with pytest.raises(ValidationError, match="empty_fetch_wait_ms"):
        Settings(stream={"empty_fetch_wait_ms": value})


async def _other_signature(self: Any, node_id: Any, request: Any) -> bool:
    return False


def _not_a_coroutine(self: Any, assignment: Any, node_id: Any, request: Any) -> bool:
    return False


@pytest.mark.parametrize(("replacement", "problem"), [
    (None, "has no _proc_fetch_request"),
    (_other_signature, "takes ('self', 'node_id', 'request')"),
    (_not_a_coroutine, "is not a coroutine function"),
])
def test_an_aiokafka_without_the_expected_method_gets_a_warning_and_no_patch(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, replacement: Any, problem: str) -> None:
    warnings = warnings_of_refused_install(monkeypatch, caplog, Fetcher, "_proc_fetch_request", replacement,
                                           lambda: install_empty_fetch_wait(100), "streams.fetch_wait",
                                           [fetch_wait.HOOK])
    assert inspect.getattr_static(Fetcher, "_proc_fetch_request", None) is replacement
    assert installed_wait_seconds() == 0.0
    assert len(warnings) == 1 and problem in warnings[0] and "stream.empty_fetch_wait_ms" in warnings[0], warnings
