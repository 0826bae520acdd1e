"""A real stream worker's re-emission never reaches the workspace twice (real broker, `secstream stream`, the sink,
the workspace emulator).

The stream stage re-emits after a crash because its dedup state is older than its output. The most extreme case is
made deterministic here: a second worker with a fresh app id (no dedup state, no committed offsets) processes the
whole raw topic again, so every output message is written a second time, with the same raw positions. The sink
must deliver each event once, and the count must equal the Security events of the EVTX file, read with the EVTX
parser directly.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import evtx
import pytest
from confluent_kafka import ConsumerGroupTopicPartitions
from confluent_kafka.admin import AdminClient

from producers.adapters.sources import discover
from secstream.config import DestinationSettings, RuleSettings, Settings
from secstream.kafka import client_config
from secstream.lifecycle import run_stage
from secstream.topics import delete_topics, ensure_topics
from sinks.runner import SinkStage
from streams.app import changelog_topic_name
from tests.conftest import CORPUS
from tests.reliability.chaos import read_normalized
from tests.streams.worker_harness import Worker, end_offsets, make_batches, produce
from workspace.testing import WorkspaceEmulator

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVTX = CORPUS / "omerbenamram__evtx" / "samples" / "security.evtx"


def security_records(path: Path) -> int:
    """Distinct Security-channel records of the file (all renamed to one host: by record id and time), read with
    the EVTX parser alone."""
    seen = set()
    for record in evtx.PyEvtxParser(str(path)).records_json():
        system = json.loads(str(cast(dict[str, Any], record)["data"]))["Event"]["System"]
        if system["Channel"] == "Security":
            seen.add((int(system["EventRecordID"]), system["TimeCreated"]["#attributes"]["SystemTime"]))
    return len(seen)


def wait_processed(settings: Settings, timeout: float = 120.0) -> None:
    """Until the worker's group has committed the end of every raw partition that holds data."""
    admin = AdminClient(client_config(settings.kafka))
    group = settings.stream.app_id
    target = {p: end for p, end in end_offsets(settings, settings.topics.raw).items() if end}
    deadline = time.monotonic() + timeout
    committed: dict[int, int] = {}
    while time.monotonic() < deadline:
        result = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(10)
        committed = {tp.partition: tp.offset for tp in result.topic_partitions or []
                     if tp.topic == settings.topics.raw}
        if all(committed.get(p, -1) >= end for p, end in target.items()):
            return
        time.sleep(0.3)
    raise AssertionError(f"worker did not catch up: committed {committed}, end {target}")


@pytest.fixture
def pipeline_settings(settings: Settings, workspace_emulator: WorkspaceEmulator) -> Iterator[Settings]:
    run = uuid.uuid4().hex[:8]
    s = settings.model_copy(update={
        "rules": [RuleSettings.model_validate({"name": "all", "event_set": "All"})],
        "stream": settings.stream.model_copy(update={
            "dedup_window_seconds": 20 * 365 * 86400, "commit_interval_seconds": 0.5,
            "session_timeout_seconds": 6.0, "rebalance_timeout_seconds": 8.0}),
        "sink": settings.sink.model_copy(update={"checkpoint_seconds": 0.5, "group_prefix": f"sink-{run}-"}),
        "destinations": [DestinationSettings.model_validate(workspace_emulator.destination("reemit"))],
    })
    ensure_topics(s)
    yield s
    t = s.topics
    delete_topics(s, [t.raw, t.normalized, t.dead_letter, t.delivery_log])


def test_a_stream_reemission_reaches_the_workspace_once(pipeline_settings: Settings, tmp_path: Path,
                                                        workspace_emulator: WorkspaceEmulator) -> None:
    s = pipeline_settings
    host = f"reemit-{uuid.uuid4().hex[:8]}"
    events = [{**event, "computer": host}
              for source in discover([EVTX]) for event, _ in source.read(None, agent_id="t")]
    produce(s, make_batches(events, 100, "collector-1"))

    app_ids = []
    for name in ("first", "again"):  # the second worker has no state: it writes every output once more
        app_id = f"stream-{name}-{uuid.uuid4().hex[:6]}"
        app_ids.append(app_id)
        worker_settings = s.model_copy(update={"stream": s.stream.model_copy(update={"app_id": app_id})})
        worker = Worker(worker_settings, tmp_path, name).start()
        try:
            worker.wait_ready()
            wait_processed(worker_settings)
        finally:
            assert worker.stop() == 0, worker.log()

    messages = read_normalized(s.kafka.bootstrap_servers, s.topics.normalized)
    positions = Counter((m.partition, m.position) for m in messages)
    assert messages and all(m.position is not None for m in messages)
    assert set(positions.values()) == {2}, "each raw position written exactly twice"

    stage = SinkStage(s, s.destinations[0], idle_exit_seconds=2.0)
    run_stage(stage, checkpoint_seconds=s.sink.checkpoint_seconds)

    stored = workspace_emulator.query("SELECT EventOriginId AS id, count(*) AS n FROM SecurityEvent "
                                      "WHERE Computer = ? GROUP BY EventOriginId", [host])
    assert {r["n"] for r in stored} == {1}
    assert len(stored) == security_records(EVTX)
    assert stage.totals["reemissions_skipped"] == len(messages) // 2
    for app_id in app_ids:
        delete_topics(s, [changelog_topic_name(s.model_copy(update={"stream": s.stream.model_copy(
            update={"app_id": app_id})})), f"{app_id}-__assignor-__leader"])
