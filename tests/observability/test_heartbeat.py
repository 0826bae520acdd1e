"""Optional Heartbeat-style rows: a sink with `status.heartbeat_stream` set writes one per Computer it delivered."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from secstream.config import Settings
from secstream.lifecycle import run_stage
from secstream.topics import delete_topics, ensure_topics
from sinks.heartbeat import HeartbeatWriter
from sinks.runner import SinkStage
from tests.sinks.helpers import produce_rows
from workspace.testing import WorkspaceEmulator

pytestmark = pytest.mark.integration

BUNDLED_DCR = Path(__file__).resolve().parents[2] / "workspace" / "dcrs" / "securityevent.json"
HEARTBEAT_DCR = "dcr-5ec57ea3000000000000000000000b0b"
SECURITY_EVENT_DCR = json.loads(BUNDLED_DCR.read_text())["properties"]["immutableId"]
HEARTBEAT_COLUMNS = [("TimeGenerated", "datetime"), ("Computer", "string"), ("Category", "string"),
                     ("Version", "string"), ("ComputerEnvironment", "string"),
                     ("Destination", "string"), ("LastEventTime", "datetime"), ("RowsSinceLastHeartbeat", "long")]


def heartbeat_dcr() -> dict:
    """An ARM DCR (as `az monitor data-collection rule show` prints it) for the heartbeat stream."""
    base = json.loads(BUNDLED_DCR.read_text())
    properties = base["properties"]
    return {
        **{k: v for k, v in base.items() if k != "properties"},
        "name": "dcr-secstream-heartbeat", "id": base["id"].replace("dcr-securityevent", "dcr-secstream-heartbeat"),
        "properties": {
            "immutableId": HEARTBEAT_DCR,
            "streamDeclarations": {"Custom-SecstreamHeartbeat": {
                "columns": [{"name": n, "type": t} for n, t in HEARTBEAT_COLUMNS]}},
            "destinations": properties["destinations"],
            "dataFlows": [{"streams": ["Custom-SecstreamHeartbeat"], "destinations": ["sentinelWorkspace"],
                           "transformKql": "source", "outputStream": "Custom-SecstreamHeartbeat_CL"}],
        },
    }


@pytest.fixture(scope="module")
def heartbeat_workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkspaceEmulator]:
    base = tmp_path_factory.mktemp("heartbeat-ws")
    dcrs = base / "dcrs"
    dcrs.mkdir()
    (dcrs / "securityevent.json").write_text(BUNDLED_DCR.read_text())
    (dcrs / "heartbeat.json").write_text(json.dumps(heartbeat_dcr()))
    with WorkspaceEmulator(base / "state", dcr_dir=dcrs) as ws:
        yield ws


def test_a_sink_writes_one_heartbeat_row_per_computer(settings: Settings,
                                                      heartbeat_workspace: WorkspaceEmulator) -> None:
    s = Settings(kafka=settings.kafka.model_dump(), topics=settings.topics.model_dump(),
                 destinations=[{**heartbeat_workspace.destination("hb"), "dcr_immutable_ids": [SECURITY_EVENT_DCR],
                                "stream_name": "Custom-SecurityEvent"}],
                 sink={"checkpoint_seconds": 0.5},
                 status={"heartbeat_stream": "Custom-SecstreamHeartbeat", "heartbeat_dcr": HEARTBEAT_DCR})
    ensure_topics(s)
    try:
        batches = produce_rows(s, 300, 50, computers=3)
        stage = SinkStage(s, s.destinations[0], idle_exit_seconds=1.5)
        run_stage(stage, checkpoint_seconds=s.sink.checkpoint_seconds)
        writer = stage.status.on_emit
        assert isinstance(writer, HeartbeatWriter) and writer.wait(30)
    finally:
        t = s.topics
        delete_topics(s, [t.raw, t.normalized, t.dead_letter, t.delivery_log, t.status])

    rows = heartbeat_workspace.rows("SecstreamHeartbeat_CL")
    sent: dict[str, int] = {}
    newest: dict[str, str] = {}
    for batch in batches:
        sent[batch["computer"]] = sent.get(batch["computer"], 0) + len(batch["rows"])
        newest[batch["computer"]] = max([newest.get(batch["computer"], "")]
                                        + [r["TimeGenerated"] for r in batch["rows"]])
    assert sorted(r["Computer"] for r in rows if r["Computer"] in sent) == sorted(sent)  # one each
    for row in rows:
        assert (row["Category"], row["Destination"], row["ComputerEnvironment"]) == ("secstream", "hb", "Non-Azure")
    assert {r["Computer"]: r["RowsSinceLastHeartbeat"] for r in rows} == sent
    assert {r["Computer"]: r["LastEventTime"][:19] for r in rows} == {c: t[:19] for c, t in newest.items()}
    assert heartbeat_workspace.count() == 300  # the SecurityEvent rows themselves, through the other DCR
