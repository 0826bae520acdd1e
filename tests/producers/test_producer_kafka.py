"""The producer against the real embedded broker: delivery, kill -9 + restart, broker down then up."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from producers import encoded
from producers.adapters.sources import discover
from producers.batching import LAG_BATCHES
from producers.checkpoint import load_state
from producers.cli import kafka_sink_factory
from producers.stage import ProducerStage
from schemas.codec import decode_raw_batch
from secstream.broker import EmbeddedBroker
from secstream.config import RuleSettings, Settings
from secstream.lifecycle import run_stage
from secstream.topics import delete_topics, ensure_topics
from tests.conftest import CORPUS, REPO, free_port

pytestmark = pytest.mark.integration

EVTX_DIR = CORPUS / "mdecrevoisier__EVTX-to-MITRE-Attack"
NXLOG = (CORPUS / "OTRF__Security-Datasets/datasets/atomic/windows/lateral_movement/host/"
         "covenant_sharpsc_stop_dcerpc_smb_svcctl.zip")
SECURITY_EVTX = CORPUS / "omerbenamram__evtx/samples/security.evtx"
APPLICATION_EVTX = CORPUS / "sans-blue-team__DeepBlueCLI/evtx/many-events-application.evtx"

Identity = tuple[str, str, int | None, int]


def identity(event: dict[str, Any]) -> Identity:
    return (event["computer"], event["channel"], event["event_record_id"], event["time_created"])


def expected_identities(paths: list[Path]) -> Counter[Identity]:
    """What the inputs hold, read directly (their counts are checked against SOURCES.md elsewhere)."""
    found: Counter[Identity] = Counter()
    for source in discover(paths):
        found.update(identity(e) for e, _ in source.read(None))
    return found


def consume_all(bootstrap: str, topic: str) -> tuple[list[dict[str, Any]], int]:
    """Every batch on the topic (read to the end offsets), and the total value bytes."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{topic}", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        ends = {}
        for p in meta.partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        batches, size = [], 0
        remaining = {p for p, high in ends.items() if high > 0}
        deadline = time.monotonic() + 60
        while remaining and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            value, offset, partition = msg.value(), msg.offset(), msg.partition()
            assert value is not None and offset is not None and partition is not None
            batches.append(decode_raw_batch(value))
            size += len(value)
            if offset + 1 >= ends[partition]:
                remaining.discard(partition)
        assert not remaining, "topic not read to its end"
        return batches, size
    finally:
        consumer.close()


def _settings(settings: Settings, tmp_path: Path, **producer: Any) -> Settings:
    return settings.model_copy(update={"producer": settings.producer.model_copy(update={
        "state_file": tmp_path / "state.json", "batch_max_events": 50, **producer})})


@pytest.mark.parametrize("encoded_path", [True, False], ids=["evtx-encoded-in-c", "raw-event-dicts"])
def test_produce_delivers_every_event_batched_per_host(settings: Settings, tmp_path: Path, encoded_path: bool,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """EVTX and NXLog input together: with the encoded path (EVTX chunks encoded in C, the NXLog events encoded one
    by one into the same batches) and with the dict path it falls back to (SECSTREAM_NATIVE_EVTX=0)."""
    if not encoded_path:
        monkeypatch.setattr(encoded, "_NATIVE", None)
    elif not encoded.available():
        pytest.skip("producers._evtxrender is not built")
    s = _settings(settings, tmp_path)
    ensure_topics(s)
    try:
        inputs = [SECURITY_EVTX, NXLOG]
        stage = ProducerStage(s, discover(inputs), kafka_sink_factory(s))
        run_stage(stage)
        assert stage.encoded == encoded_path
        batches, _ = consume_all(s.kafka.bootstrap_servers, s.topics.raw)
        on_topic: Counter[Identity] = Counter()
        for batch in batches:
            assert {e["computer"] for e in batch["events"]} == {batch["host"]}
            assert len(batch["events"]) <= 50
            on_topic.update(identity(e) for e in batch["events"])
        assert on_topic == expected_identities(inputs)
        assert len({b["batch_id"] for b in batches}) == len(batches)
        assert stage.events_delivered == stage.events_read == 2261 + 1264
    finally:
        delete_topics(s, [s.topics.raw, s.topics.dead_letter])


def _produce_cmd(s: Settings, inputs: list[Path], extra: list[str]) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ,
           "SECSTREAM_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
           "SECSTREAM_TOPICS__RAW": s.topics.raw,
           "SECSTREAM_TOPICS__DEAD_LETTER": s.topics.dead_letter,
           "SECSTREAM_PRODUCER__STATE_FILE": str(s.producer.state_file),
           "SECSTREAM_PRODUCER__BATCH_MAX_EVENTS": "20",
           "SECSTREAM_PRODUCER__MAX_IN_FLIGHT_BYTES": str(1 << 20),
           "SECSTREAM_PRODUCER__CHECKPOINT_INTERVAL_SECONDS": "0"}
    cmd = [sys.executable, "-m", "secstream.cli", "produce", "--quiet", *extra, *map(str, inputs)]
    return cmd, env


