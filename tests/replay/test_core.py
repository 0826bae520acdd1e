"""The pure parts of a replay: rules selection, offset ranges, header row counts, the skip set."""

from __future__ import annotations

import gc
import random
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml

from schemas.codec import DecodeError, decode_security_batch, encode_raw_batch
from secstream.config import RuleSettings
from secstream.replay.core import (
    OffsetRanges,
    OriginIdSet,
    ReplayProcessor,
    RulesError,
    load_rules,
    rules_document,
    rules_fingerprint,
    security_row_count,
)
from streams.dedup import Deduper
from streams.filtering import RuleSet
from streams.processing import BatchProcessor
from tests.conftest import collections_during
from tests.sinks.rows import encoded, golden_rows, make_batches
from tests.streams.test_processing import _raw_batch, security_events

CONFIGURED = [RuleSettings(name="dc", computers=["dc*"], event_set="All"),
              RuleSettings(name="default", event_set="Minimal")]


def test_rules_come_from_configured_names_or_a_yaml_file(tmp_path: Path) -> None:
    assert load_rules(None, CONFIGURED) == CONFIGURED
    assert [r.name for r in load_rules("default", CONFIGURED)] == ["default"]
    with pytest.raises(RulesError, match="unknown rule nope; configured rules: dc, default"):
        load_rules("default,nope", CONFIGURED)
    path = tmp_path / "common.yaml"
    path.write_text(yaml.safe_dump({"rules": [{"name": "all", "event_set": "Common"}]}))
    assert load_rules(str(path), CONFIGURED)[0].event_set == "Common"
    path.write_text(yaml.safe_dump([{"name": "all", "event_set": "Sometimes"}]))
    with pytest.raises(RulesError, match="event_set"):
        load_rules(str(path), CONFIGURED)


def test_the_rules_fingerprint_changes_with_the_rules_and_the_flavour() -> None:
    minimal, common = rules_document(CONFIGURED), rules_document([CONFIGURED[0], RuleSettings(name="default",
                                                                                              event_set="Common")])
    assert rules_fingerprint(minimal, "ama") == rules_fingerprint(rules_document(CONFIGURED), "ama")
    assert len({rules_fingerprint(minimal, "ama"), rules_fingerprint(common, "ama"),
                rules_fingerprint(minimal, "mma")}) == 3


def test_offset_ranges_answer_membership_and_cut_windows() -> None:
    done = OffsetRanges({0: [(10, 19), (30, 39)]})
    assert (0, 10) in done and (0, 19) in done and (0, 35) in done
    assert (0, 9) not in done and (0, 20) not in done and (1, 12) not in done
    assert done.pieces(0, 15, 35) == [(15, 20), (30, 35)]


def test_header_row_counts_match_the_decoded_batches() -> None:
    for _, value in encoded(make_batches(45, 7)):
        processor = ReplayProcessor("normalized")
        processor.process(0, 0, value)
        assert security_row_count(value) == processor.counts.read


def test_delivered_offsets_are_counted_not_sent_and_bad_messages_are_dead_lettered() -> None:
    (_, first), (_, second) = encoded(make_batches(10, 5))
    processor = ReplayProcessor("normalized", delivered=OffsetRanges({0: [(0, 0)]}))
    assert processor.process(0, 0, first).rows == []
    assert len(processor.process(0, 1, second).rows) == 5
    with pytest.raises(DecodeError):
        processor.process(0, 2, b"\x00garbage")
    c = processor.counts
    assert (c.read, c.already_delivered, c.to_send, c.dead_lettered, c.messages) == (10, 5, 5, 1, 3)


def test_origin_ids_are_held_exactly_across_sorted_runs() -> None:
    rng = random.Random(7)
    held = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(2_000)]
    # Ids that differ from held ones only in the low or only in the high 64 bits.
    near = [str(uuid.UUID(int=uuid.UUID(i).int ^ 1)) for i in held[:200]]
    near += [str(uuid.UUID(int=uuid.UUID(i).int ^ (1 << 100))) for i in held[:200]]
    ids = OriginIdSet(chunk=64)
    ids.update(held)
    ids.update(held[:500])  # again: no double entries
    assert len(ids) == len(held) and len(ids._runs) > 1
    assert all(i in ids for i in held)
    assert not any(i in ids for i in near) and 7 not in ids


def test_batch_look_ups_agree_with_single_ones_and_never_hold_missing_ids() -> None:
    rng = random.Random(11)
    held = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(3_000)]
    near = [str(uuid.UUID(int=uuid.UUID(i).int ^ 1)) for i in held[:300]]
    ids = OriginIdSet(chunk=256)
    ids.update(held)
    assert len(ids._runs) > 1 and ids._recent  # sorted runs (bucketed) and recent ids both answer
    probe: list[str | None] = [*held[::7], *near, None, "", *held[-40:]]
    assert ids.absent(probe) == [not (i and i in ids) for i in probe]
    assert sum(ids.absent(probe)) == len(near) + 2
    assert OriginIdSet().absent(held[:3]) == [True, True, True]


def test_counts_per_event_id_are_those_of_the_golden_rows() -> None:
    batches = make_batches(1_234, 100)
    golden = golden_rows()
    expected = Counter(golden[i % len(golden)].get("EventID") or 0 for i in range(1_234))
    skip = OriginIdSet(row["EventOriginId"] for row in batches[0]["rows"][:30])
    processor = ReplayProcessor("normalized", skip_ids=skip)
    sent = sum(len(processor.process(1, n, value).rows) for n, (_, value) in enumerate(encoded(batches)))
    first = Counter(row.get("EventID") or 0 for row in batches[0]["rows"][:30])
    assert processor.counts.by_event_id == expected - first
    assert sent == processor.counts.to_send == processor.counts.by_partition[1] == 1_234 - 30
    assert processor.counts.already_delivered == 30


def test_a_raw_message_is_replayed_without_collections_and_as_the_stream_stage_normalises_it() -> None:
    events = list(security_events()[:300])
    value = encode_raw_batch(_raw_batch(events))
    rules = RuleSet.compile([RuleSettings(name="all", event_set="All")])
    replay = ReplayProcessor("raw", rules=rules)
    assert collections_during(ReplayProcessor.process.__code__, lambda: replay.process(0, 0, value)) == 0
    assert gc.isenabled()
    again = ReplayProcessor("raw", rules=rules).process(0, 0, value)
    stream = BatchProcessor(rules).process(value, None, Deduper(), "raw/0/0")
    assert [row for v in stream.values for row in decode_security_batch(v)["rows"]] == again.rows
    assert len(again.rows) == len(events)
