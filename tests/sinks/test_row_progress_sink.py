"""A sink abandoned in the middle of large messages (nothing closed, nothing drained), then a new one: the rows
of requests the first had finished are not sent again; only those in flight may come twice (real broker, real
SDK, the workspace emulator)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from secstream.config import DestinationSettings, Settings, SinkSettings
from secstream.kafka import consumer_config
from secstream.lifecycle import run_stage
from sinks.reemission import decode_marks
from sinks.request_builder import Request, RequestBuilder
from sinks.retry import Backoff, Deliverer, Placed, Target
from sinks.row_progress import decode_progress
from sinks.runner import SinkStage, group_id
from sinks.service import IngestionService
from tests.sinks.helpers import origin_ids, produce_rows, stored_counts
from tests.sinks.rows import make_batches
from workspace.testing import WorkspaceEmulator

pytestmark = pytest.mark.integration


class CountingSink(SinkStage):
    """The sink, counting the rows handed to the upload pool (what can be in flight at any moment)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rows_submitted = 0
        self._lock = threading.Lock()

    def _deliver(self, request: Request, dcr: str) -> list[Placed]:
        with self._lock:
            self.rows_submitted += request.row_count
        return super()._deliver(request, dcr)

    @property
    def rows_unresolved(self) -> int:
        return self.rows_submitted - self.totals["rows_accepted"] - self.totals["rows_dead_lettered"]

    def abandon(self) -> None:
        """As a SIGKILL leaves it: no drain, no final commit (the commits already sent still land)."""
        self._stopping.set()  # requests being retried give up; on revoke nothing is drained or committed
        self._executor.shutdown(wait=True, cancel_futures=True)  # a request already sent may still be stored
        assert self.consumer is not None and self.producer is not None
        self.consumer.close()
        self.producer.flush(10)
        self.service.close()


def committed_metadata(settings: Settings) -> list[str]:
    consumer = Consumer(consumer_config(settings.kafka, group_id(settings, settings.destinations[0])))
    try:
        topic = settings.topics.normalized
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return [tp.metadata or "" for tp in consumer.committed([TopicPartition(topic, p) for p in parts], timeout=10)]
    finally:
        consumer.close()


@pytest.mark.parametrize("seed", [3, 11])
def test_abandoned_mid_message_restart_resends_only_rows_in_flight(
        sink_settings: Settings, workspace_emulator: WorkspaceEmulator, seed: int) -> None:
    total, per_message = 3000, 500
    settings = sink_settings.model_copy(update={"sink": sink_settings.sink.model_copy(update={
        "max_request_bytes": 60_000, "max_in_flight": 4, "progress_commit_interval_ms": 0,
        "checkpoint_seconds": 30.0})})  # no checkpoint commit: only the commits made as requests finish
    batches = produce_rows(settings, total, per_message, computers=2)
    expected = origin_ids(batches)

    first = CountingSink(settings, settings.destinations[0])
    # slow answers in random order: requests finish out of order, several messages are partly delivered
    with workspace_emulator.faults(rate_slow=0.5, slow_seconds=0.3, seed=seed):
        first.start()
        deadline = time.monotonic() + 90
        while first.totals["rows_accepted"] < total // 3 and time.monotonic() < deadline:
            first.run_once()
        assert total // 3 <= first.totals["rows_accepted"] < total, "finished (or stalled) before the abandon point"
        in_flight = first.rows_unresolved  # handed to the pool, not yet resolved: the only rows allowed twice
        first.abandon()
    assert any(decode_progress(m) is not None for m in committed_metadata(settings))
    # the re-emission marks live on in the same metadata
    assert any(decode_marks(m) is not None for m in committed_metadata(settings) if m)

    second = SinkStage(settings, settings.destinations[0], idle_exit_seconds=1.5)
    run_stage(second, checkpoint_seconds=0.5)

    counts = stored_counts(workspace_emulator, batches)
    assert set(counts) == expected  # every row arrived
    duplicates = sum(counts.values()) - total
    assert duplicates <= in_flight, (duplicates, in_flight)
    assert second.totals["rows_delivered_earlier"] > 0  # partly delivered messages were resumed, not resent
    print(f"abandoned with {first.totals['rows_accepted']} rows accepted, {in_flight} unresolved; the second sink "
          f"skipped {second.totals['rows_delivered_earlier']} rows delivered before, {duplicates} came twice")


def test_parts_of_a_split_request_are_reported_as_each_is_stored(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A request the service refuses as too large (413) goes out in parts; each part is reported as soon as the
    workspace stored it, so the sink records it before the other parts are done."""
    batch = make_batches(400, 400, 1)[0]
    builder = RequestBuilder()
    builder.add(0, 5, batch["computer"], batch["rows"])
    (request,) = builder.drain()
    state = tmp_path_factory.mktemp("ws-small-parts")
    with WorkspaceEmulator(state, settings={"max_body_bytes": 40_000}) as small:
        destination = DestinationSettings.model_validate(small.destination("primary"))
        sink = SinkSettings(retry_backoff_seconds=0.05)
        service = IngestionService(destination, sink)
        reported: list[tuple[int, int]] = []  # (rows reported so far, rows stored when reported)

        def on_placed(placed: Placed) -> None:
            assert placed.dead_letter is None
            reported.append((sum(r for r, _ in reported[-1:]) + placed.request.row_count, small.count()))

        try:
            deliverer = Deliverer(send=service.send, target_for=lambda dcr: Target("t", "e", dcr, "s", "m"),
                                  max_wire_bytes=sink.max_request_bytes, gzip_level=1, backoff=Backoff(0.05, 0.5),
                                  stop=threading.Event())
            placed = deliverer.deliver(request, destination.dcr_immutable_ids[0], on_placed)
        finally:
            service.close()
    assert len(placed) == len(reported) > 1
    assert all(stored >= so_far for so_far, stored in reported)
    assert reported[0][0] < 400 and reported[-1][0] == 400
    assert reported[0][1] < 400  # the first part was reported before the last one was even sent
    rows = [(s.offset, i) for p in placed for s in p.request.segments for i in range(s.first, s.end)]
    assert rows == [(5, i) for i in range(400)]