@pytest.mark.parametrize("native_evtx", ["1", "0"], ids=["evtx-encoded-in-c", "raw-event-dicts"])
def test_kill9_then_restart_loses_nothing(settings: Settings, tmp_path: Path, native_evtx: str) -> None:
    s = _settings(settings, tmp_path)
    ensure_topics(s)
    # security.evtx holds 2 computers and the application log 6: a source's checkpoint also waits for the open
    # batch of a rarer host, which goes out at the latest LAG_BATCHES batches' worth of events later (checked as
    # events are taken: per event on the dict path, per batch-sized step on the encoded path); a crash can resend
    # that much more.
    inputs = [EVTX_DIR, SECURITY_EVTX, APPLICATION_EVTX]
    lag = LAG_BATCHES * 20 + 20
    try:
        cmd, env = _produce_cmd(s, inputs, [])
        env["SECSTREAM_NATIVE_EVTX"] = native_evtx
        first = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        state = s.producer.state_file
        deadline = time.monotonic() + 60
        while not state.exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert first.returncode == -signal.SIGKILL, "the producer finished before it could be killed"
        saved_after_kill = state.read_text()
        partial, _ = consume_all(s.kafka.bootstrap_servers, s.topics.raw)
        expected = expected_identities(inputs)
        assert 0 < sum(len(b["events"]) for b in partial) < sum(expected.values())

        second = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, timeout=240)
        assert second.returncode == 0, second.stderr.decode()[-2000:]
        assert state.read_text() != saved_after_kill

        batches, size = consume_all(s.kafka.bootstrap_servers, s.topics.raw)
        on_topic: Counter[Identity] = Counter()
        for batch in batches:
            on_topic.update(identity(e) for e in batch["events"])
        assert set(on_topic) == set(expected), "an event was lost"
        total = sum(on_topic.values())
        duplicates = total - sum(expected.values())
        # At most what was unacknowledged at the kill: the in-flight byte bound, plus open (unsent) batches, plus
        # what a rarer host's open batch held back (``lag`` above).
        bytes_per_event = size / total
        bound = (1 << 20) / bytes_per_event + 20 * len({k[0] for k in expected}) + lag
        assert 0 <= duplicates <= bound, (duplicates, bound)
    finally:
        delete_topics(s, [s.topics.raw, s.topics.dead_letter])


