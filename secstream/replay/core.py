"""The pure part of a replay: what each message of a bounded range becomes, and the counts. No I/O.

``ReplayProcessor.process`` turns one Kafka message into the rows to send:

* ``raw``: decode the ``RawEventBatch`` → the rules (``streams.filtering.RuleSet``, judged per event's Computer as the
  stream stage does) → dedup within the replay (``streams.dedup.Deduper``, one per partition, with a frozen clock so
  the result depends only on the events) → ``normalize_batch`` → drop rows whose ``EventOriginId`` the destination
  already holds (``skip_ids``);
* ``normalized``: decode the ``SecurityEventBatch``; a message whose offset the destination already received (its
  delivered ranges) contributes nothing, nor does a row whose ``EventOriginId`` is in ``skip_ids`` (sent by a raw
  replay).

The same processor runs in a dry run and in a real replay, so a dry run's ``to_send`` is what a real replay sends.
"""

from __future__ import annotations

import hashlib
import heapq
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from pathlib import Path
from typing import Any, Literal, cast

import orjson
import yaml
from pydantic import ValidationError

from schemas.codec import DecodeError, decode_raw_batch, decode_security_batch, encode_security_batch
from schemas.nullable_record import read_varint
from secstream.config import RuleSettings
from streams.dedup import Deduper
from streams.filtering import RuleLike, RuleSet
from streams.identity import event_origin_id
from streams.normalize import normalize_batch
from streams.processing import BatchProcessor, DeadLetter, pause_collector, resume_collector

TopicKind = Literal["raw", "normalized"]
TOPIC_KINDS: tuple[TopicKind, ...] = ("raw", "normalized")
_LOW_64 = (1 << 64) - 1


class RulesError(ValueError):
    """``--rules`` names no usable rules; the message says why."""


# ---------------------------------------------------------------------------------------------------- rules


