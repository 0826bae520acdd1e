"""Which events of which computer to keep: the connector's event sets and AMA-style XPath queries, per machine group.

Rules come from ``Settings.rules`` (``RuleSettings``): a name, glob patterns on Computer, and an event set and/or
XPath queries. A computer gets the first rule (in configuration order) with a pattern that matches its name; rules
whose patterns are only ``*`` form the default group and are consulted after every specific rule, wherever they
stand in the list. A computer that no rule matches keeps nothing. Patterns and channel names compare
case-insensitively, as Windows names do.

An event is kept when the rule's event set takes it (its channel is Security or one of the two AppLocker channels,
and its EventID is in the set; ``All`` takes every event of those channels, ``None`` nothing) or any of the rule's
queries selects it. Everything is compiled once at start; invalid queries raise :class:`RuleError` naming the rule.
A batch of one channel (the usual case: a host's batch is mostly one log) whose rule is an event set or
EventID-only queries is filtered with C-level passes only: its channels are read and compared in one pass, the
channel is looked up once, and each event costs a set membership test of its EventID (``filter``); a channel the
rule takes all or nothing of costs no per-event test. Other batches take the per-event loop (``filter_each``, the
reference): the channel's matcher is looked up when the channel changes from the previous event, then an EventID
set test inline or the compiled predicate.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress
from operator import itemgetter
from typing import Any, Protocol

from schemas.event_sets import ALL_CHANNELS, EVENT_SETS
from streams.xpath import Predicate, Query, Selector, XPathError, compile_queries

RawEvent = Mapping[str, Any]

RULE_CACHE_SIZE = 100_000  # computers remembered by rule_for (the cache is cleared when it is full)

_channel_of = itemgetter("channel")
_event_id_of = itemgetter("event_id")


class RuleError(ValueError):
    """A rule that cannot be compiled; the message names the rule and the query."""


class RuleLike(Protocol):
    """What a rule needs (``secstream.config.RuleSettings`` has these fields)."""

    @property
    def name(self) -> str: ...
    @property
    def computers(self) -> Sequence[str]: ...
    @property
    def event_set(self) -> str | None: ...
    @property
    def xpath(self) -> Sequence[str]: ...


@dataclass
class _ChannelMatcher:
    """What one rule takes from one channel."""

    take_all: bool = False
    event_ids: set[int] = field(default_factory=set)
    predicates: list[Predicate] = field(default_factory=list)
    # (selects, suppresses) of QueryList queries with a Suppress: kept if a select matches and no suppress does.
    guarded: list[tuple[list[Predicate | None], list[Predicate | None]]] = field(default_factory=list)

    def compile(self) -> Callable[[RawEvent], bool]:
        if self.take_all:
            return lambda event: True
        ids = frozenset(self.event_ids)
        predicates = tuple(self.predicates)
        guarded = tuple(self.guarded)
        if not predicates and not guarded:
            return lambda event: event["event_id"] in ids

        def keep(event: RawEvent) -> bool:
            if event["event_id"] in ids:
                return True
            for predicate in predicates:
                if predicate(event):
                    return True
            return any(_guarded_keep(event, selects, suppresses) for selects, suppresses in guarded)

        return keep

    def event_ids_only(self) -> frozenset[int] | None:
        """The EventID set when that is all this matcher tests (a batch filter then tests it inline)."""
        if self.take_all or self.predicates or self.guarded:
            return None
        return frozenset(self.event_ids)


def _matches(predicate: Predicate | None, event: RawEvent) -> bool:
    return predicate is None or predicate(event)


def _guarded_keep(event: RawEvent, selects: Sequence[Predicate | None],
                  suppresses: Sequence[Predicate | None]) -> bool:
    return any(_matches(p, event) for p in selects) and not any(_matches(p, event) for p in suppresses)


class _Verdict:
    """What a channel's rule decides for every event of it, whatever the EventID."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_TAKE_ALL = _Verdict("take all")
_TAKE_NOTHING = _Verdict("take nothing")
# What a channel's rule needs to judge a batch of that channel: the EventID set to test, a verdict for every event,
# or None when it has queries beyond EventID sets (the per-event loop then runs).
_ChannelTest = frozenset[int] | _Verdict | None


