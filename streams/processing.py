"""The work done for one raw Kafka message, without Kafka: decode → filter → dedup → normalise → encode.

``BatchProcessor.process`` is what the Faust agent (``streams.app``) runs per message, and what the plain
confluent-kafka loop of ``bench/streams_bench.py`` runs, so both measure the same functions. It returns an
``Outcome``: the encoded ``SecurityEventBatch`` (None when no row is left), the dead-letter records, and counts.

Dead-letter records (topic ``topics.dead_letter``), headers UTF-8:

- ``secstream.stage`` = ``stream``; ``secstream.reason`` = ``undecodable`` (value: the original message bytes) or
  ``not-normalisable`` (value: a ``RawEventBatch`` with the original events of that reason, same host and batch
  id, so it can be replayed onto the raw topic once fixed); ``secstream.error`` = the decoder's or normaliser's
  message; ``secstream.source`` = ``<topic>/<partition>/<offset>``; ``secstream.events`` = events in the record.
"""

from __future__ import annotations

import gc
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import eq
from typing import Any

from schemas.codec import DecodeError, decode_raw_batch, encode_raw_batch, encode_security_batch
from schemas.event_data import as_dicts
from secstream.dead_letter import dead_letter_headers
from secstream.telemetry import KafkaHeaders
from streams.dedup import Deduper
from streams.filtering import RuleSet
from streams.normalize import DEFAULT_CONTEXT, NormalizeContext, normalize_batch

# Output batch ids are UUIDv5 of the source batch id: the same when a batch is processed again.
OUTPUT_BATCH_NAMESPACE = uuid.UUID("3f0c64a6-1f55-5a8e-9c52-0c1d6c7e2b4a")

# Under Kafka's default message.max.bytes (1 MB), with room for headers and the record overhead.
MAX_MESSAGE_BYTES = 900_000


@dataclass
class DeadLetter:
    key: bytes | None
    value: bytes
    headers: KafkaHeaders


@dataclass
class Outcome:
    """What one input message became."""

    computer: str = ""
    # Encoded SecurityEventBatch messages, each at most max_message_bytes; empty when no row is left.
    values: list[bytes] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    events_in: int = 0
    filtered: int = 0
    duplicates: int = 0
    rows: int = 0
    dead_lettered: int = 0


def encode_bounded(host: str, source_batch_id: str, rows: list[dict[str, Any]], max_bytes: int) -> list[bytes]:
    """Rows as SecurityEventBatch messages of at most ``max_bytes`` each (rows are larger than raw events, so one
    raw batch can outgrow Kafka's message limit). Halving is deterministic, so a retried batch gets the same ids."""

    def encode(part: list[dict[str, Any]], suffix: str) -> list[bytes]:
        value = encode_security_batch({
            "computer": host,
            "batch_id": str(uuid.uuid5(OUTPUT_BATCH_NAMESPACE, source_batch_id + suffix)),
            "source_batch_id": source_batch_id,
            "rows": part,
        })
        if len(value) <= max_bytes or len(part) == 1:
            return [value]
        middle = len(part) // 2
        return encode(part[:middle], suffix + "/0") + encode(part[middle:], suffix + "/1")

    return encode(rows, "")


# A message's objects (decoded events, rows) form trees, freed by reference counting when it is done. Collections
# triggered by their allocation would only traverse them in vain, so the cyclic GC is off for the work of a message;
# the next collection after it sees the few objects left. A pair of calls rather than a context manager: entering
# one allocates, and that allocation could itself start a collection.
def pause_collector() -> bool:
    """Turn the cyclic GC off; True when it was on (for ``resume_collector``)."""
    collecting = gc.isenabled()
    gc.disable()
    return collecting


def resume_collector(collecting: bool) -> None:
    if collecting:
        gc.enable()


