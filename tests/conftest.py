"""Session-wide fixtures: the real embedded broker on a free loopback port, in a temporary directory."""

from __future__ import annotations

import gc
import socket
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import CodeType

import pytest

from secstream.broker import EmbeddedBroker
from secstream.config import Settings
from workspace.testing import WorkspaceEmulator

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
CORPUS = SHARED / "corpus" / "dev"
GOLDEN = SHARED / "securityevent-golden"
REFERENCE = SHARED / "reference"
SEEDS = SHARED / "seeds"


def collections_during(code: CodeType, action: Callable[[], object]) -> int:
    """Cyclic GC runs that start while a frame of ``code`` is on the stack during ``action``, with the collector's
    threshold at 1 (any container allocation would start one)."""
    starts = 0

    def seen(phase: str, _info: dict[str, object]) -> None:
        nonlocal starts
        frame = sys._getframe()
        while frame is not None:
            if frame.f_code is code:
                starts += phase == "start"
                return
            frame = frame.f_back

    gc.callbacks.append(seen)
    old = gc.get_threshold()
    gc.set_threshold(1)
    try:
        action()
    finally:
        gc.set_threshold(*old)
        gc.callbacks.remove(seen)
    return starts


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One real Kafka-protocol broker for the whole session. Tests use unique topic names (see ``settings``)."""
    b = EmbeddedBroker(data_dir=tmp_path_factory.mktemp("broker"), port=free_port())
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def settings(broker: EmbeddedBroker) -> Settings:
    """Settings pointing at the session broker, with topic names unique to this test."""
    run = uuid.uuid4().hex[:8]
    return Settings(
        kafka={"bootstrap_servers": broker.bootstrap},
        topics={
            "raw": f"raw-{run}",
            "normalized": f"normalized-{run}",
            "dead_letter": f"dlq-{run}",
            "delivery_log": f"delivery-{run}",
            "status": f"status-{run}",
            "raw_partitions": 3,
            "normalized_partitions": 3,
        },
    )


@pytest.fixture(scope="session")
def workspace_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkspaceEmulator]:
    """One real Logs Ingestion API emulator (HTTPS subprocess) for the session: see ``workspace.testing``.

    Shared state: filter rows by something unique to your test (Computer, _RequestId), and set faults or
    limits only through ``with workspace_emulator.faults(...)`` / ``.limits(...)`` so they are undone.
    """
    with WorkspaceEmulator(tmp_path_factory.mktemp("workspace")) as emulator:
        yield emulator
