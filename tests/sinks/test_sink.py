"""The sink end to end: real broker, real SDK, the Logs Ingestion API emulator."""

from __future__ import annotations

import gzip
import itertools
import json
import threading

import orjson
import pytest
from confluent_kafka import Producer

from secstream.config import Settings
from secstream.kafka import producer_config
from secstream.lifecycle import run_stage
from sinks.request_builder import TRUNCATED_MARK
from sinks.retry import FatalSinkError
from sinks.runner import SinkStage, group_id, run_sinks
from tests.sinks.helpers import (
    committed_offsets,
    end_offsets,
    origin_ids,
    produce_rows,
    read_topic,
    stored_counts,
)
from workspace.testing import WorkspaceEmulator

pytestmark = pytest.mark.integration


def run_sink(settings: Settings, destination_index: int = 0, idle: float = 1.5) -> SinkStage:
    stage = SinkStage(settings, settings.destinations[destination_index], idle_exit_seconds=idle)
    run_stage(stage, checkpoint_seconds=settings.sink.checkpoint_seconds)
    return stage


def assert_fully_committed(settings: Settings, destination_index: int = 0) -> None:
    """The group's committed offset is the end of every partition that has data."""
    committed = committed_offsets(settings, group_id(settings, settings.destinations[destination_index]))
    ends = end_offsets(settings)
    assert {p: committed[p] for p, end in ends.items() if end} == {p: end for p, end in ends.items() if end}


def test_every_row_arrives_once_with_its_values_and_offsets_are_committed(
        sink_settings: Settings, workspace_emulator: WorkspaceEmulator) -> None:
    batches = produce_rows(sink_settings, 6000, 120)
    stage = run_sink(sink_settings)

    counts = stored_counts(workspace_emulator, batches)
    assert counts == dict.fromkeys(origin_ids(batches), 1)
    assert stage.totals["rows_accepted"] == 6000 and stage.totals["rows_dead_lettered"] == 0
    assert_fully_committed(sink_settings)

    # the values are the golden rows' values (absent = empty string in the workspace)
    source = {r["EventOriginId"]: r for b in batches for r in b["rows"]}
    hosts = sorted({b["computer"] for b in batches})
    stored = workspace_emulator.query(
        "SELECT EventOriginId, EventID, Account, CommandLine, EventData, Computer FROM SecurityEvent "
        f"WHERE Computer IN ({','.join('?' * len(hosts))})", hosts)
    for row in stored:
        want = source[row["EventOriginId"]]
        for column in ("EventID", "Account", "CommandLine", "EventData", "Computer"):
            assert row[column] == (want.get(column) if want.get(column) is not None else
                                   ("" if column != "EventID" else None)), column

    # the delivery log covers every offset of every partition, once, with the rows accepted
    records = [orjson.loads(m.value() or b"") for m in read_topic(sink_settings, sink_settings.topics.delivery_log)]
    assert {r["destination"] for r in records} == {"primary"}
    assert sum(r["rows_accepted"] for r in records) == 6000
    ends = end_offsets(sink_settings)
    for partition, end in ends.items():
        ranges = sorted((r["first_offset"], r["last_offset"]) for r in records if r["partition"] == partition)
        if end == 0:
            assert not ranges
            continue
        assert ranges[0][0] == 0 and ranges[-1][1] == end - 1
        assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(ranges))


def test_a_429_storm_is_ridden_out_honouring_retry_after(
        sink_settings: Settings, workspace_emulator: WorkspaceEmulator) -> None:
    batches = produce_rows(sink_settings, 3000, 100)
    before = workspace_emulator.metrics().get("requests.429", 0)
    with workspace_emulator.faults(schedule=["429"] * 8, retry_after=1):
        stage = run_sink(sink_settings)
    assert stored_counts(workspace_emulator, batches) == dict.fromkeys(origin_ids(batches), 1)
    assert workspace_emulator.metrics().get("requests.429", 0) - before == 8
    assert stage.totals["rows_accepted"] == 3000
    assert_fully_committed(sink_settings)
    # each throttled request was sent again with the same request id, no sooner than Retry-After allowed
    throttled = workspace_emulator.query(
        "SELECT e.ClientRequestId AS id, e.TimeGenerated AS refused, min(s._TimeReceived) AS accepted "
        "FROM DCRLogErrors e JOIN SecurityEvent s ON s._RequestId = e.ClientRequestId "
        "WHERE e.StatusCode = 429 AND s.Computer LIKE ? GROUP BY e.ClientRequestId, e.TimeGenerated",
        (batches[0]["computer"].rsplit("-HOST", 1)[0] + "%",))
    assert throttled, "no throttled request was retried under its own request id"
    for row in throttled:
        waited = _seconds(row["accepted"]) - _seconds(row["refused"])
        assert waited >= 0.9, row


def _seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.rstrip("Z")[:26]).timestamp()


def test_a_5xx_and_dropped_connection_storm_loses_nothing(
        sink_settings: Settings, workspace_emulator: WorkspaceEmulator) -> None:
    batches = produce_rows(sink_settings, 3000, 100)
    schedule = ["500", "503", "drop", "500", "503", "503", "drop", "500", "503", "500"]
    with workspace_emulator.faults(schedule=schedule):
        stage = run_sink(sink_settings)
    assert stored_counts(workspace_emulator, batches) == dict.fromkeys(origin_ids(batches), 1)
    assert stage.totals["rows_accepted"] == 3000
    assert_fully_committed(sink_settings)


