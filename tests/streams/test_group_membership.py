"""After ILLEGAL_GENERATION the stream worker's consumer rejoins as the same member (``streams.group_membership``).

On the real broker: a commit that races a peer's LeaveGroup gets ILLEGAL_GENERATION (the broker moves the
generation on at once). aiokafka as shipped then joins under a new member id and, because the broker keeps the old
id as the group's leader, never gets its partitions back (seen as a stream worker that stopped committing after a
partition move). With the wrappers it rejoins at once as the same member and owns every partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import AIOKafkaClient, CoordinationType
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import CommitFailedError
from aiokafka.protocol.commit import OffsetCommitResponse_v2
from aiokafka.protocol.group import (
    HeartbeatResponse_v1,
    JoinGroupResponse_v2,
    LeaveGroupRequest,
    LeaveGroupResponse_v1,
    SyncGroupResponse_v1,
)

from secstream.config import Settings
from streams import group_membership
from streams.app import build_app
from streams.group_membership import carries_illegal_generation, install_keep_member_id, uninstall_keep_member_id
from tests.streams.hook_support import library_as_shipped, scratch_topics, warnings_of_refused_install

AIOKAFKA_METHODS = {name: inspect.getattr_static(GroupCoordinator, name) for name in ("_send_req", "reset_generation")}
PARTITIONS = 3
RECOVERY_SECONDS = 20.0


@pytest.fixture(autouse=True)
def _aiokafka_as_shipped() -> Iterator[None]:
    yield from library_as_shipped(uninstall_keep_member_id)


@pytest.fixture
def topic(settings: Settings) -> Iterator[str]:
    with scratch_topics(settings, [settings.topics.raw], PARTITIONS, "group membership test"):
        yield settings.topics.raw


@asynccontextmanager
async def group_member(settings: Settings, topic: str, group: str) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka.bootstrap_servers, group_id=group,
                                enable_auto_commit=False, auto_offset_reset="earliest", session_timeout_ms=10_000,
                                heartbeat_interval_ms=1_000)
    await consumer.start()
    try:
        yield consumer
    finally:
        await asyncio.wait_for(consumer.stop(), 15)


def member_id(consumer: AIOKafkaConsumer) -> str:
    return str(consumer._coordinator.member_id)


async def poll(consumer: AIOKafkaConsumer) -> None:
    """One short poll. aiokafka's getmany waits for an assignment regardless of its timeout: bound it here."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(consumer.getmany(timeout_ms=200), 1.0)


async def poll_until(condition: Any, *consumers: AIOKafkaConsumer, timeout: float = RECOVERY_SECONDS) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.gather(*(poll(c) for c in consumers))
        if condition():
            return True
    return False


async def owns_all_and_commits(consumer: AIOKafkaConsumer, topic: str) -> bool:
    """Polls until the consumer owns every partition and a commit in its generation is accepted."""
    deadline = time.monotonic() + RECOVERY_SECONDS
    while time.monotonic() < deadline:
        await poll(consumer)
        if len(consumer.assignment()) == PARTITIONS:
            try:
                await asyncio.wait_for(consumer.commit({TopicPartition(topic, 0): 0}), 5)
                return True
            except (CommitFailedError, TimeoutError):
                continue
    return False


# ------------------------------------------------------------------------------------------ on the real broker
def test_a_commit_racing_a_peer_leaving_rejoins_as_the_same_member(settings: Settings, topic: str) -> None:
    assert install_keep_member_id()
    group = f"membership-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        async with group_member(settings, topic, group) as staying:
            assert await poll_until(lambda: len(staying.assignment()) == PARTITIONS, staying)
            async with group_member(settings, topic, group) as leaving:
                assert await poll_until(lambda: staying.assignment() and leaving.assignment(), staying, leaving)
            # `leaving` has sent LeaveGroup; `staying` still holds its old generation.
            before = member_id(staying)
            with pytest.raises(CommitFailedError):  # the broker answered ILLEGAL_GENERATION
                await staying.commit({next(iter(staying.assignment())): 0})
            assert await owns_all_and_commits(staying, topic), "the member did not get its partitions back"
            assert member_id(staying) == before

    asyncio.run(scenario())


