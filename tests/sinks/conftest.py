"""Sink fixtures: a workspace emulator (the shared one when the suite has it), a sharded one, per-test topics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from secstream.config import Settings
from secstream.topics import delete_topics, ensure_topics
from workspace.testing import WorkspaceEmulator

BUNDLED_DCR = Path(__file__).resolve().parents[2] / "workspace" / "dcrs" / "securityevent.json"
SECOND_DCR = "dcr-5ec57ea3000000000000000000000002"


def two_dcr_dir(directory: Path) -> Path:
    """The bundled SecurityEvent DCR plus a copy with another immutable id (for sharding)."""
    directory.mkdir(parents=True, exist_ok=True)
    dcr = json.loads(BUNDLED_DCR.read_text())
    (directory / "first.json").write_text(json.dumps(dcr))
    dcr["properties"]["immutableId"] = SECOND_DCR
    dcr["name"] = dcr["name"] + "-2"
    dcr["id"] = dcr["id"] + "-2"
    (directory / "second.json").write_text(json.dumps(dcr))
    return directory


@pytest.fixture(scope="session")
def sharded_workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkspaceEmulator]:
    """A second workspace with two DCRs into the same table."""
    base = tmp_path_factory.mktemp("sink-ws-sharded")
    with WorkspaceEmulator(base / "state", dcr_dir=two_dcr_dir(base / "dcrs")) as ws:
        yield ws


@pytest.fixture
def sink_settings(settings: Settings, workspace_emulator: WorkspaceEmulator) -> Iterator[Settings]:
    """The per-test topics, created, one destination on the emulator, quick checkpoints and retries."""
    s = Settings(
        kafka=settings.kafka.model_dump(),
        topics=settings.topics.model_dump(),
        destinations=[workspace_emulator.destination("primary")],
        # consumer groups of their own: a group outlives its test on the shared broker
        sink={"checkpoint_seconds": 0.5, "retry_backoff_seconds": 0.05, "retry_backoff_max_seconds": 0.5,
              "group_prefix": f"sink-{settings.topics.normalized}-"},
    )
    ensure_topics(s)
    yield s
    t = s.topics
    delete_topics(s, [t.raw, t.normalized, t.dead_letter, t.delivery_log])
