"""The XPath subset of Windows event queries: what it selects, what it rejects, and that it never crashes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.event_data import pairs
from streams.xpath import MAX_EXPRESSIONS, XPathError, compile_queries, compile_query, tokenize

NOW = 1_700_000_000.0  # seconds since the epoch, the clock of every timediff test
TICKS_NOW = int(NOW * 10_000_000)


def event(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "provider_name": "Microsoft-Windows-Security-Auditing", "event_id": 4624, "version": 2, "level": 0,
        "task": 12544, "opcode": 0, "keywords": "0x8020000000000000", "time_created": TICKS_NOW - 10_000_000,
        "event_record_id": 7, "channel": "Security", "computer": "DC1.corp.example", "user_id": None,
        "process_id": 720, "thread_id": 12, "activity_id": None, "event_data": [
            {"name": "TargetUserName", "value": "alice"}, {"name": "LogonType", "value": "3"}],
    }
    base.update(overrides)
    return base


def selects(query: str, ev: dict[str, Any]) -> bool:
    compiled = compile_query(query, clock=lambda: NOW)
    (selector,) = compiled.selects
    return selector.node is None or selector.node.predicate(ev)


@pytest.mark.parametrize(
    ("query", "ev", "expected"),
    [
        ("Security!*", event(), True),
        ("Security!*[System[(EventID=4624)]]", event(), True),
        ("Security!*[System[(EventID=4624)]]", event(event_id=4625), False),
        ("Security!*[System[(EventID=4624 or EventID=4625)]]", event(event_id=4625), True),
        ("Security!*[System[EventID!=4624]]", event(event_id=4625), True),
        ("Security!*[System[EventID!=4624]]", event(), False),
        ("Security!*[System[(EventID >= 4720) and (EventID <= 4767)]]", event(event_id=4738), True),
        ("Security!*[System[(EventID >= 4720) and (EventID <= 4767)]]", event(event_id=4768), False),
        ("Security!*[System[Level=0 or Level=4]]", event(level=4), True),
        ("Security!*[System[Level<=3]]", event(level=4), False),
        ("Security!*[System[Task=12544]]", event(), True),
        ("Security!*[System[Provider[@Name='Microsoft-Windows-Security-Auditing']]]", event(), True),
        ("Security!*[System[Provider[@Name=\"AD FS Auditing\"]]]", event(), False),
        ("Security!*[System[Provider[@Name='AD FS Auditing' or @Name='Microsoft-Windows-Security-Auditing']]]",
         event(), True),
        # The portal's "all success and failure audits except 4624" example (AMA docs).
        ("Security!*[System[(band(Keywords,13510798882111488)) and (EventID != 4624)]]", event(), False),
        ("Security!*[System[(band(Keywords,13510798882111488)) and (EventID != 4624)]]", event(event_id=4625,
         keywords="0x8010000000000000"), True),
        ("Security!*[System[band(Keywords,4503599627370496)]]", event(keywords="0x8020000000000000"), False),
        ("Security!*[System[band(Keywords,0x0010000000000000)]]", event(keywords="0x8010000000000000"), True),
        ("Security!*[System[Keywords=0x8020000000000000]]", event(), True),
        ("Security!*[System[not(EventID=4624)]]", event(), False),
        ("Security!*[System[not(EventID=4624 or EventID=4634)]]", event(event_id=4672), True),
        ("Security!*[System[TimeCreated[timediff(@SystemTime) <= 86400000]]]", event(), True),
        ("Security!*[System[TimeCreated[timediff(@SystemTime) <= 500]]]", event(), False),
        ("Security!*[System/EventID=4624]", event(), True),
        ("Security!*[System/Provider/@Name='Microsoft-Windows-Security-Auditing']", event(), True),
        ("Security!*[System[Computer='DC1.corp.example']]", event(), True),
        ("Security!*[System[Execution[@ProcessID=720]]]", event(), True),
        ("Security!*[System[EventID=4624]][EventData[Data[@Name='TargetUserName']='alice']]", event(), True),
        ("Security!*[System[EventID=4624]][EventData[Data[@Name='TargetUserName']='bob']]", event(), False),
        ("Security!*[EventData[Data='alice']]", event(), True),
        ("Security!Event[System[EventID=4624]]", event(), True),
        ("Security!*[System[EventID='4624']]", event(), True),
        ("Security!*[System[Level=2]]", event(level=None), False),
    ],
)
def test_queries_select_what_windows_would(query: str, ev: dict[str, Any], expected: bool) -> None:
    assert selects(query, ev) is expected
    # The same with the EventData items as the stream stage decodes them, (name, value) tuples.
    paired = {**ev, "event_data": list(pairs(ev["event_data"]))}
    assert selects(query, paired) is expected


@pytest.mark.parametrize(
    ("query", "ids"),
    [
        ("Security!*[System[(EventID=4624)]]", {4624}),
        ("Security!*[System[(EventID=4624) or (EventID=4625) or EventID=4634]]", {4624, 4625, 4634}),
        ("Security!*[System[((EventID=1) or (EventID=2))]]", {1, 2}),
        ("Security!*[System[EventID=1 and Level=0]]", None),
        ("Security!*[System[EventID!=1]]", None),
        ("Security!*[System[not(EventID=1)]]", None),
    ],
)
def test_pure_event_id_disjunctions_expose_their_id_set(query: str, ids: set[int] | None) -> None:
    (selector,) = compile_query(query).selects
    assert selector.event_ids == (frozenset(ids) if ids is not None else None)


def test_the_channel_is_everything_before_the_first_bang() -> None:
    (selector,) = compile_query("Microsoft-Windows-AppLocker/EXE and DLL!*[System[(EventID=8002)]]").selects
    assert selector.channel == "Microsoft-Windows-AppLocker/EXE and DLL"


def test_query_list_with_suppress() -> None:
    query = compile_query(
        '<QueryList><Query Id="0" Path="Security">'
        '<Select Path="Security">*[System[(EventID=4624 or EventID=4625)]]</Select>'
        "<Suppress Path=\"Security\">*[EventData[Data[@Name='LogonType']='5']]</Suppress>"
        "</Query></QueryList>"
    )
    assert [s.channel for s in query.selects] == ["Security"]
    (suppress,) = query.suppresses
    assert suppress.node is not None and suppress.node.predicate(
        event(event_data=[{"name": "LogonType", "value": "5"}]))


def test_query_list_with_several_queries() -> None:
    queries = compile_queries(
        "<QueryList>"
        '<Query Id="0" Path="Security"><Select>*[System[(EventID=4624)]]</Select></Query>'
        '<Query Id="1"><Select Path="System">*[System[(EventID=7045)]]</Select>'
        '<Select Path="Security">*[System[(EventID=1102)]]</Select></Query>'
        "</QueryList>"
    )
    assert [[(s.channel, s.event_ids) for s in q.selects] for q in queries] == [
        [("Security", frozenset({4624}))],
        [("System", frozenset({7045})), ("Security", frozenset({1102}))],
    ]
    with pytest.raises(XPathError, match="expected one query"):
        compile_query("<QueryList><Query><Select Path='A'>*</Select></Query>"
                      "<Query><Select Path='B'>*</Select></Query></QueryList>")


def test_twenty_expressions_are_allowed_and_twenty_one_are_not() -> None:
    terms = " or ".join(f"EventID={n}" for n in range(MAX_EXPRESSIONS))
    compile_query(f"Security!*[System[{terms}]]")
    with pytest.raises(XPathError, match="at most 20"):
        compile_query(f"Security!*[System[{terms} or EventID=99999]]")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("*[System[EventID=4624]]", "Channel!XPath"),
        ("!*[System[EventID=4624]]", "no channel"),
        ("Security!", "select events"),
        ("Security!System[EventID=4624]", "select events"),
        ("Security!*[System[EventID=]]", "expected a number"),
        ("Security!*[System[EventID=4624]", "expected ']'"),
        ("Security!*[System[(EventID=4624]]", "expected ')'"),
        ("Security!*[System[EventID=4624 and]]", "expected a condition"),
        ("Security!*[System[starts-with(Provider, 'x')]]", "unsupported function"),
        ("Security!*[System[contains(Computer, 'x')]]", "unsupported function"),
        ("Security!*[System[position()=1]]", "position"),
        ("Security!*[System[Foo=1]]", "unsupported System element"),
        ("Security!*[UserData[Foo=1]]", "unsupported element"),
        ("Security!*[System[EventID='abc']]", "not a number"),
        ("Security!*[System[Computer<'x']]", "only be compared"),
        ("Security!*[System[band(Computer, 1)]]", "numeric System field"),
        ("Security!*[System[timediff(@SystemTime) <= 5]]", "TimeCreated"),
        ("Security!*[System[EventID=4624]] trailing", "unexpected text"),
        ("Security!*[System[EventID=4624 # 1]]", "unexpected character"),
        ("Security!*[System[Provider[@Nom='x']]]", "unsupported attribute"),
        ("<QueryList><Query><Select Path='Security'>*[</Select></Query></QueryList>", "expected a condition"),
        ("<QueryList><Query>", "not well-formed"),
        ("<Other/>", "expected <QueryList>"),
        ("Security!" + "(" * 40 + "*", "select events"),
        ("Security!*[" + "(" * 40 + "System" + ")" * 40 + "]", "nested deeper"),
    ],
)
def test_invalid_queries_are_rejected_with_a_reason(query: str, message: str) -> None:
    with pytest.raises(XPathError, match=None) as info:
        compile_query(query)
    assert message in str(info.value)


def test_tokenizer_reports_positions() -> None:
    tokens = tokenize("*[System[EventID=0x10]]")
    assert [(t.kind, t.text) for t in tokens][:6] == [
        ("punct", "*"), ("punct", "["), ("name", "System"), ("punct", "["), ("name", "EventID"), ("op", "=")]
    assert tokens[6].text == "0x10" and tokens[6].pos == 17


# ------------------------------------------------------------------------------------------------ fuzz

_VOCABULARY = [
    "*", "Event", "System", "EventData", "Data", "Provider", "TimeCreated", "EventID", "Level", "Task",
    "Keywords", "Computer", "Channel", "@Name", "@SystemTime", "[", "]", "(", ")", "/", ",", "=", "!=", "<",
    "<=", ">", ">=", "and", "or", "not", "band", "timediff", "position", "4624", "0x10", "'x'", '"y"', "@",
]


def _must_compile_or_reject(text: str) -> None:
    try:
        queries = compile_queries(text, clock=lambda: NOW)
    except XPathError:
        return
    for query in queries:
        for selector in query.selects + query.suppresses:
            if selector.node is not None:
                assert isinstance(selector.node.predicate(event()), bool)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_fuzz_arbitrary_text_never_crashes(text: str) -> None:
    _must_compile_or_reject(text)
    _must_compile_or_reject("Security!" + text)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_VOCABULARY), max_size=40))
def test_fuzz_token_soup_never_crashes(words: list[str]) -> None:
    _must_compile_or_reject("Security!" + " ".join(words))
    _must_compile_or_reject("Security!*[System[" + " ".join(words) + "]]")
