"""The sink's per-Computer summaries: what is counted, what is written to Kafka, how `status` folds them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from confluent_kafka import Producer

from secstream.config import Settings
from secstream.kafka import producer_config
from secstream.status import StatusRecorder, parse_duration, parse_time, read_summaries, summarise
from secstream.topics import TopicSpec, delete_topics, ensure_topics


@dataclass(frozen=True)
class Segment:  # the shape of sinks.request_builder.Segment
    partition: int
    offset: int
    rows: int


def rows(computer: str, *times: str) -> list[dict[str, str]]:
    return [{"Computer": computer, "TimeGenerated": t} for t in times]


def test_durations_and_times() -> None:
    assert [parse_duration(t) for t in ("15m", "2h", "90s", "90", "1.5d", "1w")] == [900, 7200, 90, 90, 129600,
                                                                                     604800]
    for bad in ("", "15 minutes", "-5m", "0", "m"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    when = parse_time("2023-04-10T07:47:01.9710164Z")
    assert when is not None and (when.year, when.second, when.microsecond) == (2023, 1, 971016)
    assert parse_time("") is None and parse_time("yesterday") is None


@pytest.fixture
def status_settings(settings: Settings) -> Iterator[Settings]:
    s = settings.model_copy(update={"status": settings.status.model_copy(update={"interval_seconds": 3600.0})})
    ensure_topics(s, [TopicSpec(s.topics.status, 1, "status test")])
    yield s
    delete_topics(s, [s.topics.status])


@pytest.mark.integration
def test_accepted_rows_become_summaries_that_status_folds(status_settings: Settings) -> None:
    s = status_settings
    producer = Producer(producer_config(s.kafka))
    recorder = StatusRecorder(s, "primary")
    # A forwarding host's batch: two rows of its own, one of another Computer; split over two requests.
    recorder.took(0, 10, "WEF-01", rows("WEF-01", "2024-01-01T00:00:02.0000000Z", "2024-01-01T00:00:01.0000000Z")
                  + rows("DC-01", "2024-01-01T00:00:03.0000000Z"))
    recorder.took(1, 4, "DC-02", rows("DC-02", "2024-01-01T00:00:09.0000000Z"))  # dead-lettered below
    recorder.took(2, 7, "WS-01", rows("WS-01", "2024-01-01T00:00:05.0000000Z"))  # partition given up below
    recorder.resolved([Segment(0, 10, 2)], accepted=True)
    assert recorder.emit(producer, force=True) == 0  # the message is not finished yet
    recorder.resolved([Segment(0, 10, 1)], accepted=True)
    recorder.resolved([Segment(1, 4, 1)], accepted=False)
    recorder.resolved([Segment(1, 4, 1)], accepted=True)  # a finished message is not counted again
    recorder.forget([2])
    recorder.resolved([Segment(2, 7, 1)], accepted=True)
    assert recorder.emit(producer) == 0  # the interval has not passed
    assert recorder.emit(producer, force=True) == 2  # WEF-01 and DC-01 (partition 0); DC-02 got nothing
    recorder.took(0, 11, "WEF-01", rows("WEF-01", "2024-01-01T00:00:00.5000000Z"))
    recorder.resolved([Segment(0, 11, 1)], accepted=True)
    assert recorder.emit(producer, force=True) == 1
    assert producer.flush(10) == 0

    records = read_summaries(s, int((time.time() - 60) * 1000))
    assert len(records) == 3
    latest = records[-1]
    assert (latest["computer"], latest["rows"], latest["last_time_generated"]) == (
        "WEF-01", 1, "2024-01-01T00:00:02.0000000Z")  # the newest time seen, not the last row's

    folded = {c.computer: c for c in summarise(records, [], s, time.time(), 900, 300)}
    assert sorted(folded) == ["DC-01", "WEF-01"]
    assert {name: c.rows_in_window for name, c in folded.items()} == {"DC-01": 1, "WEF-01": 3}
    assert folded["WEF-01"].events_per_minute == pytest.approx(3 * 60 / 300)
    assert folded["DC-01"].partition == 0 and not folded["DC-01"].silent
    generated = folded["DC-01"].last_time_generated
    assert generated is not None and generated.second == 3
    assert all(c.silent for c in summarise(records, [], s, time.time() + 901, 900, 300))


@pytest.mark.integration
def test_without_the_status_topic_the_recorder_stands_aside(settings: Settings) -> None:
    recorder = StatusRecorder(settings, "primary")  # topics.status was never created
    recorder.took(0, 0, "DC-01", rows("DC-01", "2024-01-01T00:00:00.0000000Z"))
    recorder.resolved([Segment(0, 0, 1)], accepted=True)
    producer = Producer(producer_config(settings.kafka))
    assert recorder.emit(producer, force=True) == 0
    assert producer.flush(5) == 0  # nothing waits for a topic that does not exist


class _CapturingProducer:
    """Stands in for confluent_kafka.Producer: keeps what would be written."""

    def __init__(self, topic: str) -> None:
        self.values: list[bytes] = []
        self._topics = {topic: None}

    def list_topics(self, timeout: float) -> object:
        return type("Metadata", (), {"topics": self._topics})()

    def produce(self, topic: str, key: bytes, value: bytes, on_delivery: object) -> None:
        self.values.append(value)

    def poll(self, timeout: float) -> int:
        return 0


@pytest.mark.parametrize("batch", [
    # one host: counted without a loop per row; the newest time wins whatever the row order; empty times ignored
    [{"Computer": "DC-01", "TimeGenerated": "2024-01-01T00:00:02.0000000Z"},
     {"Computer": "DC-01", "TimeGenerated": "2024-01-01T00:00:09.0000000Z"},
     {"Computer": "DC-01"}, {"Computer": "DC-01", "TimeGenerated": "2024-01-01T00:00:05.0000000Z"}],
    # rows without a Computer belong to the message's host (the per-row path)
    [{"TimeGenerated": "2024-01-01T00:00:09.0000000Z"}, {"Computer": "DC-01"},
     {"Computer": "DC-01", "TimeGenerated": "2024-01-01T00:00:01.0000000Z"}, {"Computer": "DC-01"}],
])
def test_a_hosts_rows_and_newest_time_are_counted_either_way(settings: Settings, batch: list[dict[str, str]]) -> None:
    import orjson

    recorder = StatusRecorder(settings, "primary")
    recorder.took(0, 3, "DC-01", batch)
    recorder.resolved([Segment(0, 3, 4)], accepted=True)
    producer = _CapturingProducer(settings.topics.status)
    assert recorder.emit(producer, force=True) == 1  # type: ignore[arg-type]
    (record,) = [orjson.loads(v) for v in producer.values]
    assert (record["computer"], record["rows"], record["last_time_generated"]) == (
        "DC-01", 4, "2024-01-01T00:00:09.0000000Z")
