"""After ILLEGAL_GENERATION, rejoin the consumer group under the same member id, as the Java client does.

aiokafka (0.14) answers ILLEGAL_GENERATION from a Heartbeat, SyncGroup or OffsetCommit by forgetting its member
id and joining as a new member. The old member id then stays in the group until the coordinator drops it: a real
Kafka broker holds the next rebalance for up to the rebalance timeout waiting for it; the embedded noida-db never
drops it, so the new member joins as a follower of a leader that is gone and the worker never gets its partitions
back. That happens whenever a commit races a peer's LeaveGroup (noida-db moves the generation on at once).

ILLEGAL_GENERATION means the member is known but its generation is old, so the Java client keeps the member id
(KAFKA-13419) and so does kafka-python. This module makes aiokafka do the same: ``GroupCoordinator
._send_req`` notes whether the response it returns carries ILLEGAL_GENERATION, and ``reset_generation``, which the
response handlers call right after (with no await in between), keeps the member id in that case. UNKNOWN_MEMBER_ID
and every other reason still reset it. If a kept id turns out to be unknown, JoinGroup answers UNKNOWN_MEMBER_ID
and aiokafka resets it and joins again at once: one round trip, never a stall.

Both methods are private to aiokafka (checked against 0.14): the wrappers are installed only if they have the
expected form; otherwise a warning is logged and the consumer keeps aiokafka's own behaviour.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from streams.library_hooks import MethodHook

log = logging.getLogger(__name__)

ILLEGAL_GENERATION = 22  # Kafka protocol error code
_NOTE = "_secstream_illegal_generation"  # set on the coordinator by the wrapped _send_req


def installed() -> bool:
    return all(hook.installed for hook in HOOKS)


def install_keep_member_id() -> bool:
    """Keep the member id when aiokafka rejoins after ILLEGAL_GENERATION (process-wide; idempotent).

    Both methods are replaced or neither: one without the other would change nothing, or keep every id.
    """
    if all([hook.install() for hook in HOOKS]):  # a list: each hook is tried, and logs its own problem
        return True
    uninstall_keep_member_id()
    return False


def uninstall_keep_member_id() -> None:
    for hook in HOOKS:
        hook.uninstall()


def carries_illegal_generation(response: Any) -> bool:
    """Whether a group response reports ILLEGAL_GENERATION and not UNKNOWN_MEMBER_ID (which must reset the id).

    Heartbeat, JoinGroup, SyncGroup and LeaveGroup responses have one ``error_code``; OffsetCommit has one per
    partition, under ``topics``.
    """
    code = getattr(response, "error_code", None)
    if code is not None:
        return bool(code == ILLEGAL_GENERATION)
    codes = {error for _, partitions in getattr(response, "topics", None) or () for *_, error in partitions}
    return ILLEGAL_GENERATION in codes and codes <= {0, ILLEGAL_GENERATION}


def _coordinator_class() -> type:
    from aiokafka.consumer.group_coordinator import GroupCoordinator

    return GroupCoordinator


def _noting_illegal_generation(send: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    @functools.wraps(send)
    async def send_noting_illegal_generation(self: Any, request: Any) -> Any:
        setattr(self, _NOTE, False)  # a request that raises leaves no note behind
        response = await send(self, request)
        setattr(self, _NOTE, carries_illegal_generation(response))
        return response

    return send_noting_illegal_generation


def _keeping_member_id(reset: Callable[[Any], None]) -> Callable[[Any], None]:
    @functools.wraps(reset)
    def reset_generation_keeping_member_id(self: Any) -> None:
        member_id, generation = self.member_id, self.generation
        reset(self)
        if getattr(self, _NOTE, False) and member_id:
            self.member_id = member_id
            if generation != self.generation:  # an OffsetCommit response resets once per partition: log once
                log.info("group %s: generation %s is no longer current; rejoining as the same member %s",
                         self.group_id, generation, member_id)

    return reset_generation_keeping_member_id


_WITHOUT_IT = "after ILLEGAL_GENERATION the worker rejoins under a new member id, as aiokafka does by itself"
HOOKS = (
    MethodHook(_coordinator_class, "_send_req", ("self", "request"), coroutine=True, wrap=_noting_illegal_generation,
               package="aiokafka", feature="rejoining as the same member", without_it=_WITHOUT_IT, logger=log),
    MethodHook(_coordinator_class, "reset_generation", ("self",), coroutine=False, wrap=_keeping_member_id,
               package="aiokafka", feature="rejoining as the same member", without_it=_WITHOUT_IT, logger=log),
)