def test_broker_down_then_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Reading pauses at the in-flight bound while the broker is away, says so, and finishes once it is back."""
    broker = EmbeddedBroker(data_dir=tmp_path / "broker", port=free_port())
    broker.start()
    s = Settings(kafka={"bootstrap_servers": broker.bootstrap}, topics={"raw": "raw-down", "raw_partitions": 1},
                 producer={"state_file": tmp_path / "state.json", "batch_max_events": 10,
                           "max_in_flight_bytes": 1 << 20})
    ensure_topics(s)
    import producers.kafka_sink as kafka_sink

    stage = ProducerStage(s, discover([SECURITY_EVTX, NXLOG]), kafka_sink_factory(s))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_stage(stage)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    caplog.set_level(logging.WARNING, logger="producers.kafka_sink")
    old_interval = kafka_sink.WAIT_LOG_SECONDS
    kafka_sink.WAIT_LOG_SECONDS = 0.5
    thread = threading.Thread(target=run, daemon=True)
    try:
        thread.start()
        deadline = time.monotonic() + 30
        while stage.events_delivered == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stage.events_delivered > 0
        broker.stop()
        time.sleep(4.0)
        read_during_outage = stage.events_read
        peak = stage.sink.in_flight_bytes  # type: ignore[attr-defined]
        time.sleep(2.0)
        assert stage.events_read == read_during_outage, "reading must pause while nothing is acknowledged"
        assert stage.events_read < 2261 + 1264
        assert peak <= (1 << 20) + 200_000  # the bound plus at most one batch
        assert any("waiting for Kafka" in r.getMessage() for r in caplog.records)
        broker.start()
        thread.join(120)
        assert not thread.is_alive() and not errors
        assert stage.events_delivered == stage.events_read == 2261 + 1264
        batches, _ = consume_all(broker.bootstrap, "raw-down")
        on_topic = {identity(e) for b in batches for e in b["events"]}
        assert on_topic == set(expected_identities([SECURITY_EVTX, NXLOG]))
    finally:
        kafka_sink.WAIT_LOG_SECONDS = old_interval
        stage.stop.set()
        broker.stop()


def test_follow_picks_up_appended_lines(settings: Settings, tmp_path: Path) -> None:
    rows = [line for line in _nxlog_lines() if line.strip()]
    log_file = tmp_path / "nxlog.json"
    log_file.write_bytes(b"\n".join(rows[:100]) + b"\n")
    s = _settings(settings, tmp_path, follow_interval_seconds=0.2, batch_max_age_seconds=0.2)
    ensure_topics(s)
    stage = ProducerStage(s, discover([log_file]), kafka_sink_factory(s), follow=True)
    thread = threading.Thread(target=run_stage, args=(stage, stage.stop), daemon=True)
    try:
        thread.start()
        _wait_for(lambda: stage.events_delivered == 100)
        with log_file.open("ab") as f:
            f.write(b"\n".join(rows[100:250]) + b"\n")
            f.write(rows[250][:40])  # a line still being written: not read until complete
        _wait_for(lambda: stage.events_delivered == 250)
        with log_file.open("ab") as f:
            f.write(rows[250][40:] + b"\n")
        _wait_for(lambda: stage.events_delivered == 251)
        stage.stop.set()
        thread.join(30)
        assert not thread.is_alive()
        assert load_state(s.producer.state_file).positions[str(log_file.resolve())] == log_file.stat().st_size
    finally:
        stage.stop.set()
        delete_topics(s, [s.topics.raw, s.topics.dead_letter])


def _nxlog_lines() -> list[bytes]:
    with zipfile.ZipFile(NXLOG) as archive:
        return archive.read(archive.namelist()[0]).splitlines()


def _wait_for(condition: Any, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_source_side_event_set_filter(settings: Settings, tmp_path: Path) -> None:
    """With producer.source_filter the Minimal event set's rule drops the rest before sending; the checkpoint
    still reaches the end of the file."""
    from schemas.event_sets import EVENT_SETS

    s = _settings(settings, tmp_path, source_filter=True)
    s = s.model_copy(update={"rules": [RuleSettings(name="all-hosts", event_set="Minimal")]})
    ensure_topics(s)
    try:
        stage = ProducerStage(s, discover([SECURITY_EVTX]), kafka_sink_factory(s))
        run_stage(stage)
        batches, _ = consume_all(s.kafka.bootstrap_servers, s.topics.raw)
        minimal = EVENT_SETS["Minimal"]
        assert minimal is not None
        kept = Counter(identity(e) for e, _ in discover([SECURITY_EVTX])[0].read(None) if e["event_id"] in minimal)
        assert 0 < sum(kept.values()) < 2261
        assert Counter(identity(e) for b in batches for e in b["events"]) == kept
        assert load_state(s.producer.state_file).positions[str(SECURITY_EVTX.resolve())] == 2261
    finally:
        delete_topics(s, [s.topics.raw, s.topics.dead_letter])
