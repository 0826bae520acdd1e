"""The EVTX fast path (records -> RawEvents in Avro in C, batches around pre-encoded events) against the reference:
RawEvent dicts from the Python reader, encoded by ``schemas.codec``. Byte for byte, on every EVTX record of the
dev corpus and on mangled ones."""

from __future__ import annotations

import gc
import itertools
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import evtx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producers import encoded
from producers.adapters import event_xml
from producers.adapters import sources as sources_module
from producers.adapters.sources import discover
from producers.batching import Batcher, EncodedBatcher, OutgoingBatch
from producers.checkpoint import ProgressTracker
from producers.encoded import EncodedChunk, encode_batch, encode_event, provenance_avro
from producers.kafka_sink import split_batch
from producers.timeutil import iso_to_ticks
from schemas.codec import EncodeError, decode_raw_batch, encode_raw_batch
from tests.producers.conftest import CorpusFile
from tests.producers.test_event_xml import _mangled_rendering, _security_rendering, _user_data_rendering

native = event_xml._native
needs_native = pytest.mark.skipif(not encoded.available(), reason="producers._evtxrender is not built")
PROV = {"source_format": "evtx", "agent_id": "agent-\u00e9", "collector_id": None,
        "read_time_us": 1_700_000_000_123_456, "source_ref": "C:\\logs\\Security.evtx"}


@pytest.fixture(autouse=True)
def _fixed_read_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both readers stamp the same read time, so their provenance can be compared byte for byte."""
    monkeypatch.setattr(sources_module, "now_us", lambda: 1_700_000_000_123_456)


def _events(chunk: EncodedChunk) -> list[bytes]:
    starts = [0, *chunk.ends[:-1]]
    return [chunk.data[a:b] for a, b in zip(starts, chunk.ends, strict=True)]


def _hosts(chunk: EncodedChunk) -> list[str]:
    runs = [*chunk.runs, ("", len(chunk))]
    return [host for (host, start), (_, stop) in itertools.pairwise(runs) for _ in range(start, stop)]


def _read_both(path: Path, resume: int | None = None, chunk_records: int = 1000
               ) -> tuple[list[tuple[bytes, str, int]], list[str], list[tuple[dict[str, Any], int]], list[str]]:
    """(event bytes, host, position) of the encoded reader and (event, position) of the Python dict reader, with
    each one's reported issues."""
    with pytest.MonkeyPatch.context() as patch:
        (source,) = discover([path])
        fast: list[tuple[bytes, str, int]] = []
        for chunk, position in source.read_encoded(resume, "agent", chunk_records=chunk_records):
            events = _events(chunk)
            positions = range(position - len(events) + 1, position + 1)
            # A chunk's events are consecutive records unless one was unreadable; only the last position is used.
            fast.extend((data, host, pos) for data, host, pos in zip(events, _hosts(chunk), positions, strict=True))
        fast_issues = list(source.issues)
        (source,) = discover([path])
        patch.setattr(event_xml, "native_from_record", None)
        patch.setattr(event_xml, "_native_parse", None)
        reference = list(source.read(resume, "agent"))
    return fast, fast_issues, reference, list(source.issues)


@needs_native
def test_every_corpus_evtx_record_encodes_to_the_codecs_bytes(corpus_files: list[CorpusFile]) -> None:
    """Every EVTX file of the corpus, damaged ones included: the same events, in the same order, each byte for byte
    what the codec writes for the reference reader's RawEvent; the same issues; record counts as SOURCES.md."""
    files = [f for f in corpus_files if f.fmt == "EVTX"]
    total = declined = 0
    for f in files:
        fast, fast_issues, reference, reference_issues = _read_both(f.path)
        assert fast_issues == reference_issues, f.path.name
        assert len(fast) == len(reference) == f.records, f.path.name
        for (data, host, _), (event, _) in zip(fast, reference, strict=True):
            assert data == encode_event(event), (f.path.name, event)
            assert host == event["computer"]
        total += len(fast)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            records = [r for r in evtx.PyEvtxParser(str(f.path), skip_errors=True).records() if r is not None]
        declined += sum(native.from_record(r, PROV) is None for r in records)
    assert total > 7000
    assert declined > 0, "the corpus should exercise records the C code leaves to the dict path"