def test_a_member_the_group_no_longer_knows_joins_under_a_new_id(settings: Settings, topic: str) -> None:
    """UNKNOWN_MEMBER_ID still resets the id: the member is removed by a LeaveGroup sent in its name."""
    assert install_keep_member_id()
    group = f"membership-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        client = AIOKafkaClient(bootstrap_servers=settings.kafka.bootstrap_servers)
        await client.bootstrap()
        try:
            async with group_member(settings, topic, group) as member:
                assert await poll_until(lambda: len(member.assignment()) == PARTITIONS, member)
                before = member_id(member)
                coordinator = await client.coordinator_lookup(CoordinationType.GROUP, group)
                response = await client.send(coordinator, LeaveGroupRequest(group, before))
                assert response.error_code == 0
                assert await poll_until(lambda: member_id(member) not in ("", before), member), member_id(member)
                assert await owns_all_and_commits(member, topic)
        finally:
            await client.close()

    asyncio.run(scenario())


# ------------------------------------------------------------------------------------------ which responses
@pytest.mark.parametrize(("response", "keep"), [
    (HeartbeatResponse_v1(throttle_time_ms=0, error_code=22), True),
    (SyncGroupResponse_v1(throttle_time_ms=0, error_code=22, member_assignment=b""), True),
    (OffsetCommitResponse_v2(topics=[("t", [(0, 22), (1, 22)])]), True),
    (OffsetCommitResponse_v2(topics=[("t", [(0, 0), (1, 22)]), ("u", [(0, 0)])]), True),
    (HeartbeatResponse_v1(throttle_time_ms=0, error_code=25), False),  # UNKNOWN_MEMBER_ID
    (HeartbeatResponse_v1(throttle_time_ms=0, error_code=27), False),  # REBALANCE_IN_PROGRESS
    (JoinGroupResponse_v2(throttle_time_ms=0, error_code=25, generation_id=-1, group_protocol="",
                          leader_id="", member_id="", members=[]), False),
    (LeaveGroupResponse_v1(throttle_time_ms=0, error_code=0), False),
    (OffsetCommitResponse_v2(topics=[("t", [(0, 22), (1, 25)])]), False),
    (OffsetCommitResponse_v2(topics=[("t", [(0, 0)])]), False),
])
def test_only_illegal_generation_keeps_the_member_id(response: Any, keep: bool) -> None:
    assert carries_illegal_generation(response) is keep


# ------------------------------------------------------------------------------------------ install and guard
def test_installing_is_idempotent_and_uninstalling_restores_aiokafka() -> None:
    assert install_keep_member_id()
    wrapped = {name: inspect.getattr_static(GroupCoordinator, name) for name in AIOKAFKA_METHODS}
    assert all(wrapped[name] is not AIOKAFKA_METHODS[name] for name in AIOKAFKA_METHODS)
    assert install_keep_member_id()
    assert {name: inspect.getattr_static(GroupCoordinator, name) for name in AIOKAFKA_METHODS} == wrapped
    uninstall_keep_member_id()
    assert {name: inspect.getattr_static(GroupCoordinator, name) for name in AIOKAFKA_METHODS} == AIOKAFKA_METHODS


def test_the_worker_installs_it(settings: Settings) -> None:
    build_app(settings)
    assert group_membership.installed()


def _other_send(self: Any, node_id: Any, request: Any) -> None:
    return None


async def _async_reset(self: Any) -> None:
    return None


@pytest.mark.parametrize(("name", "replacement", "problem"), [
    ("_send_req", None, "has no _send_req"),
    ("_send_req", _other_send, "_send_req is not a coroutine function"),
    ("reset_generation", _async_reset, "reset_generation is a coroutine function"),
    ("reset_generation", lambda self, reason: None, "reset_generation takes ('self', 'reason')"),
])
def test_an_aiokafka_without_the_expected_methods_gets_a_warning_and_no_patch(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, name: str, replacement: Any,
        problem: str) -> None:
    warnings = warnings_of_refused_install(monkeypatch, caplog, GroupCoordinator, name, replacement,
                                           install_keep_member_id, "streams.group_membership", group_membership.HOOKS)
    assert not group_membership.installed()
    other = "reset_generation" if name == "_send_req" else "_send_req"
    assert inspect.getattr_static(GroupCoordinator, other) is AIOKAFKA_METHODS[other]
    assert len(warnings) == 1 and problem in warnings[0], warnings
