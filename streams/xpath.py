"""The XPath 1.0 subset that Windows event queries (and so AMA data collection rules) accept, compiled to predicates.

A query is ``Channel!XPath``, e.g. ``Security!*[System[(EventID=4624 or EventID=4625) and Level<=4]]``, or a
``<QueryList>`` document of ``<Query>`` elements with ``<Select>`` and ``<Suppress>`` paths. Supported, as Windows
documents it (WES "XPath 1.0 limitations"): a path starting with ``*`` or ``Event``; child and attribute (``@``)
steps; predicates with ``and``, ``or``, ``not()``, ``=``, ``!=``, ``<``, ``<=``, ``>``, ``>=`` and parentheses;
``band(Keywords, N)``; ``timediff(@SystemTime) <= N`` (milliseconds, inside ``TimeCreated[...]``). Fields:
System/EventID, Level, Task, Opcode, Version, Keywords, EventRecordID, Channel, Computer,
Provider/@Name|@Guid|@EventSourceName, TimeCreated/@SystemTime, Execution/@ProcessID|@ThreadID,
Security/@UserID, Correlation/@ActivityID|@RelatedActivityID; EventData/Data and Data[@Name='X'].

The parser is a tokenizer plus a recursive-descent parser; nothing is evaluated with ``eval``. A query becomes a
Python predicate over a RawEvent dict, and a query that is only ``EventID=a or EventID=b ...`` also yields the
EventID set so callers can test membership instead of calling the predicate.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lxml import etree

from schemas.event_data import pairs

Predicate = Callable[[Mapping[str, Any]], bool]

MAX_EXPRESSIONS = 20  # per query, as data collection rules allow (Get-WinEvent allows 23)
MAX_QUERY_LENGTH = 10_000
MAX_NESTING = 32  # parentheses and predicates; keeps the recursive parser far from Python's recursion limit


class XPathError(ValueError):
    """An invalid or unsupported query; the message says what and where."""


# ------------------------------------------------------------------------------------------------ tokens

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'[^']*'|"[^"]*")
      | (?P<number>0[xX][0-9A-Fa-f]+|\d+)
      | (?P<op>!=|<=|>=|=|<|>)
      | (?P<punct>[()\[\]@/,*])
      | (?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # string | number | op | punct | name | end
    text: str
    pos: int


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    length = len(text)
    while pos < length:
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            start = pos + (len(text[pos:]) - len(text[pos:].lstrip()))
            raise XPathError(f"unexpected character {text[start]!r} at position {start}")
        kind = m.lastgroup or ""
        tokens.append(Token(kind, m.group(kind), m.start(kind)))
        pos = m.end()
    tokens.append(Token("end", "", length))
    return tokens


# ------------------------------------------------------------------------------------------------ fields

_NUMERIC_SYSTEM = {
    "EventID": "event_id", "Level": "level", "Task": "task", "Opcode": "opcode", "Version": "version",
    "EventRecordID": "event_record_id", "Keywords": "keywords",
}
_STRING_SYSTEM = {"Channel": "channel", "Computer": "computer"}
_SYSTEM_ATTRIBUTES: dict[str, dict[str, tuple[str, bool]]] = {  # element -> attribute -> (field, numeric)
    "Provider": {"Name": ("provider_name", False), "Guid": ("provider_guid", False),
                 "EventSourceName": ("event_source_name", False)},
    "Execution": {"ProcessID": ("process_id", True), "ThreadID": ("thread_id", True)},
    "Security": {"UserID": ("user_id", False)},
    "Correlation": {"ActivityID": ("activity_id", False), "RelatedActivityID": ("related_activity_id", False)},
    "TimeCreated": {"SystemTime": ("time_created", True)},
}

_keywords_cache: dict[str, int | None] = {}


def _keywords(value: Any) -> int | None:
    if value is None or isinstance(value, int):
        return value
    number = _keywords_cache.get(value, -1)
    if number == -1:
        text = str(value).strip()
        try:
            number = int(text, 16) if text[:2] in ("0x", "0X") else int(text)
        except ValueError:
            number = None
        if len(_keywords_cache) < 10_000:
            _keywords_cache[value] = number
    return number


def _getter(field: str) -> Callable[[Mapping[str, Any]], Any]:
    if field == "keywords":
        return lambda event: _keywords(event.get("keywords"))
    return lambda event: event.get(field)


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}


@dataclass(frozen=True, slots=True)
class Node:
    """A compiled (sub)expression: its predicate, how many expressions it counts, and its EventID set if it is a
    pure EventID disjunction (None otherwise)."""

    predicate: Predicate
    expressions: int
    event_ids: frozenset[int] | None = None


def _and(left: Node, right: Node) -> Node:
    lp, rp = left.predicate, right.predicate
    return Node(lambda e: lp(e) and rp(e), left.expressions + right.expressions)


def _or(left: Node, right: Node) -> Node:
    lp, rp = left.predicate, right.predicate
    ids = left.event_ids | right.event_ids if left.event_ids is not None and right.event_ids is not None else None
    return Node(lambda e: lp(e) or rp(e), left.expressions + right.expressions, ids)


def _not(inner: Node) -> Node:
    p = inner.predicate
    return Node(lambda e: not p(e), inner.expressions)


# ------------------------------------------------------------------------------------------------ parser

_EVENT, _SYSTEM, _EVENT_DATA, _DATA = "Event", "System", "EventData", "Data"


class _Parser:
    """Recursive descent over the tokens. ``context`` is the element the predicate is evaluated on."""

    def __init__(self, text: str, clock: Callable[[], float]) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0
        self.clock = clock

    # -- token helpers
    def peek(self, offset: int = 0) -> Token:
        return self.tokens[min(self.i + offset, len(self.tokens) - 1)]

    def take(self) -> Token:
        token = self.tokens[self.i]
        if token.kind != "end":
            self.i += 1
        return token

    def error(self, message: str, token: Token | None = None) -> XPathError:
        token = token or self.peek()
        where = "the end" if token.kind == "end" else f"{token.text!r} at position {token.pos}"
        return XPathError(f"{message} (at {where})")

    def expect(self, text: str) -> Token:
        token = self.peek()
        if token.text != text or token.kind in ("string",):
            raise self.error(f"expected {text!r}")
        return self.take()

    def accept(self, text: str) -> bool:
        token = self.peek()
        if token.text == text and token.kind in ("punct", "op", "name"):
            self.i += 1
            return True
        return False

    # -- top level
    def parse_path(self) -> Node | None:
        """``*`` or ``Event``, optionally followed by predicates. None means every event."""
        token = self.take()
        if not (token.text == "*" and token.kind == "punct") and not (token.kind == "name" and token.text == _EVENT):
            raise self.error("a query must select events with '*' or 'Event'", token)
        node: Node | None = None
        while self.accept("["):
            inner = self.parse_or(_EVENT)
            self.expect("]")
            node = inner if node is None else _and(node, inner)
        if self.peek().kind != "end":
            raise self.error("unexpected text after the path")
        return node

    def parse_or(self, context: str) -> Node:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.error(f"nested deeper than {MAX_NESTING} levels")
        node = self.parse_and(context)
        while self.peek().kind == "name" and self.peek().text == "or":
            self.take()
            node = _or(node, self.parse_and(context))
        self.depth -= 1
        return node

    def parse_and(self, context: str) -> Node:
        node = self.parse_unary(context)
        while self.peek().kind == "name" and self.peek().text == "and":
            self.take()
            node = _and(node, self.parse_unary(context))
        return node

    def parse_unary(self, context: str) -> Node:
        token = self.peek()
        if token.kind == "name" and token.text == "not" and self.peek(1).text == "(":
            self.take()
            self.take()
            inner = self.parse_or(context)
            self.expect(")")
            return _not(inner)
        return self.parse_primary(context)

    def parse_primary(self, context: str) -> Node:
        token = self.peek()
        if token.kind == "punct" and token.text == "(":
            self.take()
            node = self.parse_or(context)
            self.expect(")")
            return node
        if token.kind == "name" and self.peek(1).text == "(":
            return self.parse_function(context)
        if token.kind == "punct" and token.text == "@":
            return self.parse_attribute(context)
        if token.kind == "name":
            return self.parse_step(context)
        raise self.error("expected a condition")

    # -- functions
    def parse_function(self, context: str) -> Node:
        name = self.take()
        self.expect("(")
        if name.text == "band":
            if context != _SYSTEM:
                raise self.error("band() is supported inside System[...]", name)
            field = self.take()
            if field.kind != "name" or field.text not in _NUMERIC_SYSTEM:
                raise self.error("band() needs a numeric System field such as Keywords", field)
            self.expect(",")
            mask = self.number()
            self.expect(")")
            get = _getter(_NUMERIC_SYSTEM[field.text])

            def band(event: Mapping[str, Any]) -> bool:
                value = get(event)
                return value is not None and (value & mask) != 0

            node = Node(band, 1)
            return self.maybe_compare_result(node, get, mask)
        if name.text == "timediff":
            if context != "TimeCreated":
                raise self.error("timediff() is supported as TimeCreated[timediff(@SystemTime) <= N]", name)
            self.expect("@")
            attr = self.take()
            if attr.text != "SystemTime":
                raise self.error("timediff() takes @SystemTime", attr)
            self.expect(")")
            op = self.take()
            if op.kind != "op":
                raise self.error("timediff(@SystemTime) must be compared with a number of milliseconds", op)
            limit = self.number()
            compare = _COMPARE[op.text]
            clock = self.clock

            def timediff(event: Mapping[str, Any]) -> bool:
                ticks = event.get("time_created")
                if ticks is None:
                    return False
                age_ms = (clock() * 10_000_000 - ticks) / 10_000
                return compare(age_ms, limit)

            return Node(timediff, 1)
        if name.text == "position":
            raise self.error("position() is not supported", name)
        raise self.error(f"unsupported function {name.text}()", name)

    def maybe_compare_result(self, node: Node, get: Callable[[Mapping[str, Any]], Any], mask: int) -> Node:
        """``band(Keywords, N) = N`` style: compare the masked value instead of testing it for non-zero."""
        if self.peek().kind != "op":
            return node
        op = self.take()
        expected = self.number()
        compare = _COMPARE[op.text]

        def masked(event: Mapping[str, Any]) -> bool:
            value = get(event)
            return value is not None and compare(value & mask, expected)

        return Node(masked, 1)

    # -- literals
    def number(self) -> int:
        token = self.take()
        if token.kind != "number":
            raise self.error("expected a number", token)
        return int(token.text, 16) if token.text[:2] in ("0x", "0X") else int(token.text)

    def literal(self) -> tuple[str, int | str]:
        token = self.take()
        if token.kind == "number":
            return "number", int(token.text, 16) if token.text[:2] in ("0x", "0X") else int(token.text)
        if token.kind == "string":
            return "string", token.text[1:-1]
        raise self.error("expected a number or a quoted string", token)

    # -- comparisons
    def comparison(self, get: Callable[[Mapping[str, Any]], Any], numeric: bool, what: str) -> Node:
        op = self.take()
        if op.kind != "op":
            raise self.error(f"expected a comparison after {what}", op)
        kind, value = self.literal()
        if numeric and kind == "string":
            try:
                value = int(str(value), 0)
            except ValueError:
                raise self.error(f"{what} is numeric; {value!r} is not a number") from None
        if not numeric:
            if op.text not in ("=", "!="):
                raise self.error(f"{what} is text and can only be compared with = or !=", op)
            value = str(value)
        compare = _COMPARE[op.text]
        target = value

        def predicate(event: Mapping[str, Any]) -> bool:
            actual = get(event)
            return actual is not None and compare(actual, target)

        ids = frozenset({int(value)}) if what == "EventID" and op.text == "=" else None
        if ids is not None:
            event_id = int(value)
            return Node(lambda e: e.get("event_id") == event_id, 1, ids)
        return Node(predicate, 1)

    def parse_attribute(self, context: str) -> Node:
        self.expect("@")
        attr = self.take()
        if attr.kind != "name":
            raise self.error("expected an attribute name", attr)
        if context in _SYSTEM_ATTRIBUTES and attr.text in _SYSTEM_ATTRIBUTES[context]:
            field, numeric = _SYSTEM_ATTRIBUTES[context][attr.text]
            if field == "time_created":
                raise self.error("@SystemTime can only be used in timediff()", attr)
            return self.comparison(_getter(field), numeric, f"{context}/@{attr.text}")
        raise self.error(f"unsupported attribute @{attr.text} on {context}", attr)

    def parse_step(self, context: str) -> Node:
        """A child element: ``System[...]``, ``EventID=4624``, ``Provider[@Name='x']``, ``System/Level<3``..."""
        token = self.take()
        name = token.text
        if context == _EVENT:
            if name == _SYSTEM:
                return self.after_element(_SYSTEM, token)
            if name == _EVENT_DATA:
                return self.after_element(_EVENT_DATA, token)
            raise self.error(f"unsupported element {name} (expected System or EventData)", token)
        if context == _SYSTEM:
            if name in _NUMERIC_SYSTEM:
                return self.field_condition(_getter(_NUMERIC_SYSTEM[name]), True, name, token)
            if name in _STRING_SYSTEM:
                return self.field_condition(_getter(_STRING_SYSTEM[name]), False, name, token)
            if name in _SYSTEM_ATTRIBUTES:
                return self.after_element(name, token)
            raise self.error(f"unsupported System element {name}", token)
        if context == _EVENT_DATA and name == _DATA:
            return self.data_condition(token)
        raise self.error(f"unsupported element {name} inside {context}", token)

    def field_condition(self, get: Callable[[Mapping[str, Any]], Any], numeric: bool, name: str,
                        token: Token) -> Node:
        if self.peek().kind == "op":
            return self.comparison(get, numeric, name)
        # A bare element name tests that it exists.
        return Node(lambda e: get(e) is not None, 1)

    def after_element(self, element: str, token: Token) -> Node:
        """``Element[pred]``, ``Element/child...``, ``Element/@attr op v``, or ``Element`` (exists)."""
        if self.accept("/"):
            if self.peek().text == "@":
                return self.parse_attribute(element)
            return self.parse_step(element)
        if self.accept("["):
            node = self.parse_or(element)
            self.expect("]")
            while self.accept("["):
                node = _and(node, self.parse_or(element))
                self.expect("]")
            return node
        if element == _SYSTEM:
            return Node(lambda e: True, 1)
        if element == _EVENT_DATA:
            return Node(lambda e: bool(e.get("event_data")), 1)
        raise self.error(f"{element} needs a condition, e.g. {element}[@...='...']", token)

    def data_condition(self, token: Token) -> Node:
        """``Data='v'`` (any Data) or ``Data[@Name='X']='v'`` / ``Data[@Name='X']`` (exists)."""
        field_name: str | None = None
        if self.accept("["):
            self.expect("@")
            attr = self.take()
            if attr.text != "Name":
                raise self.error("Data supports only the @Name attribute", attr)
            op = self.take()
            if op.text != "=":
                raise self.error("Data[@Name=...] needs '='", op)
            _, name_value = self.literal()
            field_name = str(name_value)
            self.expect("]")
        wanted = field_name
        if self.peek().kind != "op":
            if wanted is None:
                return Node(lambda e: bool(e.get("event_data")), 1)
            return Node(lambda e: any(name == wanted for name, _ in pairs(e.get("event_data"))), 1)
        op = self.take()
        if op.text not in ("=", "!="):
            raise self.error("Data values can only be compared with = or !=", op)
        _, raw_value = self.literal()
        value = str(raw_value)
        compare = _COMPARE[op.text]

        def data(event: Mapping[str, Any]) -> bool:
            for name, item_value in pairs(event.get("event_data")):
                if (wanted is None or name == wanted) and item_value is not None and compare(item_value, value):
                    return True
            return False

        return Node(data, 1)


# ------------------------------------------------------------------------------------------------ queries


@dataclass(frozen=True, slots=True)
class Selector:
    """One select (or suppress) path of a query: a channel and what to take from it."""

    channel: str
    node: Node | None  # None = every event of the channel

    @property
    def event_ids(self) -> frozenset[int] | None:
        return None if self.node is None else self.node.event_ids


@dataclass(frozen=True, slots=True)
class Query:
    """A compiled query: events matching any select and no suppress (suppress only comes from a QueryList)."""

    selects: tuple[Selector, ...]
    suppresses: tuple[Selector, ...] = ()


def compile_path(channel: str, xpath: str, clock: Callable[[], float] = time.time) -> Selector:
    channel = channel.strip()
    if not channel:
        raise XPathError("the query names no channel (expected Channel!XPath)")
    parser = _Parser(xpath, clock)
    node = parser.parse_path()
    if node is not None and node.expressions > MAX_EXPRESSIONS:
        raise XPathError(f"{node.expressions} expressions; a query may have at most {MAX_EXPRESSIONS}")
    return Selector(channel, node)


def compile_queries(text: str, clock: Callable[[], float] = time.time) -> list[Query]:
    """``Channel!XPath`` (one Query) or a ``<QueryList>`` document (one Query per ``<Query>``). Raises XPathError."""
    if len(text) > MAX_QUERY_LENGTH:
        raise XPathError(f"query longer than {MAX_QUERY_LENGTH} characters")
    stripped = text.strip()
    if stripped.startswith("<"):
        return _compile_query_list(stripped, clock)
    channel, bang, xpath = stripped.partition("!")
    if not bang:
        raise XPathError("expected Channel!XPath, e.g. Security!*[System[(EventID=4624)]]")
    return [Query((compile_path(channel, xpath, clock),))]


def compile_query(text: str, clock: Callable[[], float] = time.time) -> Query:
    """A query string that holds exactly one query (``Channel!XPath`` or a one-``<Query>`` QueryList)."""
    queries = compile_queries(text, clock)
    if len(queries) != 1:
        raise XPathError(f"expected one query, the QueryList has {len(queries)}")
    return queries[0]


_QUERY_LIST_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def _compile_query_list(text: str, clock: Callable[[], float]) -> list[Query]:
    try:
        root = etree.fromstring(text.encode("utf-8"), _QUERY_LIST_PARSER)
    except etree.XMLSyntaxError as exc:
        raise XPathError(f"QueryList is not well-formed XML: {exc}") from None
    if root.getroottree().docinfo.internalDTD is not None:
        raise XPathError("QueryList must not contain a DOCTYPE")
    if root.tag != "QueryList":
        raise XPathError(f"expected <QueryList>, got <{root.tag}>")
    queries = [_compile_query_element(q, clock) for q in root if isinstance(q.tag, str)]
    if not queries:
        raise XPathError("<QueryList> has no <Query>")
    return queries


def _compile_query_element(query: etree._Element, clock: Callable[[], float]) -> Query:
    if query.tag != "Query":
        raise XPathError(f"unexpected <{query.tag}> in <QueryList>")
    selects: list[Selector] = []
    suppresses: list[Selector] = []
    for element in query:
        if not isinstance(element.tag, str):
            continue
        if element.tag not in ("Select", "Suppress"):
            raise XPathError(f"unexpected <{element.tag}> in <Query>")
        channel = element.get("Path") or query.get("Path") or ""
        selector = compile_path(channel, element.text or "", clock)
        (selects if element.tag == "Select" else suppresses).append(selector)
    if not selects:
        raise XPathError("<Query> has no <Select>")
    return Query(tuple(selects), tuple(suppresses))
