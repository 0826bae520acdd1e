"""`secstream stream` workers (subprocesses) on the real broker, fed with dev-corpus events (EVTX and JSON sources).

Expected counts come from the corpus files themselves, read here with the EVTX parser and plain JSON, not through
our adapters: per EventID, the Security-channel events the rule allows. Each scenario checks exactly one row per
event: two collectors sending the same events in other batches and orders, a worker restart, a partition moving to
another worker, and exactly_once across a killed worker.
"""

from __future__ import annotations

import json
import uuid
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from evtx import PyEvtxParser

from producers.adapters.sources import discover
from schemas.event_sets import ALL_CHANNELS, EVENT_SETS
from secstream.config import Settings
from secstream.topics import delete_topics
from streams.app import changelog_topic_name
from tests.conftest import CORPUS
from tests.streams.worker_harness import (
    OutputReader,
    Worker,
    counts_by_event_id,
    end_offsets,
    make_batches,
    produce,
    wait_caught_up,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

XPATH_HOST = "37L4247F27-25"  # the host of security.evtx gets its own rule, an XPath query
XPATH_IDS = {4624, 4625, 4672}
EVTX_FILES = [
    "omerbenamram__evtx/samples/security.evtx",
    "mdecrevoisier__EVTX-to-MITRE-Attack/TA0006-Credential Access/T1110.xxx-Brut force/"
    "ID4625-OpenSSH brutforce with non existing users.evtx",
    "mdecrevoisier__EVTX-to-MITRE-Attack/TA0003-Persistence/T1136-Create account/ID472, 4728 Hidden user creation.evtx",
]
JSON_FILES = [  # NXLog (with record numbers) and an OTRF export without them, which starts with a 1102
    "OTRF__Security-Datasets/datasets/atomic/windows/lateral_movement/host/covenant_sc_query_dcerpc_smb_svcctl.zip",
    "OTRF__Security-Datasets/datasets/atomic/windows/credential_access/host/psh_windows_vault_web_credentials.zip",
]
RULES = [
    {"name": "xpath-host", "computers": [XPATH_HOST],
     "xpath": ["Security!*[System[(EventID=4624 or EventID=4625 or EventID=4672)]]"]},
    {"name": "default", "event_set": "Common"},
]
SECURITY = {c.casefold() for c in ALL_CHANNELS}


# ------------------------------------------------------------------------------ ground truth from the files
def _reference_records(evtx_files: list[str]) -> Iterator[tuple[str, str, int]]:
    """(computer, channel, event id) of every record, read without our adapters."""
    for rel in evtx_files:
        for record in PyEvtxParser(str(CORPUS / rel)).records_json():
            assert record is not None
            system = json.loads(str(record["data"]))["Event"]["System"]
            event_id = system["EventID"]
            if isinstance(event_id, dict):
                event_id = event_id["#text"]
            yield system["Computer"], system["Channel"], int(event_id)
    for rel in JSON_FILES:
        with zipfile.ZipFile(CORPUS / rel) as archive:
            for member in archive.namelist():
                for line in archive.read(member).splitlines():
                    if line.strip():
                        rec = orjson.loads(line)
                        yield rec.get("Hostname") or rec.get("Computer"), rec["Channel"], int(rec["EventID"])


def expected_counts(evtx_files: list[str] = EVTX_FILES) -> Counter[int]:
    want: Counter[int] = Counter()
    common = EVENT_SETS["Common"]
    assert common is not None
    for computer, channel, event_id in _reference_records(evtx_files):
        if channel.casefold() not in SECURITY:
            continue
        if computer == XPATH_HOST:
            keep = channel.casefold() == "security" and event_id in XPATH_IDS
        else:
            keep = event_id in common
        if keep:
            want[event_id] += 1
    return want


def corpus_events(evtx_files: list[str] = EVTX_FILES) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for rel in evtx_files + JSON_FILES:
        for source in discover([CORPUS / rel]):
            events.extend(event for event, _ in source.read(None, agent_id="test-agent"))
    return events


# ---------------------------------------------------------------------------------------------- fixtures
def stream_settings(settings: Settings, **stream: Any) -> Settings:
    return settings.model_copy(update={
        "rules": [type(settings.rules[0]).model_validate(r) for r in RULES],
        "stream": settings.stream.model_copy(update={
            # The corpus logs span days to years of event time: a window that holds all of each log.
            "dedup_window_seconds": 20 * 365 * 86400,
            "app_id": f"stream-test-{uuid.uuid4().hex[:8]}", "commit_interval_seconds": 0.5,
            "session_timeout_seconds": 6.0, "rebalance_timeout_seconds": 8.0, **stream}),
    })


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    return corpus_events()


@pytest.fixture
def topics_cleanup(request: pytest.FixtureRequest) -> Iterator[list[Settings]]:
    used: list[Settings] = []
    yield used
    for s in used:
        t = s.topics
        delete_topics(s, [t.raw, t.normalized, t.dead_letter, changelog_topic_name(s),
                          f"{s.stream.app_id}-__assignor-__leader"])


def test_reference_counts_match_the_corpus_manifest(events: list[dict[str, Any]]) -> None:
    """Our reading of the files agrees with SOURCES.md (records per file) before anything else is trusted."""
    assert len(events) == 2261 + 20 + 21 + 629 + 120
    assert sum(expected_counts().values()) > 500


def test_dedup_across_collectors_restart_and_partition_move(
    settings: Settings, tmp_path: Path, events: list[dict[str, Any]], topics_cleanup: list[Settings]
) -> None:
    s = stream_settings(settings)
    topics_cleanup.append(s)
    want = expected_counts()
    worker_a = Worker(s, tmp_path, "a").start()
    reader: OutputReader | None = None
    worker_b: Worker | None = None
    try:
        worker_a.wait_ready()
        reader = OutputReader(s)
        # Collector 1: every event once, plus a message that is not a batch at all.
        produce(s, make_batches(events, 200, "collector-1"), extra=[(b"junk-host", b"\x00not avro")])
        reader.wait_rows(sum(want.values()))
        assert counts_by_event_id(reader.rows) == want
        assert len({r["EventOriginId"] for r in reader.rows}) == len(reader.rows)
        dlq = OutputReader(s, s.topics.dead_letter)
        dlq.poll(2.0)
        reasons = [dict(m.headers())["secstream.reason"] for m in dlq.messages]
        assert reasons == [b"undecodable"] and dlq.messages[0].value() == b"\x00not avro"
        dlq.close()

        # Collector 2: the same events, other batch ids, other sizes, reverse order -> nothing new.
        produce(s, make_batches(events, 73, "collector-2", reverse=True))
        wait_caught_up(s)
        reader.poll(1.0)
        assert counts_by_event_id(reader.rows) == want

        # Restart: the state comes back from the changelog.
        assert worker_a.stop() == 0, worker_a.log()
        worker_a = Worker(s, tmp_path, "a2").start()
        worker_a.wait_ready()
        produce(s, make_batches(events, 500, "collector-3"))
        wait_caught_up(s)
        reader.poll(1.0)
        assert counts_by_event_id(reader.rows) == want, "duplicates leaked after a restart"

        # Partition move: a second worker joins, the first leaves; the second owns every partition.
        worker_b = Worker(s, tmp_path, "b").start()
        worker_b.wait_ready()
        assert worker_a.stop() == 0, worker_a.log()
        produce(s, make_batches(events, 150, "collector-4", reverse=True))
        wait_caught_up(s)
        reader.poll(1.0)
        assert counts_by_event_id(reader.rows) == want, "duplicates leaked after a partition move"

        # Fresh events still flow (the worker is not just dropping everything).
        fresh = [{**e, "event_record_id": e["event_record_id"] + 10_000_000} for e in events
                 if e["computer"] == XPATH_HOST and e["event_id"] == 4672][:25]
        produce(s, make_batches(fresh, 10, "collector-1"))
        reader.wait_rows(sum(want.values()) + len(fresh))
        assert len(reader.rows) == sum(want.values()) + len(fresh)
    finally:
        if reader is not None:
            reader.close()
        for w in (worker_a, worker_b):
            if w is not None:
                w.stop()


def test_exactly_once_with_rocksdb_across_a_restart_mid_stream(
    settings: Settings, tmp_path: Path, topics_cleanup: list[Settings]
) -> None:
    """exactly_once: rows, state and input offsets commit in one transaction per partition; dedup table in RocksDB.

    The worker is stopped while it still has a backlog and a new one takes over with the same RocksDB files. (A
    SIGKILLed member is not removed from its group by the embedded broker, so the crash case cannot be run here.)
    """
    s = stream_settings(settings, processing_guarantee="exactly_once", commit_interval_seconds=1.0,
                        store="rocksdb://")
    topics_cleanup.append(s)
    small = EVTX_FILES[1:]  # the two small EVTX files and the JSON sources (~800 events)
    events = corpus_events(small)
    want = expected_counts(small)
    batches = make_batches(events, 10, "collector-1") + make_batches(events, 17, "collector-2", reverse=True)
    worker = Worker(s, tmp_path, "eos", data_dir="rocks").start()
    worker.wait_ready()  # the worker creates the topics
    reader = OutputReader(s)
    try:
        produce(s, batches)
        reader.wait_rows(1, settle=0)
        assert worker.stop() == 0, worker.log()
        worker = Worker(s, tmp_path, "eos2", data_dir="rocks").start()
        worker.wait_ready()
        wait_caught_up(s, timeout=90)
        reader.wait_rows(sum(want.values()), settle=2.0)
        assert counts_by_event_id(reader.rows) == want
        assert len({r["EventOriginId"] for r in reader.rows}) == len(reader.rows)
        # Transaction markers take offsets: committed transactions leave the end offsets above the record count.
        ends = end_offsets(s, s.topics.normalized)
        assert sum(ends.values()) > len(reader.messages)
    finally:
        reader.close()
        worker.stop()