def test_413_splits_requests_until_they_fit(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> None:
    from secstream.topics import delete_topics, ensure_topics

    state = tmp_path_factory.mktemp("ws-small-bodies")
    with WorkspaceEmulator(state, settings={"max_body_bytes": 40_000}) as small:
        s = Settings(kafka=settings.kafka.model_dump(), topics=settings.topics.model_dump(),
                     destinations=[small.destination("primary")],
                     sink={"checkpoint_seconds": 0.5, "retry_backoff_seconds": 0.05,
                           "group_prefix": f"sink-{settings.topics.normalized}-"})
        ensure_topics(s)
        try:
            batches = produce_rows(s, 4000, 200)
            stage = run_sink(s)
            assert stored_counts(small, batches) == dict.fromkeys(origin_ids(batches), 1)
            metrics = small.metrics()
            assert metrics.get("requests.413", 0) > 0  # the service refused the first, large requests
            assert stage.totals["rows_accepted"] == 4000
            assert_fully_committed(s)
        finally:
            delete_topics(s, [s.topics.raw, s.topics.normalized, s.topics.dead_letter, s.topics.delivery_log])


@pytest.mark.parametrize("change, expected", [
    ({"credential": {"mode": "emulator", "token": "not-a-token"}},
     ["401 from", "token was rejected", "Monitoring Metrics Publisher", "tenant id"]),
    ({"dcr_immutable_ids": ["dcr-" + "f" * 32]},
     ["404 from", "dcr-" + "f" * 32 + " was not found", "immutableId"]),
    ({"stream_name": "Custom-NoSuchStream"},
     ["400 from", "'Custom-NoSuchStream' is not declared", "streamDeclarations"]),
    ({"ca_bundle": None},
     ["TLS to", "not trusted", "ca_bundle"]),
])
def test_bad_credentials_dcr_or_stream_stop_the_sink_with_the_remedy(
        sink_settings: Settings, change: dict, expected: list[str]) -> None:
    destination = sink_settings.destinations[0].model_copy(update={})
    data = destination.model_dump(mode="python")
    data["credential"]["token"] = destination.credential.token.get_secret_value()  # type: ignore[union-attr]
    data.update(change)
    broken = sink_settings.model_copy(update={"destinations": [type(destination)(**data)]})
    produce_rows(broken, 200, 50)
    with pytest.raises(FatalSinkError) as failure:
        run_sink(broken)
    message = str(failure.value)
    for part in expected:
        assert part in message
    assert "not-a-token" not in message and "eyJ" not in message  # never the token
    assert all(o < 0 for o in committed_offsets(broken, group_id(broken, broken.destinations[0])).values())


def test_undecodable_messages_and_oversize_rows_go_to_the_dead_letter_topic_and_the_rest_arrives(
        sink_settings: Settings, workspace_emulator: WorkspaceEmulator) -> None:
    s = sink_settings.model_copy(update={"sink": sink_settings.sink.model_copy(update={"max_request_bytes": 60_000})})
    batches = produce_rows(s, 300, 30)
    # one more batch with a row too large for any request, and a message that is not a batch at all
    giant = dict(batches[0]["rows"][0], EventOriginId="00000000-0000-5000-8000-000000000001",
                 EventData="x" * 70_000, CommandLine="y" * 70_000)
    from schemas.codec import encode_security_batch

    producer = Producer(producer_config(s.kafka))
    producer.produce(s.topics.normalized, key=b"k", value=encode_security_batch(
        {"computer": batches[0]["computer"], "batch_id": "g", "source_batch_id": "g", "rows": [giant]}))
    producer.produce(s.topics.normalized, key=b"k", value=b"\x00\x00\x00\x00\xc9garbage")
    assert producer.flush(10) == 0

    stage = run_sink(s)
    assert stored_counts(workspace_emulator, batches) == dict.fromkeys(origin_ids(batches), 1)
    dead = [(dict(m.headers() or []), m.value() or b"") for m in read_topic(s, s.topics.dead_letter)]
    assert sorted(str(headers["secstream.reason"]) for headers, _ in dead) == ["b'row-too-large'", "b'undecodable'"]
    oversize = next(value for headers, value in dead if headers["secstream.reason"] == b"row-too-large")
    (row,) = json.loads(gzip.decompress(oversize))
    assert row["EventOriginId"] == giant["EventOriginId"]
    assert row["EventData"].endswith(TRUNCATED_MARK) and len(row["EventData"].encode()) <= 65_536
    assert stage.totals["rows_dead_lettered"] == 1
    assert_fully_committed(s)


def test_two_destinations_each_get_everything_and_sharding_uses_every_dcr(
        sink_settings: Settings, workspace_emulator: WorkspaceEmulator,
        sharded_workspace: WorkspaceEmulator) -> None:
    from tests.sinks.conftest import SECOND_DCR

    second = sharded_workspace.destination("secondary")
    second["dcr_immutable_ids"] = [sharded_workspace.dcr_immutable_id, SECOND_DCR]
    s = Settings(**{**sink_settings.model_dump(mode="python", exclude={"destinations", "sink"}),
                    "destinations": [workspace_emulator.destination("primary"), second],
                    "sink": {**sink_settings.sink.model_dump(), "max_request_bytes": 100_000}})
    batches = produce_rows(s, 4000, 100)
    before = {d: sharded_workspace.metrics(dcr=d).get("rows_received", 0) for d in second["dcr_immutable_ids"]}

    stages = [SinkStage(s, d, idle_exit_seconds=1.5) for d in s.destinations]
    run_sinks(s, stages, threading.Event())

    expected = dict.fromkeys(origin_ids(batches), 1)
    assert stored_counts(workspace_emulator, batches) == expected
    assert stored_counts(sharded_workspace, batches) == expected
    received = {d: sharded_workspace.metrics(dcr=d).get("rows_received", 0) - before[d] for d in before}
    assert sum(received.values()) == 4000 and all(n > 0 for n in received.values())
    for index in range(len(s.destinations)):
        assert_fully_committed(s, index)
