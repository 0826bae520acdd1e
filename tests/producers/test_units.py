"""Pure parts of the producer: batching, delivered-position tracking, the state file, the live event log reader."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import evtx
import pytest

from producers.adapters.json_formats import RecordFormatError, keywords_from_names, keywords_hex, map_json_record
from producers.adapters.wineventlog import LiveEventLogSource, bookmark_xml
from producers.batching import Batcher
from producers.checkpoint import ProducerState, ProgressTracker, load_state, save_state
from producers.kafka_sink import KafkaBatchSink
from producers.timeutil import iso_to_ticks, ticks_to_iso
from secstream.config import Settings
from secstream.dead_letter import MAX_HEADER_TEXT
from tests.conftest import CORPUS

SECURITY_EVTX = CORPUS / "omerbenamram__evtx/samples/security.evtx"


def _event(host: str, size: int = 0) -> dict[str, Any]:
    return {"computer": host, "provider_name": "p", "channel": "Security", "rendered_message": "x" * size,
            "user_data_xml": None, "keywords": None, "provider_guid": None, "user_id": None, "activity_id": None,
            "event_data": [{"name": "a", "value": "b"}]}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_batches_per_host_bounded_by_count_bytes_and_age() -> None:
    clock = Clock()
    batcher = Batcher(max_events=3, max_bytes=2000, max_age=1.0, clock=clock)
    ready = []
    for i in range(7):
        ready += batcher.add(_event("A" if i % 2 == 0 else "B"))
    assert [(b.host, len(b.events)) for b in ready] == [("A", 3), ("B", 3)]
    assert len({b.batch_id for b in ready}) == 2 and [b.sequence for b in ready] == [0, 1]
    big = batcher.add(_event("A", size=1900))  # does not fit next to the open A event
    assert [(b.host, len(b.events)) for b in big] == [("A", 1), ("A", 1)]
    clock.now = 0.5
    assert batcher.due() == []
    batcher.add(_event("C"))
    clock.now = 1.2
    assert batcher.due() == []  # C opened at 0.5
    clock.now = 1.6
    assert [b.host for b in batcher.due()] == ["C"]
    assert batcher.open_events == 0


def test_rare_hosts_batches_go_out_from_the_add_that_reaches_the_lag_bound() -> None:
    """An open batch holds back its sources' checkpoints: it is ready once ``max_lag`` events were taken since it
    opened (its own first included), returned by that ``add``, oldest first, not left for ``max_age``."""
    batcher = Batcher(max_events=4, max_lag=10, max_age=3600, clock=Clock())
    assert batcher.add(_event("B")) == [] and batcher.add(_event("C")) == []
    out = [[b.host for b in batcher.add(_event("A"))] for _ in range(12)]
    assert out == [[], [], [], ["A"], [], [], [], ["A", "B"], ["C"], [], [], ["A"]]
    assert batcher.due() == [] and batcher.open_events == 0


def test_batch_id_stays_with_the_batch() -> None:
    batcher = Batcher(max_events=2)
    batcher.add(_event("A"))
    (batch,) = batcher.add(_event("A"))
    record = batch.as_record("agent")
    assert record["batch_id"] == batch.batch_id == batch.as_record("agent")["batch_id"]
    assert set(record) == {"host", "batch_id", "sequence", "agent_id", "send_time_us", "events"}


def test_checkpoint_never_passes_an_unacknowledged_event() -> None:
    tracker = ProgressTracker()
    marks_a: dict[Any, int] = {}
    marks_b: dict[Any, int] = {}
    # One source, two hosts interleaved: positions 1..6, odd -> batch A, even -> batch B.
    for position in range(1, 7):
        segment = tracker.read("f", position, sent=True)
        target = marks_a if position % 2 else marks_b
        target[segment] = target.get(segment, 0) + 1
    tracker.source_done("f")
    tracker.delivered(marks_b)
    assert "f" not in tracker.committed  # position 1 (batch A) is still out
    tracker.delivered(marks_a)
    assert tracker.committed["f"] == 6


def test_checkpoint_moves_batch_by_batch_and_past_filtered_events() -> None:
    tracker = ProgressTracker()
    first = {tracker.read("f", 1, sent=True): 1}
    tracker.seal(first)
    tracker.read("f", 2, sent=False)  # filtered out: done when read, but behind batch 1
    second = {tracker.read("f", 3, sent=True): 1}
    assert "f" not in tracker.committed
    tracker.delivered(first)
    assert tracker.committed["f"] == 1  # 2 shares a segment with the unacknowledged 3: re-read (and dropped) later
    tracker.delivered(second)
    assert tracker.committed["f"] == 3


def test_state_file_round_trip_and_damage(tmp_path: Path) -> None:
    path = tmp_path / "state" / "checkpoints.json"
    assert load_state(path) == ProducerState()
    save_state(path, ProducerState({"a.evtx": 12, "b.json": 4096}, 7, {"Security": "<BookmarkList/>"}))
    assert load_state(path) == ProducerState({"a.evtx": 12, "b.json": 4096}, 7, {"Security": "<BookmarkList/>"})
    assert [p.name for p in path.parent.iterdir()] == ["checkpoints.json"]  # no temporary file left
    path.write_text("{broken")
    with pytest.raises(ValueError, match="unreadable"):
        load_state(path)


def test_time_parsing_keeps_100ns() -> None:
    ticks = iso_to_ticks("2019-03-19T23:34:25.4590163Z")
    assert ticks % 10_000_000 == 4590163
    assert ticks_to_iso(ticks) == "2019-03-19T23:34:25.4590163Z"
    assert iso_to_ticks("2019-03-19T23:34:25.459016345Z") == ticks  # beyond 100 ns: truncated
    assert iso_to_ticks("2019-03-20T01:34:25.4590163+02:00") == ticks
    assert iso_to_ticks("2020-08-07 10:32:22") == iso_to_ticks("2020-08-07T10:32:22Z")


def test_keywords_forms() -> None:
    assert keywords_hex(-9214364837600034816) == "0x8020000000000000"  # NXLog writes the mask signed
    assert keywords_from_names(["Audit Success"], "Security") == "0x8020000000000000"
    assert keywords_from_names(["Audit Failure"], "security") == "0x8010000000000000"
    assert keywords_from_names(["Classic"], "System") == "0x80000000000000"
    assert keywords_from_names(["Some provider keyword"], "System") is None


class RecordedEventLog:
    """The EventLogApi on a recorded stream of rendered XML: honours bookmarks like EvtSubscribe does."""

    def __init__(self, rendered: list[str], chunks: int = 100) -> None:
        self.rendered = rendered
        self.chunks = chunks
        self.subscriptions: list[tuple[str, str, str | None]] = []
        self.closed = 0

    def subscribe(self, channel: str, query: str, bookmark_xml: str | None) -> Any:
        self.subscriptions.append((channel, query, bookmark_xml))
        after = int(re.search(r"RecordId='(\d+)'", bookmark_xml).group(1)) if bookmark_xml else 0  # type: ignore[union-attr]
        pending = [x for x in self.rendered
                   if int(re.search(r"<EventRecordID>(\d+)<", x).group(1)) > after]  # type: ignore[union-attr]
        return iter([pending[i:i + self.chunks] for i in range(0, len(pending), self.chunks)] + [[]])

    def next_xml(self, subscription: Any, count: int, timeout_ms: int) -> list[str]:
        return next(subscription, [])

    def close(self, subscription: Any) -> None:
        self.closed += 1


@pytest.fixture(scope="module")
def recorded() -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return [r["data"] for r in evtx.PyEvtxParser(str(SECURITY_EVTX)).records() if r is not None]


def test_live_event_log_reads_and_resumes_from_a_bookmark(recorded: list[str]) -> None:
    api = RecordedEventLog(recorded)
    source = LiveEventLogSource("Security", api=api)
    first = list(source.read(None, agent_id="host-1"))
    assert len(first) == 2261 and [p for _, p in first] == list(range(1, 2262))
    assert first[0][0]["provenance"]["source_format"] == "wineventlog"
    assert api.subscriptions[0] == ("Security", "*", None) and api.closed == 1
    resumed = list(source.read(2000))
    assert [p for _, p in resumed] == list(range(2001, 2262))
    assert api.subscriptions[1][2] == bookmark_xml("Security", 2000)
    assert "RecordId='2000'" in api.subscriptions[1][2]


@pytest.mark.parametrize(("record", "fmt", "message"), [
    ({"EventID": 4624, "Channel": "Security", "Hostname": "h", "TimeCreated": "2020-10-22T18:33:27.000Z",
      "ProviderGuid": []}, "otrf", "provider_guid is a JSON list"),
    ({"winlog": {"event_id": 4624}, "event": 1}, "winlogbeat", "unexpected value in a winlogbeat record"),
])
def test_json_values_of_the_wrong_type_are_a_record_error(record: dict[str, Any], fmt: str, message: str) -> None:
    """Found by fuzzing: such a record stopped the whole producer instead of being dead-lettered alone."""
    with pytest.raises(RecordFormatError, match=message):
        map_json_record(record, {"source_format": fmt, "read_time_us": 0}, fmt)


class _RecordingProducer:
    """Stands in for confluent_kafka.Producer: keeps what ``produce`` was given."""

    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def produce(self, topic: str, **record: Any) -> None:
        self.records.append((topic, record))


def test_dead_letter_headers_keep_a_long_reason_whole_characters() -> None:
    producer = _RecordingProducer()
    sink = KafkaBatchSink(Settings(), "agent-1", lambda batch: None, 1 << 20, producer=producer)  # type: ignore[arg-type]
    reason = "record 7: " + "\u20ac" * 5000  # 3 bytes per character: a byte cut would keep a third of it
    sink.dead_letter(reason, b"<Event>", "record 7")
    [(topic, record)] = producer.records
    headers = dict(record["headers"])
    assert topic == Settings().topics.dead_letter and record["value"] == b"<Event>"
    assert headers["secstream.stage"] == b"producer" and headers["secstream.source"] == b"record 7"
    assert headers["secstream.reason"].decode("utf-8") == reason[:MAX_HEADER_TEXT]
