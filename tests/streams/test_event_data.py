"""EventData items in both forms: the dicts producers make and the (name, value) tuples the stream stage decodes."""

from __future__ import annotations

from typing import Any

from schemas.codec import decode_raw_batch, encode_raw_batch
from schemas.event_data import as_dicts, pairs
from streams.identity import content_fingerprint, event_identity
from tests.streams.corpus_events import corpus_events


def _decoded_both_ways(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    value = encode_raw_batch({"host": "h", "batch_id": "b", "sequence": 0, "agent_id": "a", "send_time_us": 0,
                              "events": events})
    return decode_raw_batch(value)["events"], decode_raw_batch(value, event_data_pairs=True)["events"]


def test_pairs_and_dicts_convert_into_each_other() -> None:
    events = [e for e in corpus_events() if e["event_data"]][:500]
    dicts, tuples = _decoded_both_ways(events)
    for as_dict, as_tuple, original in zip(dicts, tuples, events, strict=True):
        assert as_dict["event_data"] == original["event_data"]
        assert list(pairs(as_dict["event_data"])) == as_tuple["event_data"]
        assert pairs(as_tuple["event_data"]) is as_tuple["event_data"]  # already pairs: not copied
        assert as_dicts(as_tuple["event_data"]) == original["event_data"]
        assert as_dicts(as_dict["event_data"]) is as_dict["event_data"]  # already dicts: not copied
    empty: list[Any] = []
    assert pairs(None) == () and pairs(empty) is empty and as_dicts(None) == [] and as_dicts(empty) is empty


def test_an_event_has_one_identity_whatever_the_form_of_its_items() -> None:
    """Events without a record id are identified by a digest of their content, EventData included: it must not
    depend on how the items were decoded, or dedup and EventOriginId would differ between paths."""
    events = [{**e, "event_record_id": None} for e in corpus_events() if e["event_data"]][:300]
    dicts, tuples = _decoded_both_ways(events)
    assert [content_fingerprint(e) for e in tuples] == [content_fingerprint(e) for e in dicts] == [
        content_fingerprint(e) for e in events]
    assert [event_identity(e) for e in tuples] == [event_identity(e) for e in events]
    assert len({content_fingerprint(e) for e in events}) > 1