class CompiledRule:
    """One machine group's filter. ``keep`` for one event, ``filter`` for a batch."""

    def __init__(self, name: str, matchers: dict[str, Callable[[RawEvent], bool]],
                 event_id_sets: dict[str, frozenset[int]] | None = None,
                 take_all: Iterable[str] = ()) -> None:
        self.name = name
        self._by_channel = dict(matchers)  # keys are case-folded channel names
        self._id_sets = dict(event_id_sets or {})  # channels whose matcher only tests the EventID against a set
        self._take_all = frozenset(take_all)  # channels whose matcher keeps every event
        self.keeps_nothing = not matchers
        # Exact spellings seen in events -> (matcher, EventID set or None, batch test), so the usual case needs no
        # casefold().
        self._exact: dict[str, tuple[Callable[[RawEvent], bool] | None, frozenset[int] | None, _ChannelTest]] = {}

    def __repr__(self) -> str:
        return f"CompiledRule({self.name!r}, channels={sorted(self._by_channel)})"

    def _entry(self, channel: str) -> tuple[Callable[[RawEvent], bool] | None, frozenset[int] | None, _ChannelTest]:
        try:
            return self._exact[channel]
        except KeyError:
            folded = channel.casefold()
            matcher, ids = self._by_channel.get(folded), self._id_sets.get(folded)
            test: _ChannelTest = (ids if ids is not None else _TAKE_ALL if folded in self._take_all
                                  else _TAKE_NOTHING if matcher is None else None)
            entry = (matcher, ids, test)
            if len(self._exact) < 1_000:
                self._exact[channel] = entry
            return entry

    def _matcher(self, channel: str) -> Callable[[RawEvent], bool] | None:
        return self._entry(channel)[0]

    def keep(self, raw_event: RawEvent) -> bool:
        matcher = self._matcher(raw_event.get("channel") or "")
        return matcher is not None and matcher(raw_event)

    def filter(self, events: Iterable[RawEvent]) -> list[Any]:
        """The events this rule keeps, in order; the same list as ``filter_each``."""
        if self.keeps_nothing:
            return []
        batch = events if isinstance(events, list) else list(events)
        if not batch:
            return []
        try:
            first = batch[0]["channel"]
            # Mixed channels take the per-event loop: per-event C passes with a channel lookup each cost about the
            # same. A batch of one channel needs no lookup per event.
            if batch[-1]["channel"] != first or list(map(_channel_of, batch)).count(first) != len(batch):
                return self.filter_each(batch)
            test = self._entry(first or "")[2]
            if isinstance(test, frozenset):
                return list(compress(batch, map(test.__contains__, map(_event_id_of, batch))))
        except (KeyError, TypeError):
            # A key missing or a value unhashable: the per-event loop raises (or not) exactly where it always did.
            return self.filter_each(batch)
        if test is _TAKE_ALL:
            return list(batch)
        if test is _TAKE_NOTHING:
            return []
        return self.filter_each(batch)

    def filter_each(self, events: Iterable[RawEvent]) -> list[Any]:
        """The events this rule keeps, in order, judged one by one (the reference for ``filter``)."""
        if self.keeps_nothing:
            return []
        out: list[Any] = []
        append = out.append
        entry_for = self._entry
        channel: str | None = None
        matcher: Callable[[RawEvent], bool] | None = None
        ids: frozenset[int] | None = None
        for event in events:
            name = event.get("channel") or ""
            if name != channel:  # batches are mostly runs of one channel
                channel = name
                matcher, ids, _ = entry_for(name)
            if ids is not None:
                if event["event_id"] in ids:  # event sets and EventID-only queries: a set test, no call
                    append(event)
            elif matcher is not None and matcher(event):
                append(event)
        return out


KEEP_NOTHING = CompiledRule("<no matching rule>", {})