@needs_native
def test_last_positions_and_resume_match_the_dict_reader(corpus_files: list[CorpusFile]) -> None:
    """Chunk positions are the last record's ordinal; resuming skips exactly what the dict reader skips, across
    a damaged file (warnings before the resume point are not reported again)."""
    for name in ("sample_with_a_bad_chunk_magic.evtx", "security.evtx"):
        (f,) = [f for f in corpus_files if f.path.name == name]
        for resume in (None, 1, 777):
            fast, fast_issues, reference, reference_issues = _read_both(f.path, resume, chunk_records=100)
            assert [p for _, _, p in fast][-1:] == [p for _, p in reference][-1:]
            assert len(fast) == len(reference)
            assert fast_issues == reference_issues


def _batches_both(paths: list[Path], max_events: int) -> tuple[list[OutgoingBatch], list[OutgoingBatch]]:
    # Only the count bound: the same batches on both paths (the byte bound is exact on one, estimated on the other).
    fast_batcher = EncodedBatcher(max_events=max_events, max_bytes=16_000_000, max_lag=10**9)
    fast: list[OutgoingBatch] = []
    for source in discover(paths):
        for chunk, _ in source.read_encoded(None, "agent", chunk_records=333):
            fast.extend(fast_batcher.add_chunk(chunk))
    fast.extend(fast_batcher.drain())
    dict_batcher = Batcher(max_events=max_events, max_bytes=16_000_000, max_lag=10**9)
    reference: list[OutgoingBatch] = []
    for source in discover(paths):
        for event, _ in source.read(None, "agent"):
            reference.extend(dict_batcher.add(event))
    reference.extend(dict_batcher.drain())
    return fast, reference


@needs_native
def test_batches_are_byte_identical_to_encode_raw_batch(corpus_files: list[CorpusFile]) -> None:
    """Whole messages: the envelope around pre-encoded events (declined records encoded by the codec in between)
    equals ``encode_raw_batch`` of the dict batch, for batch sizes whose block count takes one or two bytes."""
    names = {"security.evtx", "many-events-application.evtx", "7595ba94-cf3b-4471-aa03-4f6baa9e5fad.evtx",
             "sample_with_a_bad_chunk_magic.evtx"}
    paths = [f.path for f in corpus_files if f.path.name in names]
    assert len(paths) == len(names)
    for max_events in (1, 63, 64, 1000):
        fast, reference = _batches_both(paths, max_events)
        assert len(fast) == len(reference)
        for a, b in zip(fast, reference, strict=True):
            assert (a.host, a.event_count) == (b.host, len(b.events))
            b.batch_id, b.send_time_us, a.send_time_us = a.batch_id, 1_700_000_000_000_001, 1_700_000_000_000_001
            assert a.encode("agent-\u00e9") == encode_raw_batch(b.as_record("agent-\u00e9"))
    assert encode_batch({"host": "h", "batch_id": "b", "sequence": 3, "agent_id": "", "send_time_us": 9}, 0, []) \
        == encode_raw_batch({"host": "h", "batch_id": "b", "sequence": 3, "agent_id": "", "send_time_us": 9,
                             "events": []})


@st.composite
def _record(draw: st.DrawFn) -> dict[str, Any]:
    """A parser record with a mangled rendering, header time and record id."""
    timestamp = draw(st.sampled_from(["2016-07-08T18:15:50.6896317Z UTC", "2016-07-08T18:15:50.6896310Z UTC",
                                      "2016-07-08T18:15:50.6896317Z", "1601-01-01T00:00:00.0000001Z UTC",
                                      "2016-07-08 18:15:50.689631 UTC", "", "garbage"]))
    record_id = draw(st.sampled_from([101, 0, -5, 2**63 - 1, 2**63, 2**70]))
    return {"event_record_id": record_id, "timestamp": timestamp, "data": draw(_mangled_rendering())}