class BatchProcessor:
    """Per-message work of the stream stage. Holds the compiled rules; dedup state is passed in per partition."""

    def __init__(
        self,
        rules: RuleSet,
        flavour: str = "ama",
        context: NormalizeContext = DEFAULT_CONTEXT,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.rules = rules
        self.flavour = flavour
        self.context = context
        self.max_message_bytes = max_message_bytes

    def process(self, value: bytes | None, key: bytes | None, deduper: Deduper, source: str) -> Outcome:
        """One raw message. ``source`` ("topic/partition/offset") only labels dead letters."""
        collecting = pause_collector()
        try:
            return self._process(value, key, deduper, source)
        finally:
            resume_collector(collecting)

    def _process(self, value: bytes | None, key: bytes | None, deduper: Deduper, source: str) -> Outcome:
        try:
            if value is None:
                raise DecodeError("message has no value")
            batch = decode_raw_batch(value, event_data_pairs=True)
        except DecodeError as exc:
            out = Outcome(dead_lettered=1)
            headers = dead_letter_headers("stream", "undecodable", error=exc, source=source, events=0)
            out.dead_letters.append(DeadLetter(key, value or b"", headers))
            return out
        events = batch["events"]
        host = batch["host"]
        out = Outcome(computer=host, events_in=len(events))
        wanted = self._filter(host, events)
        out.filtered = len(events) - len(wanted)
        kept, duplicates = deduper.admit_batch(wanted)
        out.duplicates = len(duplicates)
        rows, rejected = self._normalize(kept)
        if rows:
            out.rows = len(rows)
            out.values = encode_bounded(host, batch["batch_id"], rows, self.max_message_bytes)
        if rejected:
            out.dead_lettered = len(rejected)
            out.dead_letters.extend(self._rejected(batch, rejected, key, source))
        return out

    def _normalize(self, events: list[Any]) -> tuple[list[dict[str, Any]], list[tuple[Mapping[str, Any], str]]]:
        try:
            return normalize_batch(events, flavour=self.flavour, context=self.context)
        except Exception:  # one bad event must not stop the partition: isolate it
            rows: list[dict[str, Any]] = []
            rejected: list[tuple[Mapping[str, Any], str]] = []
            for event in events:
                try:
                    one, refused = normalize_batch([event], flavour=self.flavour, context=self.context)
                except Exception as exc:
                    one, refused = [], [(event, f"normaliser failed: {exc.__class__.__name__}: {exc}")]
                rows.extend(one)
                rejected.extend(refused)
            return rows, rejected

    def _filter(self, host: str, events: Sequence[dict[str, Any]]) -> list[Any]:
        # A batch is one host's, but a forwarding host (WEF collector) may carry other computers' events:
        # each event is judged by the rule of its own Computer.
        if all(map(eq, map(dict.get, events, repeat("computer")), repeat(host))):  # C-level loop: per event
            return self.rules.filter_batch(host, events)
        rules = {self.rules.rule_for(computer or "") for computer in dict.fromkeys(map(dict.get, events,
                                                                                      repeat("computer")))}
        if len(rules) == 1:  # several computers, one rule (e.g. only the default group): one filter pass
            return rules.pop().filter(events)
        by_computer: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for ev in events:
            by_computer[ev.get("computer") or ""].append(ev)
        keep = {id(ev) for computer, group in by_computer.items() for ev in self.rules.filter_batch(computer, group)}
        return [ev for ev in events if id(ev) in keep]

    @staticmethod
    def _rejected(
        batch: Mapping[str, Any], rejected: list[tuple[Mapping[str, Any], str]], key: bytes | None, source: str
    ) -> list[DeadLetter]:
        by_reason: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for event, reason in rejected:
            by_reason[reason].append(event)
        letters = []
        for reason, events in by_reason.items():
            whole = [{**event, "event_data": as_dicts(event["event_data"])} for event in events]
            value = encode_raw_batch({**batch, "events": whole})
            headers = dead_letter_headers("stream", "not-normalisable", error=reason, source=source, events=len(events))
            letters.append(DeadLetter(key, value, headers))
        return letters
