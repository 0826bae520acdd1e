"""The per-message work of the stream stage, without Kafka: real EVTX events in, SecurityEvent batches out."""

from __future__ import annotations

import gc
import json
import uuid
from collections import Counter
from functools import lru_cache
from typing import Any

import pytest
from evtx import PyEvtxParser

from schemas.codec import decode_raw_batch, decode_security_batch, encode_raw_batch
from secstream.config import RuleSettings
from streams.dedup import Deduper
from streams.filtering import RuleSet
from streams.processing import OUTPUT_BATCH_NAMESPACE, BatchProcessor
from tests.conftest import CORPUS, collections_during
from tests.streams.test_stream_worker import corpus_events

SECURITY_EVTX = "omerbenamram__evtx/samples/security.evtx"


@lru_cache(maxsize=1)
def security_events() -> tuple[dict[str, Any], ...]:
    return tuple(corpus_events([SECURITY_EVTX])[:2261])  # the EVTX file comes first, before the JSON sources


def _raw_batch(events: list[dict[str, Any]]) -> dict[str, Any]:
    return {"host": events[0]["computer"], "batch_id": str(uuid.uuid4()), "sequence": 1, "agent_id": "a",
            "send_time_us": 1, "events": events}


def test_rows_per_event_id_match_the_file_and_a_second_copy_yields_nothing() -> None:
    events = list(security_events())
    assert all(e["provenance"]["source_ref"].endswith("security.evtx") for e in events)
    truth: Counter[int] = Counter()
    for record in PyEvtxParser(str(CORPUS / SECURITY_EVTX)).records_json():
        assert record is not None
        event_id = json.loads(str(record["data"]))["Event"]["System"]["EventID"]
        truth[int(event_id["#text"] if isinstance(event_id, dict) else event_id)] += 1
    wanted = {4624, 4672}
    rules = RuleSet.compile([RuleSettings(name="r", xpath=["Security!*[System[(EventID=4624 or EventID=4672)]]"])])
    processor = BatchProcessor(rules)
    deduper = Deduper(window_seconds=20 * 365 * 86400)
    batch = _raw_batch(events)
    out = processor.process(encode_raw_batch(batch), b"k", deduper, "raw/0/0")
    assert len(out.values) == 1
    security = decode_security_batch(out.values[0])
    assert Counter(r["EventID"] for r in security["rows"]) == {i: truth[i] for i in wanted}
    assert security["source_batch_id"] == batch["batch_id"]
    assert security["batch_id"] == str(uuid.uuid5(OUTPUT_BATCH_NAMESPACE, batch["batch_id"]))
    assert out.events_in == sum(truth.values()) and out.rows == sum(truth[i] for i in wanted)
    assert out.filtered == out.events_in - out.rows and out.duplicates == 0
    # The same events through another collector: all duplicates, no output message.
    again = processor.process(encode_raw_batch(_raw_batch(list(reversed(events)))), b"k", deduper, "raw/0/1")
    assert again.values == [] and again.duplicates == out.rows and again.rows == 0


def test_undecodable_message_is_dead_lettered_with_its_bytes() -> None:
    processor = BatchProcessor(RuleSet.compile([RuleSettings(name="d", event_set="All")]))
    out = processor.process(b"\x00\x00\x00\x00\x65garbage", b"host", Deduper(), "raw/2/17")
    assert out.values == [] and out.dead_lettered == 1
    (letter,) = out.dead_letters
    headers = dict(letter.headers)
    assert letter.value == b"\x00\x00\x00\x00\x65garbage" and letter.key == b"host"
    assert headers["secstream.reason"] == b"undecodable" and headers["secstream.source"] == b"raw/2/17"
    assert headers["secstream.stage"] == b"stream" and headers["secstream.error"]


def test_not_normalisable_events_keep_the_original_event() -> None:
    processor = BatchProcessor(RuleSet.compile([RuleSettings(name="d", event_set="All")]))
    good = list(security_events()[:3])
    # A TimeCreated far beyond year 9999 is valid Avro but cannot become a TimeGenerated.
    bad = {**good[0], "event_record_id": 999_999_999, "time_created": 2**62}
    out = processor.process(encode_raw_batch(_raw_batch([*good, bad])), b"h", Deduper(20 * 365 * 86400), "raw/1/5")
    assert out.rows == 3 and out.dead_lettered == 1
    (letter,) = out.dead_letters
    headers = dict(letter.headers)
    assert headers["secstream.reason"] == b"not-normalisable" and headers["secstream.events"] == b"1"
    dead = decode_raw_batch(letter.value)
    assert dead["events"] == [bad] or dead["events"][0]["time_created"] == 2**62
    assert dead["host"] == good[0]["computer"]


def test_output_messages_stay_under_the_kafka_limit_and_keep_every_row() -> None:
    """Rows carry EventData XML and grow past the raw batch: the output is split, deterministically."""
    events = list(security_events())
    processor = BatchProcessor(RuleSet.compile([RuleSettings(name="all", event_set="All")]), max_message_bytes=20_000)
    batch = _raw_batch(events)
    out = processor.process(encode_raw_batch(batch), b"k", Deduper(window_seconds=20 * 365 * 86400), "raw/0/0")
    assert len(out.values) > 1 and all(len(v) <= 20_000 for v in out.values)
    decoded = [decode_security_batch(v) for v in out.values]
    assert sum(len(d["rows"]) for d in decoded) == out.rows == len(events)
    assert len({d["batch_id"] for d in decoded}) == len(decoded)
    again = processor.process(encode_raw_batch(batch), b"k", Deduper(window_seconds=20 * 365 * 86400), "raw/0/0")
    assert [decode_security_batch(v)["batch_id"] for v in again.values] == [d["batch_id"] for d in decoded]


def test_no_collection_runs_while_a_message_is_processed_and_the_gc_state_is_restored() -> None:
    assert gc.isenabled()
    processor = BatchProcessor(RuleSet.compile([RuleSettings(name="all", event_set="All")]))
    value = encode_raw_batch(_raw_batch(list(security_events()[:300])))
    assert collections_during(BatchProcessor.process.__code__,
                              lambda: processor.process(value, b"k", Deduper(), "raw/0/0")) == 0
    assert gc.isenabled()
    gc.disable()
    try:
        BatchProcessor(RuleSet.compile([])).process(None, None, Deduper(), "raw/0/0")
        assert not gc.isenabled()  # a caller's choice is kept
    finally:
        gc.enable()
    with pytest.raises(AttributeError):  # not a Deduper: the error passes through, the GC is back on
        BatchProcessor(RuleSet.compile([RuleSettings(name="all", event_set="All")])).process(
            encode_raw_batch(_raw_batch(list(security_events()[:5]))), None, object(), "raw/0/0")  # type: ignore[arg-type]
    assert gc.isenabled()
