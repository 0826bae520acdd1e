"""The batch paths of filtering and dedup against their one-event-at-a-time references.

``CompiledRule.filter`` and ``Deduper.admit_batch`` do their per-event work with C-level passes and block operations;
``filter_each`` and ``admit_each`` judge one event at a time. Both must give the same events (the same objects, in
the same order) and dedup the same state records, byte for byte and in the same order, on real corpus events and on
generated batches with mixed channels, out-of-order and repeated record ids, cleared logs, duplicates within a
batch and events outside the window.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.event_sets import ALL_CHANNELS
from secstream.config import RuleSettings
from streams.dedup import TICKS_PER_SECOND, Deduper
from streams.filtering import RuleSet
from streams.processing import BatchProcessor
from tests.streams.corpus_events import corpus_events
from tests.streams.test_filtering import seed_event_sets

T0 = 1_700_000_000 * TICKS_PER_SECOND
HOUR = 3600 * TICKS_PER_SECOND

RULES: dict[str, dict[str, Any]] = {
    "all": dict(event_set="All"),
    "common": dict(event_set="Common"),
    "minimal": dict(event_set="Minimal"),
    "none": dict(event_set="None"),
    "ids-only-xpath": dict(xpath=["Security!*[System[(EventID=4624 or EventID=4625 or EventID=1102)]]",
                                  "System!*[System[EventID=7045]]"]),
    "set-plus-take-all": dict(event_set="Minimal", xpath=["Application!*"]),
    "predicates": dict(event_set="Minimal", xpath=["System!*[System[Level=4]]",
                                                   "Security!*[System[Provider[@Name='Microsoft-Windows-Eventlog']]]"]),
}


def rule_named(name: str) -> Any:
    return RuleSet.compile([RuleSettings(name=name, **RULES[name])]).rule_for("any-host")


def ids(events: list[Any]) -> list[int]:
    return [id(e) for e in events]


def corpus_batches(size: int) -> Iterator[list[dict[str, Any]]]:
    """Real events in batches: file order (runs of one channel, as hosts send them), then shuffled across files."""
    events = list(corpus_events())
    for i in range(0, len(events), size):
        yield events[i : i + size]
    mixed = list(events)
    random.Random(5).shuffle(mixed)
    for i in range(0, len(mixed), size):
        yield mixed[i : i + size]


# ------------------------------------------------------------------------------------------------------ filter
@pytest.mark.parametrize("name", sorted(RULES))
def test_filter_and_filter_each_keep_the_same_corpus_events(name: str) -> None:
    rule = rule_named(name)
    for batch in corpus_batches(500):
        fast = rule.filter(batch)
        assert ids(fast) == ids(rule.filter_each(batch))
        assert ids(fast) == ids([e for e in batch if rule.keep(e)])


@pytest.mark.parametrize("name", ["Minimal", "Common"])
def test_filter_keeps_exactly_the_seed_ids_of_the_connector_channels_on_the_corpus(name: str) -> None:
    wanted = seed_event_sets()[name]
    channels = {c.casefold() for c in ALL_CHANNELS}
    rule = RuleSet.compile([RuleSettings(name="r", event_set=name)]).rule_for("h")
    for batch in corpus_batches(300):
        expected = [e for e in batch if e["channel"].casefold() in channels and e["event_id"] in wanted]
        assert ids(rule.filter(batch)) == ids(expected)


CHANNELS = ["Security", "security", "SECURITY", "System", "Application", "Microsoft-Windows-AppLocker/EXE and DLL",
            "Microsoft-Windows-Sysmon/Operational", "", None]


@st.composite
def raw_events(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": draw(st.sampled_from([4624, 4625, 4688, 1102, 7045, 8002, 0, 65535])),
        "channel": draw(st.sampled_from(CHANNELS)),
        "computer": draw(st.sampled_from(["dc1", "ws2", "KIOSK-01"])),
        "level": draw(st.sampled_from([0, 4])),
        "provider_name": draw(st.sampled_from(["Microsoft-Windows-Eventlog", "X"])),
        "keywords": "0x8020000000000000", "task": 0, "time_created": T0, "event_data": [],
    }
    if draw(st.integers(0, 30)) == 0:
        del event["channel"]  # a Mapping without the key: read with .get() by the reference
    return event


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(sorted(RULES)), batch=st.lists(raw_events(), max_size=40),
       one_channel=st.booleans())
def test_filter_agrees_with_filter_each_on_generated_batches(name: str, batch: list[dict[str, Any]],
                                                             one_channel: bool) -> None:
    if one_channel and batch and "channel" in batch[0]:
        batch = [{**e, "channel": batch[0]["channel"]} for e in batch]
    rule = rule_named(name)
    assert ids(rule.filter(batch)) == ids(rule.filter_each(batch))


@settings(max_examples=60, deadline=None)
@given(batch=st.lists(raw_events(), max_size=40), host=st.sampled_from(["dc1", "ws2"]))
def test_batch_of_several_computers_is_judged_by_each_computers_rule(batch: list[dict[str, Any]], host: str) -> None:
    batch = [e for e in batch if "channel" in e]
    rules = RuleSet.compile([RuleSettings(name="kiosks", computers=["KIOSK-*"], event_set="None"),
                             RuleSettings(name="default", computers=["*"], **RULES["predicates"])])
    one_rule = RuleSet.compile([RuleSettings(name="default", computers=["*"], event_set="Common")])
    for ruleset in (rules, one_rule):
        kept = BatchProcessor(ruleset)._filter(host, batch)
        assert ids(kept) == ids([e for e in batch if ruleset.rule_for(e["computer"]).keep(e)])


# ------------------------------------------------------------------------------------------------------- dedup
class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def assert_same_dedup(batches: list[list[dict[str, Any]]], window_seconds: float, idle_steps: list[float]) -> Deduper:
    """admit_batch and admit_each side by side: same verdicts, same delta records in the same order, same state."""
    clock = Clock()
    fast, each = Deduper(window_seconds, clock=clock), Deduper(window_seconds, clock=clock)
    for n, batch in enumerate(batches):
        kept, dups = fast.admit_batch(batch)
        kept_each, dups_each = each.admit_each(batch)
        assert (ids(kept), ids(dups)) == (ids(kept_each), ids(dups_each)), f"batch {n}"
        assert list(fast.delta().items()) == list(each.delta().items()), f"batch {n}"
        clock.now += idle_steps[n % len(idle_steps)]
    assert fast.snapshot() == each.snapshot()
    assert list(fast.logs) == list(each.logs)
    return fast


def generated_batches(rng: random.Random) -> list[list[dict[str, Any]]]:
    """Logs that mostly grow by ascending record ids, with gaps, bucket crossings, clears (1102, ids restart),
    events older than the window, events without record ids, repeats from earlier batches and within a batch,
    mixed channels and computers, and shuffled (second collector) batches."""
    computers = rng.choice([["dc1"], ["dc1", "ws2"], ["dc1", "ws2", "", "x3"]])
    channels = rng.choice([["Security"], ["Security", "System"],
                           ["Security", "System", "Application"] + [f"Channel{k}" for k in range(8)]])
    logs: dict[tuple[str, str], tuple[int, int]] = {}
    sent: list[dict[str, Any]] = []
    batches = []
    for _ in range(rng.randint(1, 10)):
        batch: list[dict[str, Any]] = []
        for _ in range(rng.randint(0, 120)):
            kind = rng.random()
            if kind < 0.08 and sent:  # the other collector's copy of an earlier event
                batch.append(dict(rng.choice(sent)))
                continue
            log = (rng.choice(computers), rng.choice(channels))
            r, t = logs.get(log, (rng.choice([1, 1000, 1023, 50_000]), T0))
            event_id = rng.choice([4624, 4625, 4688])
            if kind < 0.75:
                r += rng.choice([1, 1, 1, 1, 2, 7, 1024])
                t += rng.randint(0, 3 * TICKS_PER_SECOND)
            elif kind < 0.8:  # cleared: 1102 on Security; ids restart (or, in some exports, go on)
                r = 1 if kind < 0.78 else r + 1
                t += rng.randint(1, 60 * TICKS_PER_SECOND)
                event_id = 1102
            elif kind < 0.85:  # a late event, maybe outside the window or older than the log's last clear
                r += rng.choice([0, 1])
                t -= rng.randint(0, 30 * HOUR)
            elif kind < 0.9:  # out of order
                r = max(1, r - rng.randint(1, 300))
            elif kind < 0.95:
                event = {"computer": log[0], "channel": log[1], "event_record_id": None, "time_created": t,
                         "event_id": event_id, "event_data": [{"name": "n", "value": str(rng.randint(0, 3))}]}
                batch.append(event)
                continue
            logs[log] = (r, t)
            batch.append({"computer": log[0], "channel": log[1], "event_record_id": r, "time_created": t,
                          "event_id": event_id, "event_data": []})
        if batch and rng.random() < 0.3:  # repeats within the batch
            batch += [dict(e) for e in rng.sample(batch, rng.randint(1, min(len(batch), 10)))]
        if rng.random() < 0.2:
            rng.shuffle(batch)
        sent += batch
        batches.append(batch)
    return batches


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 2**32), window=st.sampled_from([60, 3600, 24 * 3600]),
       idle=st.sampled_from([[0.0], [1.0, 100.0], [0.0, 2000.0]]))
def test_admit_batch_agrees_with_admit_each_on_generated_batches(seed: int, window: int, idle: list[float]) -> None:
    assert_same_dedup(generated_batches(random.Random(seed)), window, idle)


def test_admit_batch_agrees_with_admit_each_on_the_corpus_sent_by_two_collectors() -> None:
    events = [e for e in corpus_events() if e.get("event_record_id") is not None]
    distinct = {(e["computer"], e["channel"], e["event_record_id"], e["time_created"]) for e in events}
    rng = random.Random(11)
    again = [e for e in events if rng.random() < 0.3]
    rng.shuffle(again)
    stream = events + again
    batches = [stream[i : i + 500] for i in range(0, len(stream), 500)]
    deduper = assert_same_dedup(batches, 10 * 365 * 24 * 3600, [0.0])  # corpus times span years: nothing expires
    assert deduper.event_count() == len(distinct)


def test_blocks_after_a_cleared_log_agree_and_old_lives_still_catch_their_duplicates() -> None:
    security = [e for e in corpus_events() if e["channel"] == "Security" and e["event_id"] != 1102][:3000]

    def life(start: int, count: int, first_event_id: int | None = None) -> list[dict[str, Any]]:
        out = [{**security[k % len(security)], "computer": "dc1", "event_record_id": k + 1,
                "time_created": start + k * TICKS_PER_SECOND} for k in range(count)]
        if first_event_id is not None:
            out[0]["event_id"] = first_event_id
        return out

    old = life(T0, 3000)
    new = life(T0 + HOUR, 2500, first_event_id=1102)  # ids restart under the old ones, later times
    batches = [old[i : i + 500] for i in range(0, 3000, 500)] + [new[i : i + 500] for i in range(0, 2500, 500)]
    batches += [old[1000:1500], new[:500], list(reversed(new[2000:])), old[2900:] + new[2400:]]
    deduper = assert_same_dedup(batches, 24 * 3600, [1.0])
    assert [len(e.times) for e in deduper.logs[("dc1", "Security")].epochs] == [3000, 2500]
