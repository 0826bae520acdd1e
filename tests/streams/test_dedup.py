"""Dedup state: exact against a plain set of identities, bounded, and restorable from its own delta records."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.dedup import TICKS_PER_SECOND, Deduper

HOUR = 3600 * TICKS_PER_SECOND
T0 = 1_700_000_000 * TICKS_PER_SECOND


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def ev(r: int | None, t: int, computer: str = "dc1", channel: str = "Security", event_id: int = 4624) -> dict[str, Any]:
    return {"computer": computer, "channel": channel, "event_record_id": r, "time_created": t, "event_id": event_id}


def ident(e: dict[str, Any]) -> tuple[Any, ...]:
    return (e["computer"], e["channel"], e["event_record_id"], e["time_created"])


def log_lives(rng: random.Random, lives: int, per_life: int, keep: float, computer: str, channel: str) -> list[dict]:
    """Events of one log over several lives (cleared between them): ids restart, times keep moving forward."""
    out = []
    t = T0
    for _ in range(lives):
        for r in range(1, per_life + 1):
            t += rng.randint(1, 5 * TICKS_PER_SECOND)
            if rng.random() < keep:
                out.append(ev(r, t, computer, channel))
        t += 60 * TICKS_PER_SECOND  # the clear happens a minute after the last event of the old life
    return out


def two_collectors(rng: random.Random, events: list[dict], dup_share: float, batch: int) -> list[list[dict]]:
    """Every event arrives once; a share arrives again through the other collector, in a different order."""
    copies = list(events) + [e for e in events if rng.random() < dup_share]
    rng.shuffle(copies)
    return [copies[i : i + batch] for i in range(0, len(copies), batch)]


def run_and_compare(batches: list[list[dict]], deduper: Deduper, restart_at: set[int] | None = None) -> Deduper:
    seen: set[tuple[Any, ...]] = set()
    store: dict[bytes, bytes] = {}
    for n, batch in enumerate(batches):
        kept, dups = deduper.admit_batch(batch)
        for e in kept:
            assert ident(e) not in seen, f"duplicate let through: {ident(e)}"
            seen.add(ident(e))
        for e in dups:
            assert ident(e) in seen, f"distinct event dropped: {ident(e)}"
        assert len(kept) + len(dups) == len(batch)
        for key, value in deduper.delta().items():
            if value is None:
                store.pop(key, None)
            else:
                store[key] = value
        if restart_at and n in restart_at:
            assert store == deduper.snapshot()
            fresh = Deduper(window_seconds=deduper.window_ticks / TICKS_PER_SECOND, clock=deduper._clock)
            fresh.load(store.items())
            deduper = fresh
    return deduper


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    lives=st.integers(1, 3),
    keep=st.sampled_from([1.0, 0.7, 0.3]),
    dup_share=st.sampled_from([0.0, 0.3, 1.0]),
    batch=st.integers(1, 60),
)
def test_exact_against_a_set_of_identities(seed: int, lives: int, keep: float, dup_share: float, batch: int) -> None:
    rng = random.Random(seed)
    events = []
    for host in ("dc1", "ws7"):
        for channel in ("Security", "System"):
            events += log_lives(rng, lives, 80, keep, host, channel)
    events += [{**ev(None, T0 + k * TICKS_PER_SECOND // 3, "exp1", "Security"),
                "event_data": [{"name": "n", "value": str(k % 5)}]} for k in range(40)]
    batches = two_collectors(rng, events, dup_share, batch)
    run_and_compare(batches, Deduper(window_seconds=10 * 24 * 3600), restart_at={len(batches) // 3, len(batches) // 2})


def test_cleared_log_with_1102_starts_a_new_epoch() -> None:
    d = Deduper()
    old = [ev(r, T0 + r * TICKS_PER_SECOND) for r in range(1, 101)]
    assert d.admit_batch(old) == (old, [])
    # Cleared: 1102 is record 1 of the new life, a second later; ids restart.
    t1 = T0 + 101 * TICKS_PER_SECOND
    new = [ev(1, t1, event_id=1102)] + [ev(r, t1 + r) for r in range(2, 51)]
    kept, dups = d.admit_batch(new)
    assert kept == new and dups == []
    assert len(d.logs[("dc1", "Security")].epochs) == 2
    # Both lives are remembered: re-sending either is all duplicates.
    assert d.admit_batch(old + new) == ([], old + new)


def test_same_record_id_different_time_is_not_a_duplicate_and_same_identity_is() -> None:
    d = Deduper()
    a = ev(5, T0)
    assert d.admit_batch([a]) == ([a], [])
    b = ev(5, T0 + HOUR)
    assert d.admit_batch([b]) == ([b], [])
    assert d.admit_batch([dict(a), dict(b)]) == ([], [a, b])
    other_channel = ev(5, T0, channel="System")
    other_host = ev(5, T0, computer="dc2")
    assert d.admit_batch([other_channel, other_host]) == ([other_channel, other_host], [])


def test_events_without_record_id_dedup_on_content_and_time() -> None:
    d = Deduper()
    a = {**ev(None, T0), "event_data": [{"name": "TargetUserName", "value": "alice"}]}
    b = {**ev(None, T0), "event_data": [{"name": "TargetUserName", "value": "bob"}]}  # same time, other content
    assert d.admit_batch([a, b, dict(a)]) == ([a, b], [a])
    restored = Deduper()
    restored.load(d.snapshot().items())
    assert restored.admit_batch([b]) == ([], [b])


def test_runs_of_ids_share_ranges_and_expire_by_event_time() -> None:
    d = Deduper(window_seconds=3600)
    step = TICKS_PER_SECOND
    for b in range(4):
        d.admit_batch([ev(r, T0 + r * step) for r in range(b * 250 + 1, b * 250 + 251)])
    assert d.range_count() == 1  # ids 1..1000 sit in one bucket of 1024
    assert d.state_bytes() < 1000 * 8 + 200
    gappy = Deduper(window_seconds=3600)
    gappy.admit_batch([ev(r, T0 + r * step) for r in range(1, 1000) if r % 4])
    assert gappy.range_count() == 250
    # Two hours of event time later, the first hour is gone.
    late = [ev(r, T0 + 2 * HOUR + r * step) for r in range(10_001, 10_601)]
    d.admit_batch(late)
    assert d.event_count() == 600
    kept, _ = d.admit_batch([ev(1, T0 + step)])  # older than the window: no longer remembered
    assert len(kept) == 1
    assert d.admit_batch(late) == ([], late)  # inside the window: still caught


def test_idle_logs_are_evicted_with_delete_records() -> None:
    clock = Clock()
    d = Deduper(window_seconds=3600, clock=clock)
    d.admit_batch([ev(r, T0 + r) for r in range(1, 10)])
    assert d.delta()
    clock.now += 3601
    d.admit_batch([ev(1, T0, computer="other")])
    assert ("dc1", "Security") not in d.logs
    delta = d.delta()
    assert any(v is None for v in delta.values())


def test_late_event_of_an_earlier_life_after_a_clear() -> None:
    d = Deduper()
    old = [ev(r, T0 + r * TICKS_PER_SECOND) for r in range(1, 60)]
    new = [ev(r, T0 + HOUR + r * TICKS_PER_SECOND) for r in range(1, 60)]
    # The new life arrives first through one collector, the old one late through the other, interleaved.
    mixed = [e for pair in zip(new, old, strict=True) for e in pair]
    assert d.admit_batch(mixed) == (mixed, [])
    assert d.admit_batch(list(reversed(mixed))) == ([], list(reversed(mixed)))


def test_state_record_round_trip_is_exact() -> None:
    d = Deduper()
    rng = random.Random(7)
    events = log_lives(rng, 2, 5000, 0.6, "dc1", "Security")
    d.admit_batch(events)
    restored = Deduper()
    restored.load(d.snapshot().items())
    assert restored.snapshot() == d.snapshot()
    assert restored.admit_batch(events) == ([], events)