def _add_selector(matchers: dict[str, _ChannelMatcher], selector: Selector) -> None:
    matcher = matchers.setdefault(selector.channel.casefold(), _ChannelMatcher())
    if selector.node is None:
        matcher.take_all = True
    elif selector.node.event_ids is not None:
        matcher.event_ids |= selector.node.event_ids
    else:
        matcher.predicates.append(selector.node.predicate)


def _add_query(matchers: dict[str, _ChannelMatcher], query: Query) -> None:
    if not query.suppresses:
        for selector in query.selects:
            _add_selector(matchers, selector)
        return
    # Suppress applies per channel within its own query.
    channels = {s.channel.casefold() for s in query.selects}
    for channel in channels:
        selects = [s.node.predicate if s.node else None for s in query.selects if s.channel.casefold() == channel]
        suppresses = [s.node.predicate if s.node else None for s in query.suppresses
                      if s.channel.casefold() == channel]
        matchers.setdefault(channel, _ChannelMatcher()).guarded.append((selects, suppresses))


def compile_rule(rule: RuleLike, clock: Callable[[], float] = time.time) -> CompiledRule:
    """One rule -> CompiledRule. Raises RuleError naming the rule (and the query) when something is invalid."""
    matchers: dict[str, _ChannelMatcher] = {}
    if rule.event_set is not None:
        if rule.event_set not in EVENT_SETS:
            raise RuleError(f"rule {rule.name!r}: unknown event set {rule.event_set!r}; "
                            f"known: {', '.join(EVENT_SETS)}")
        ids = EVENT_SETS[rule.event_set]
        if ids is None or ids:
            for channel in ALL_CHANNELS:
                matcher = matchers.setdefault(channel.casefold(), _ChannelMatcher())
                if ids is None:
                    matcher.take_all = True
                else:
                    matcher.event_ids |= ids
    for number, text in enumerate(rule.xpath, 1):
        try:
            queries = compile_queries(text, clock)
        except XPathError as exc:
            raise RuleError(f"rule {rule.name!r}, query {number} {text[:200]!r}: {exc}") from None
        for query in queries:
            _add_query(matchers, query)
    id_sets = {channel: ids for channel, m in matchers.items() if (ids := m.event_ids_only()) is not None}
    take_all = [channel for channel, m in matchers.items() if m.take_all]
    return CompiledRule(rule.name, {channel: m.compile() for channel, m in matchers.items()}, id_sets, take_all)


def _is_default(patterns: Sequence[str]) -> bool:
    return bool(patterns) and all(p.strip() == "*" for p in patterns)


class RuleSet:
    """Every rule, compiled, and the choice of rule per computer (cached)."""

    def __init__(self, ordered: list[tuple[tuple[str, ...], CompiledRule]]) -> None:
        self._ordered = ordered
        self._cache: dict[str, CompiledRule] = {}

    @classmethod
    def compile(cls, rules: Sequence[RuleLike], *, clock: Callable[[], float] = time.time) -> RuleSet:
        specific: list[tuple[tuple[str, ...], CompiledRule]] = []
        default: list[tuple[tuple[str, ...], CompiledRule]] = []
        for rule in rules:
            if not rule.computers:
                raise RuleError(f"rule {rule.name!r}: computers must name at least one pattern")
            compiled = compile_rule(rule, clock)
            patterns = tuple(p.strip().casefold() for p in rule.computers)
            (default if _is_default(rule.computers) else specific).append((patterns, compiled))
        return cls(specific + default)

    @property
    def rules(self) -> list[CompiledRule]:
        return [rule for _, rule in self._ordered]

    def rule_for(self, computer: str) -> CompiledRule:
        rule = self._cache.get(computer)
        if rule is None:
            folded = computer.casefold()
            rule = next(
                (compiled for patterns, compiled in self._ordered
                 if any(fnmatch.fnmatchcase(folded, pattern) for pattern in patterns)),
                KEEP_NOTHING,
            )
            if len(self._cache) >= RULE_CACHE_SIZE:
                self._cache.clear()
            self._cache[computer] = rule
        return rule

    def filter_batch(self, computer: str, events: Iterable[RawEvent]) -> list[Any]:
        """The events of one host's batch that its rule keeps, in order."""
        return self.rule_for(computer).filter(events)