def _reference(record: dict[str, Any]) -> bytes | None:
    """What the dict path sends for the record (None: reported as unreadable or not fitting the schema)."""
    issues: list[str] = []
    event = sources_module._evtx_event(record, PROV, None, lambda reason, raw: issues.append(reason))
    if event is None:
        return None
    try:
        return encode_event(event)
    except EncodeError:
        return None


@settings(max_examples=int(os.environ.get("SECSTREAM_NATIVE_FUZZ_EXAMPLES", "400")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@needs_native
@given(_record())
def test_mangled_records_are_declined_or_encoded_exactly(record: dict[str, Any]) -> None:
    """Hostile or damaged records never crash the encoder: it declines them (the dict path takes them), or writes
    exactly the bytes the Python reader's event encodes to."""
    stop, taken, data, ends, runs, pending = native.encode_records(iter([record]), [], provenance_avro(PROV), 5, 0)
    if stop == native.STOP_RECORD:
        assert (taken, data, ends, runs, pending) == (0, b"", b"", [], record)
        return
    assert (stop, taken, pending) == (native.STOP_END, 1, None)
    assert data == _reference(record)
    assert memoryview(ends).cast("I").tolist() == [len(data)]


@needs_native
def test_encoder_matches_dict_mapping_on_a_known_record() -> None:
    xml = _security_rendering()
    record = {"event_record_id": 101, "timestamp": "2016-07-08T18:15:50.6896317Z UTC", "data": xml}
    stop, taken, data, ends, runs, _ = native.encode_records(iter([record, None, record]), [], provenance_avro(PROV),
                                                             10, 0)
    one = encode_event(native.from_record(record, PROV))
    assert (stop, taken, data, runs) == (native.STOP_END, 2, one * 2, [("WIN-03DLIIOFRRA", 0)])
    assert memoryview(ends).cast("I").tolist() == [len(one), 2 * len(one)]
    assert decode_raw_batch(encode_batch({"host": "h", "batch_id": "b", "sequence": 0, "agent_id": "",
                                          "send_time_us": 0}, 2, [data]))["events"][1]["time_created"] \
        == iso_to_ticks("2016-07-08T18:15:50.6896317Z")  # all 7 digits of the header, not the rendering's 6


@needs_native
def test_encoder_stops_for_warnings_errors_and_skips() -> None:
    record = {"event_record_id": 101, "timestamp": "2016-07-08T18:15:50.6896317Z UTC", "data": _security_rendering()}
    prov = provenance_avro(PROV)

    def warn_then(records: list[Any]) -> Any:
        for item in records:
            if item == "warn":
                warnings.warn("damaged chunk", RuntimeWarning, stacklevel=1)
                continue
            if isinstance(item, BaseException):
                raise item
            yield item

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        records = warn_then([record, record, "warn", record, RuntimeError("chunk header")])
        stop, taken, data, _, _, pending = native.encode_records(records, caught, prov, 10, 1)
        assert (stop, taken, pending, len(caught)) == (native.STOP_RECORD, 2, record, 1)  # skipped 1, encoded 1
        assert data == encode_event(native.from_record(record, PROV))
        stop, taken, data, _, _, pending = native.encode_records(records, caught, prov, 10, 0)
        assert (stop, taken, data) == (native.STOP_ERROR, 0, b"")
        assert isinstance(pending, RuntimeError) and str(pending) == "chunk header"
    stop, taken, *_ = native.encode_records(iter([record] * 5), [], prov, 3, 0)
    assert (stop, taken) == (native.STOP_LIMIT, 3)


@needs_native
def test_encoder_refuses_wrong_arguments_and_does_not_leak() -> None:
    prov = provenance_avro(PROV)
    wrong: list[tuple[Any, ...]] = [(), ([],), (iter([]), (), prov, 1, 0), (iter([]), [], "x", 1, 0),
                                    (iter([]), [], prov, "1", 0)]
    for args in wrong:
        with pytest.raises(TypeError):
            native.encode_records(*args)
    xml = _security_rendering()
    record = {"event_record_id": 101, "timestamp": "2016-07-08T18:15:50.6896317Z UTC", "data": xml}
    declined = {**record, "data": xml.replace("<Data", "<Data Other=\"1\"", 1)}
    refs = sys.getrefcount(record), sys.getrefcount(declined), sys.getrefcount(prov)
    gc.collect()
    blocks = sys.getallocatedblocks()
    for _ in range(2000):
        native.encode_records(iter([record, record, declined]), [], prov, 10, 0)
        native.encode_records(iter([None, record]), [], prov, 10, 1)
    gc.collect()
    assert (sys.getrefcount(record), sys.getrefcount(declined), sys.getrefcount(prov)) == refs
    assert sys.getallocatedblocks() - blocks < 100


@needs_native
def test_nothing_leaks_when_an_allocation_fails() -> None:
    """Out of memory at any one allocation while a record becomes a dict or Avro: a MemoryError (or the result),
    and every object made before the failure freed."""
    testcapi = pytest.importorskip("_testcapi")
    prov = provenance_avro(PROV)
    records = [{"event_record_id": 101, "timestamp": "2016-07-08T18:15:50.6896317Z UTC", "data": xml}
               for xml in (_security_rendering(), _user_data_rendering())]

    def fail_at(call: Any, k: int) -> None:
        testcapi.set_nomemory(k, k + 1)
        try:
            call()
        except MemoryError:
            pass
        finally:
            testcapi.remove_mem_hooks()

    calls = [lambda: native.encode_records(iter(records * 2), [], prov, 10, 0),
             *(lambda record=record: native.from_record(record, PROV) for record in records)]
    leaks = []
    for index, call in enumerate(calls):
        for k in range(60):
            fail_at(call, k)  # caches filled at this failure point
            gc.collect(0)
            blocks = sys.getallocatedblocks()
            for _ in range(200):  # a leak is a block a call at least; free lists hold up to 80 objects a type
                fail_at(call, k)
            gc.collect(0)
            if sys.getallocatedblocks() - blocks >= 200:
                leaks.append((index, k, sys.getallocatedblocks() - blocks))
    assert leaks == [], leaks


@needs_native
def test_encoded_batcher_bounds_and_keeps_everything() -> None:
    """Count and exact byte bounds, per host, in order; marks count every event once; an event larger than the
    bound travels alone."""
    events = [dict(native.from_record({"event_record_id": i, "timestamp": "2016-07-08T18:15:50.6896317Z UTC",
                                       "data": _security_rendering()}, PROV), computer=f"h{i % 3}")
              for i in range(1, 200)]
    big = dict(events[0], event_data=[{"name": "x", "value": "y" * 5000}], computer="h0")
    chunks = [EncodedChunk.of_event(e) for e in events[:50]] + [EncodedChunk.of_event(big)]
    sizes = [len(c.data) for c in chunks]
    batcher = EncodedBatcher(max_events=7, max_bytes=3 * max(sizes[:-1]) + 10)
    ready = [b for c in chunks for b in batcher.add_chunk(c, lambda _last, _count: "mark")] + batcher.drain()
    assert sum(b.event_count for b in ready) == 51 == sum(b.marks["mark"] for b in ready)
    for b in ready:
        assert b.event_count <= 7
        assert b.size <= batcher.max_bytes or b.event_count == 1
        assert b.size == sum(len(p) for p in b.encoded or [])
    decoded = [e for b in sorted(ready, key=lambda b: b.sequence) for e in decode_raw_batch(b.encode("a"))["events"]]
    by_host = {h: [e for e in [*events[:50], big] if e["computer"] == h] for h in ("h0", "h1", "h2")}
    assert {h: [e for e in decoded if e["computer"] == h] for h in by_host} == by_host


@needs_native
def test_an_encoded_batch_splits_into_halves_with_the_same_events() -> None:
    events = [native.from_record({"event_record_id": i, "timestamp": "2016-07-08T18:15:50.6896317Z UTC",
                                  "data": _security_rendering()}, PROV) for i in range(1, 8)]
    batcher = EncodedBatcher(max_events=100)
    for e in events:
        batcher.add(e)
    (batch,) = batcher.drain()
    halves = split_batch(batch)
    assert [len(h.events) for h in halves] == [3, 4]
    assert [e for h in halves for e in decode_raw_batch(h.encode("a"))["events"]] == events


@needs_native
def test_checkpoint_moves_batch_by_batch_through_a_chunk() -> None:
    """A chunk spread over several batches: each batch's events get their own segment once the batch before is
    sealed, so the checkpoint follows acknowledged batches, not whole chunks."""
    tracker = ProgressTracker()
    batcher = EncodedBatcher(max_events=4)
    record = {"event_record_id": 1, "timestamp": "2016-07-08T18:15:50.6896317Z UTC", "data": _security_rendering()}
    _, _, data, ends, runs, _ = native.encode_records(iter([record] * 10), [], provenance_avro(PROV), 10, 0)
    chunk = EncodedChunk(data, memoryview(ends).cast("I"), runs)
    sent: list[OutgoingBatch] = []
    for batch in batcher.add_chunk(chunk, lambda last, count: tracker.read_many("src", 100 + last, count)):
        tracker.seal(batch.marks)
        sent.append(batch)
    assert [b.event_count for b in sent] == [4, 4]
    tracker.delivered(sent[1].marks)
    assert "src" not in tracker.committed
    tracker.delivered(sent[0].marks)
    assert tracker.committed["src"] == 107  # through the second batch; the last two events are in the open one
    (rest,) = batcher.drain()
    tracker.seal(rest.marks)
    tracker.delivered(rest.marks)
    assert tracker.committed["src"] == 109


def test_the_dict_path_is_the_fallback_when_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoded, "_NATIVE", None)
    assert not encoded.available()


@needs_native
def test_a_rare_hosts_open_batch_goes_out_after_the_lag_bound() -> None:
    """One event of host B, then many of host A: B's batch does not hold the source's checkpoint for max_age
    (a crash would resend everything read meanwhile) but is sent once ``max_lag`` more events were taken."""
    record = {"event_record_id": 1, "timestamp": "2016-07-08T18:15:50.6896317Z UTC", "data": _security_rendering()}
    event = native.from_record(record, PROV)
    parts = [encode_event(dict(event, computer="B"))] + [encode_event(dict(event, computer="A"))] * 40
    chunk = EncodedChunk(b"".join(parts), list(itertools.accumulate(len(p) for p in parts)), [("B", 0), ("A", 1)])
    batcher = EncodedBatcher(max_events=5, max_lag=12, max_age=3600)
    placed: list[int] = []
    taken = 0
    for batch in batcher.add_chunk(chunk, lambda last, count: placed.append(last)):
        if batch.host == "B":
            assert batch.event_count == 1
            taken = placed[-1]  # the index of the last event placed when B's batch went out
            break
    assert 12 <= taken <= 12 + 5
    # The dict path applies the same bound as it takes each event: B's batch comes back from the add that makes
    # it 12 events taken since it opened (B's own included), not from a later ``due()``.
    dict_batcher = Batcher(max_events=5, max_lag=12, max_age=3600)
    assert dict_batcher.add(dict(event, computer="B")) == []
    out_at = [index for index in range(1, 41)
              if "B" in [b.host for b in dict_batcher.add(dict(event, computer="A"))]]
    assert out_at == [11]


def test_encoded_path_is_in_use_when_required() -> None:
    """``make test`` sets SECSTREAM_REQUIRE_NATIVE_EVTX=1: then the Avro path must be available and agree with the
    codec (a mismatch would silently fall back to the dict path)."""
    if os.environ.get("SECSTREAM_REQUIRE_NATIVE_EVTX", "") != "1":
        pytest.skip("SECSTREAM_REQUIRE_NATIVE_EVTX is not set")
    assert encoded.available()