def load_rules(spec: str | None, configured: Sequence[RuleSettings]) -> list[RuleSettings]:
    """The rules of a raw replay: ``spec`` is a YAML file (a list of rules, or a mapping with ``rules:``), or
    comma-separated names of configured rules; None = every configured rule."""
    if not spec:
        return list(configured)
    path = Path(spec)
    if path.suffix.lower() in (".yaml", ".yml", ".json") or path.is_file():
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise RulesError(f"--rules {spec}: cannot be read ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise RulesError(f"--rules {spec}: not valid YAML ({exc})") from None
        items = data.get("rules") if isinstance(data, dict) else data
        if not isinstance(items, list) or not items:
            raise RulesError(f"--rules {spec}: expected a list of rules (name, computers, event_set, xpath)")
        try:
            return [RuleSettings.model_validate(item) for item in items]
        except ValidationError as exc:
            raise RulesError(f"--rules {spec}: {exc}") from None
    names = [n.strip() for n in spec.split(",") if n.strip()]
    known = {r.name: r for r in configured}
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        missing = ", ".join(unknown) or repr(spec)
        raise RulesError(f"--rules: unknown rule {missing}; configured rules: "
                         f"{', '.join(known) or '(none)'} (or give a YAML file of rules)")
    return [known[n] for n in names]


def rules_document(rules: Sequence[RuleSettings]) -> list[dict[str, Any]]:
    return [r.model_dump(mode="json") for r in rules]


def rules_fingerprint(rules_doc: Sequence[Mapping[str, Any]], flavour: str) -> str:
    """Names the rules (and row flavour) of a raw replay in the delivery log."""
    canonical = orjson.dumps({"rules": list(rules_doc), "flavour": flavour}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:16]


def compile_rules(rules_doc: Sequence[Mapping[str, Any]]) -> RuleSet:
    return RuleSet.compile(cast(Sequence[RuleLike], [RuleSettings.model_validate(r) for r in rules_doc]))


# ---------------------------------------------------------------------------------------------------- skip data


class OriginIdSet:
    """EventOriginIds (UUID strings) as 128-bit keys: ~16 bytes per id, exact.

    New ids go into a set; every ``chunk`` of them is sorted into two ``array('Q')`` columns (high and low 64 bits),
    and runs of similar size are merged (as a log-structured merge tree does), so there are O(log n) runs and a
    look-up is a few binary searches. A plain set of ints would cost ~86 bytes per id.
    """

    def __init__(self, ids: Iterable[str] = (), chunk: int = 1 << 18) -> None:
        self._chunk = chunk
        self._recent: set[int] = set()
        self._runs: list[_Run] = []  # larger runs first
        self.update(ids)

    def add(self, origin_id: str) -> None:
        self.update((origin_id,))

    def update(self, origin_ids: Iterable[str]) -> None:
        """Adds ids a batch at a time: one membership pass over the batch, then one set update."""
        batch = list(origin_ids)
        start = 0
        while start < len(batch):
            room = self._chunk - len(self._recent)  # keeps the set of recent ids at most ``chunk`` long
            keys = _keys(batch[start:start + room])
            start += room
            self._recent.update(compress(keys, self._absent(keys)))
            if len(self._recent) >= self._chunk:
                self._flush()

    def __contains__(self, origin_id: object) -> bool:
        if not isinstance(origin_id, str):
            return False
        return not self._absent(_keys([origin_id]))[0]

    def absent(self, origin_ids: Sequence[str | None]) -> list[bool]:
        """For each id of a batch: True when it is not held (a missing id, None or "", is never held)."""
        if not self:
            return [True] * len(origin_ids)
        known = [i for i, origin_id in enumerate(origin_ids) if origin_id]
        if len(known) == len(origin_ids):
            return self._absent(_keys(cast(Sequence[str], origin_ids)))
        out = [True] * len(origin_ids)
        for i, gone in zip(known, self._absent(_keys([cast(str, origin_ids[i]) for i in known])), strict=True):
            out[i] = gone
        return out

    def _absent(self, keys: list[int]) -> list[bool]:
        recent = self._recent
        out = [key not in recent for key in keys]
        for run in self._runs:
            # One pass per run over the batch's still-absent keys; bisect and the column reads run in C.
            highs, lows, starts, shift = run.highs, run.lows, run.starts, run.shift
            for i in compress(range(len(keys)), out):
                key = keys[i]
                high = key >> 64
                bucket = high >> shift
                end = starts[bucket + 1]
                j = bisect_left(highs, high, starts[bucket], end)
                while j < end and highs[j] == high:  # equal high halves: practically never more than one
                    if lows[j] == key & _LOW_64:
                        out[i] = False
                        break
                    j += 1
        return out

    def __len__(self) -> int:
        return len(self._recent) + sum(len(run.highs) for run in self._runs)

    def nbytes(self) -> int:
        """Bytes of the sorted columns and their bucket indexes (the set of recent ids is at most ``chunk`` long)."""
        return sum(run.nbytes() for run in self._runs)

    def _flush(self) -> None:
        keys = sorted(self._recent)
        self._recent.clear()
        self._runs.append(_Run(array("Q", [k >> 64 for k in keys]), array("Q", [k & _LOW_64 for k in keys])))
        while len(self._runs) > 1 and len(self._runs[-2].highs) <= 2 * len(self._runs[-1].highs):
            newer = self._runs.pop()
            older = self._runs.pop()
            highs, lows = array("Q"), array("Q")
            pairs = (zip(run.highs, run.lows, strict=True) for run in (older, newer))
            for high, low in heapq.merge(*pairs):
                highs.append(high)
                lows.append(low)
            self._runs.append(_Run(highs, lows))


class _Run:
    """Sorted (high, low) 64-bit columns, with where each bucket of the top bits of ``high`` starts (at most 2**16
    buckets): a look-up bisects one bucket (~16 entries at 1M ids) instead of the whole run."""

    __slots__ = ("highs", "lows", "shift", "starts")

    def __init__(self, highs: array[int], lows: array[int]) -> None:
        self.highs, self.lows = highs, lows
        bits = min(16, max(0, len(highs).bit_length() - 3))
        self.shift = 64 - bits
        self.starts = array("Q", [bisect_left(highs, b << self.shift) for b in range(1 << bits)])
        self.starts.append(len(highs))

    def nbytes(self) -> int:
        return (len(self.highs) * 2 + len(self.starts)) * 8


def _keys(origin_ids: Sequence[str]) -> list[int]:
    return [int(i.replace("-", ""), 16) for i in origin_ids]


class OffsetRanges:
    """Inclusive offset ranges per partition (merged, sorted), e.g. what a destination has received."""

    def __init__(self, ranges: Mapping[int, Sequence[tuple[int, int]]] | None = None) -> None:
        self._firsts: dict[int, list[int]] = {}
        self._lasts: dict[int, list[int]] = {}
        for partition, pairs in (ranges or {}).items():
            ordered = sorted(pairs)
            self._firsts[partition] = [a for a, _ in ordered]
            self._lasts[partition] = [b for _, b in ordered]

    def __contains__(self, position: object) -> bool:
        partition, offset = cast(tuple[int, int], position)
        firsts = self._firsts.get(partition)
        if not firsts:
            return False
        i = bisect_right(firsts, offset) - 1
        return i >= 0 and offset <= self._lasts[partition][i]

    def pieces(self, partition: int, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of [start, end) inside these ranges, as [start, end) pairs."""
        out = []
        for first, last in zip(self._firsts.get(partition, []), self._lasts.get(partition, []), strict=True):
            lo, hi = max(first, start), min(last + 1, end)
            if lo < hi:
                out.append((lo, hi))
        return out


# ---------------------------------------------------------------------------------------------------- processing


@dataclass
class ReplayCounts:
    """Totals of a replay. Events for raw, rows for normalized; ``to_send`` are rows handed to the sender."""

    messages: int = 0
    read: int = 0
    filtered: int = 0
    duplicates: int = 0
    already_delivered: int = 0
    dead_lettered: int = 0  # not normalisable (raw) or undecodable messages
    to_send: int = 0
    by_partition: Counter[int] = field(default_factory=Counter)  # rows to send per partition
    by_event_id: Counter[int] = field(default_factory=Counter)  # rows to send per EventID

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages, "read": self.read, "to_send": self.to_send, "filtered": self.filtered,
            "duplicates": self.duplicates, "already_delivered": self.already_delivered,
            "dead_lettered": self.dead_lettered,
            "by_partition": {str(k): v for k, v in sorted(self.by_partition.items())},
            "by_event_id": {str(k): v for k, v in sorted(self.by_event_id.items())},
        }


@dataclass
class Processed:
    """What one message becomes: the rows to send (for ``computer``) and dead-letter records to write."""

    computer: str
    rows: list[dict[str, Any]]
    dead_letters: list[DeadLetter] = field(default_factory=list)


class ReplayProcessor:
    """Per-message work of a replay; keeps the counts and, for raw, the dedup state of each partition."""

    def __init__(
        self,
        kind: TopicKind,
        *,
        rules: RuleSet | None = None,
        flavour: str = "ama",
        dedup_window_seconds: float = 24 * 3600,
        delivered: OffsetRanges | None = None,
        skip_ids: OriginIdSet | None = None,
        topic: str = "",
    ) -> None:
        if kind not in TOPIC_KINDS:
            raise ValueError(f"topic kind {kind!r}: expected raw or normalized")
        if kind == "raw" and rules is None:
            raise ValueError("a raw replay needs rules")
        self.kind = kind
        self.topic = topic
        self.delivered = delivered or OffsetRanges()
        self.skip_ids = skip_ids or OriginIdSet()
        self.counts = ReplayCounts()
        self._stage = BatchProcessor(rules, flavour=flavour) if rules is not None else None
        self._flavour = flavour
        self._window = dedup_window_seconds
        self._dedupers: dict[int, Deduper] = {}

    def process(self, partition: int, offset: int, value: bytes | None, key: bytes | None = None) -> Processed:
        """One message. DecodeError (counted as dead-lettered) when it is not a batch of the topic's schema."""
        self.counts.messages += 1
        collecting = pause_collector()
        try:
            return self._process(partition, offset, value, key)
        except DecodeError:
            self.counts.dead_lettered += 1
            raise
        finally:
            resume_collector(collecting)

    def _process(self, partition: int, offset: int, value: bytes | None, key: bytes | None) -> Processed:
        if value is None:
            raise DecodeError("message has no value")
        if self.kind == "normalized":
            if (partition, offset) in self.delivered:
                # Only counted: the row count is in the first bytes, nothing needs decoding.
                skipped = security_row_count(value)
                self.counts.read += skipped
                self.counts.already_delivered += skipped
                return Processed("", [])
            return self.take_security_batch(partition, decode_security_batch(value))
        # EventData items as (name, value) tuples, as the stream stage reads them.
        return self.take_raw_batch(partition, offset, decode_raw_batch(value, event_data_pairs=True), key)

    def take_security_batch(self, partition: int, batch: dict[str, Any]) -> Processed:
        """A decoded SecurityEventBatch of a message the destination has not received."""
        rows = batch["rows"]
        self.counts.read += len(rows)
        if self.skip_ids:
            fresh = list(compress(rows, self.skip_ids.absent(_column(rows, "EventOriginId"))))
            self.counts.already_delivered += len(rows) - len(fresh)
            rows = fresh
        self._count_sent(partition, rows)
        return Processed(batch["computer"], rows)

    def take_raw_batch(self, partition: int, offset: int, batch: dict[str, Any], key: bytes | None = None) -> Processed:
        """A decoded RawEventBatch: rules, dedup, skip set, normalisation, each applied to the whole batch."""
        assert self._stage is not None
        events = batch["events"]
        host = batch["host"]
        counts = self.counts
        counts.read += len(events)
        wanted = self._stage._filter(host, events)
        counts.filtered += len(events) - len(wanted)
        deduper = self._dedupers.get(partition)
        if deduper is None:
            # A frozen clock: nothing expires by processing time, so the outcome depends only on the events.
            deduper = self._dedupers[partition] = Deduper(self._window, clock=lambda: 0.0)
        kept, duplicates = deduper.admit_batch(wanted)
        counts.duplicates += len(duplicates)
        origin_ids: list[str] | None = None
        if self.skip_ids and kept:
            # Hashed once here and handed to normalisation, which would otherwise hash every event again.
            origin_ids = [event_origin_id(ev) for ev in kept]
            fresh = self.skip_ids.absent(origin_ids)
            kept = list(compress(kept, fresh))
            counts.already_delivered += len(origin_ids) - len(kept)
            origin_ids = list(compress(origin_ids, fresh))
        rows, rejected = normalize_batch(kept, flavour=self._flavour, origin_ids=origin_ids)
        letters: list[DeadLetter] = []
        if rejected:
            counts.dead_lettered += len(rejected)
            letters = self._stage._rejected(batch, rejected, key, f"{self.topic}/{partition}/{offset}")
        self._count_sent(partition, rows)
        return Processed(host, rows, letters)

    def _count_sent(self, partition: int, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        counts = self.counts
        counts.to_send += len(rows)
        counts.by_partition[partition] += len(rows)
        # Counted in C (Counter.update over a map), not in a Python loop per row; a row without EventID counts as 0.
        counts.by_event_id.update(_column(rows, "EventID"))
        missing = counts.by_event_id.pop(None, 0)  # type: ignore[call-overload]
        if missing:
            counts.by_event_id[0] += missing


_get = cast(Callable[[Mapping[str, Any], str], Any], dict.get)


def _column(rows: Sequence[Mapping[str, Any]], name: str) -> list[Any]:
    """One column of a batch of rows (None where absent), built in C rather than in a Python loop."""
    return list(map(_get, rows, repeat(name)))


_SECURITY_HEADER = encode_security_batch({"computer": "", "batch_id": "", "source_batch_id": "", "rows": []})[:5]


def security_row_count(value: bytes) -> int:
    """Rows of an encoded SecurityEventBatch, read from its header and array block count without decoding rows.

    Data written with another schema version (or another block layout) is decoded in full instead.
    """
    if value[:5] == _SECURITY_HEADER:
        pos = 5
        for _ in range(3):  # computer, batch_id, source_batch_id
            size, pos = read_varint(value, pos)
            pos += size
        count, pos = read_varint(value, pos)
        if count >= 0 and pos < len(value):  # our encoder writes one block: its count is the row count
            return count
    return len(decode_security_batch(value)["rows"])


def kept_origin_ids(stage: BatchProcessor, value: bytes) -> list[str]:
    """EventOriginIds of the events of one raw message that the stage's rules keep (rebuilds an earlier replay)."""
    batch = decode_raw_batch(value)
    return [event_origin_id(ev) for ev in stage._filter(batch["host"], batch["events"])]
