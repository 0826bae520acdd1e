"""Rendered event XML -> RawEvent: verbatim values, full time precision, hardened parsing, streaming."""

from __future__ import annotations

import functools
import importlib
import io
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import evtx
import pytest
from fastavro import parse_schema
from fastavro.validation import validate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producers.adapters import event_xml
from producers.adapters.event_xml import (
    EventXmlError,
    iter_event_xml,
    parse_event_xml,
    parse_event_xml_fast,
)
from tests.conftest import CORPUS, REPO

PROV = {"source_format": "xml", "agent_id": "a1", "collector_id": None, "read_time_us": 1, "source_ref": "t"}
RAW_EVENT_SCHEMA = parse_schema(json.loads((REPO / "schemas/avro/RawEvent.v1.avsc").read_text()))

# A Get-WinEvent ToXml() rendering with everything a Windows event can carry.
FULL_EVENT = """<Event xmlns='http://schemas.microsoft.com/win/2004/08/events/event'><System>\
<Provider Name='Microsoft-Windows-Security-Auditing' Guid='{54849625-5478-4994-A5BA-3E3B0328C30D}' \
EventSourceName='Security'/><EventID Qualifiers='16384'>4625</EventID><Version>0</Version><Level>0</Level>\
<Task>12544</Task><Opcode>0</Opcode><Keywords>0x8010000000000000</Keywords>\
<TimeCreated SystemTime='2023-04-10T07:47:01.9710164Z'/><EventRecordID>123456789012</EventRecordID>\
<Correlation ActivityID='{D2C3A1B0-0000-0000-0000-000000000001}' \
RelatedActivityID='{00000000-1111-2222-3333-444444444444}'/>\
<Execution ProcessID='652' ThreadID='4012'/><Channel>Security</Channel><Computer>DC01.contoso.local</Computer>\
<Security UserID='S-1-5-18'/></System><EventData><Data Name='SubjectUserSid'>S-1-0-0</Data>\
<Data Name='Status'>%%2313</Data><Data>unnamed  value </Data><Data Name='Dup'>one</Data><Data Name='Dup'>two</Data>\
<Data Name='Empty'></Data><Data Name='Spaced'>  a\tb  </Data><Data Name='Esc'>&lt;x&gt; &amp; "q"</Data>\
</EventData><RenderingInfo Culture='en-US'><Message>An account failed to log on.</Message><Level>Information</Level>\
</RenderingInfo></Event>"""

USER_DATA_EVENT = """<Event xmlns="http://schemas.microsoft.com/win/2004/08/events/event"><System>
<Provider Name="Microsoft-Windows-Eventlog" Guid="{fc65ddd8-d6ef-4962-83d5-6e5cfe9ce148}"/><EventID>1102</EventID>
<TimeCreated SystemTime="2020-10-28T07:19:03.5110000Z"/><EventRecordID>7</EventRecordID><Channel>Security</Channel>
<Computer>WORKSTATION5</Computer></System><UserData><LogFileCleared xmlns="http://manifests.microsoft.com/win/2004/08/windows/eventlog">\
<SubjectUserSid>S-1-5-21-1</SubjectUserSid><SubjectUserName>wardog</SubjectUserName></LogFileCleared></UserData></Event>"""

BILLION_LAUGHS = b"""<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">
<!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;">]>
<Event><System><EventID>1</EventID><TimeCreated SystemTime="2020-01-01T00:00:00Z"/></System>
<EventData><Data>&lol2;</Data></EventData></Event>"""

XXE = b"""<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<Event><System><EventID>1</EventID><TimeCreated SystemTime="2020-01-01T00:00:00Z"/></System>
<EventData><Data>&x;</Data></EventData></Event>"""


def test_every_field_verbatim() -> None:
    ev = parse_event_xml(FULL_EVENT, PROV)
    assert validate(ev, RAW_EVENT_SCHEMA)
    assert ev["provider_name"] == "Microsoft-Windows-Security-Auditing"
    assert ev["provider_guid"] == "{54849625-5478-4994-A5BA-3E3B0328C30D}"
    assert ev["event_source_name"] == "Security"
    assert (ev["event_id"], ev["qualifiers"], ev["version"], ev["level"], ev["task"], ev["opcode"]) == (
        4625, 16384, 0, 0, 12544, 0)
    assert ev["keywords"] == "0x8010000000000000"
    # 2023-04-10T07:47:01Z = 1681112821 s; all seven fractional digits kept.
    assert ev["time_created"] == 1681112821 * 10_000_000 + 9710164
    assert ev["event_record_id"] == 123456789012
    assert ev["activity_id"] == "{D2C3A1B0-0000-0000-0000-000000000001}"
    assert ev["related_activity_id"] == "{00000000-1111-2222-3333-444444444444}"
    assert (ev["process_id"], ev["thread_id"]) == (652, 4012)
    assert (ev["channel"], ev["computer"], ev["user_id"]) == ("Security", "DC01.contoso.local", "S-1-5-18")
    assert ev["event_data"] == [
        {"name": "SubjectUserSid", "value": "S-1-0-0"},
        {"name": "Status", "value": "%%2313"},
        {"name": None, "value": "unnamed  value "},
        {"name": "Dup", "value": "one"},
        {"name": "Dup", "value": "two"},
        {"name": "Empty", "value": ""},
        {"name": "Spaced", "value": "  a\tb  "},
        {"name": "Esc", "value": '<x> & "q"'},
    ]
    assert ev["rendered_message"] == "An account failed to log on."
    assert ev["user_data_xml"] is None
    assert ev["provenance"] == PROV


def test_user_data_kept_as_xml() -> None:
    ev = parse_event_xml(USER_DATA_EVENT.encode(), PROV)
    assert ev["event_data"] == []
    assert ev["user_data_xml"].startswith("<UserData")
    assert "<SubjectUserName>wardog</SubjectUserName>" in ev["user_data_xml"]
    assert 'xmlns="http://manifests.microsoft.com/win/2004/08/windows/eventlog"' in ev["user_data_xml"]


def test_crlf_and_control_characters_survive() -> None:
    xml = FULL_EVENT.replace("unnamed  value ", "line1\r\nline2\x03")
    for parse in (parse_event_xml, parse_event_xml_fast):
        ev = parse(xml, PROV)
        assert ev["event_data"][2]["value"] == "line1\r\nline2\x03"


@pytest.mark.parametrize("doc", [BILLION_LAUGHS, XXE], ids=["billion-laughs", "external-entity"])
def test_dtd_and_entities_rejected(doc: bytes) -> None:
    with pytest.raises(EventXmlError, match="DOCTYPE"):
        parse_event_xml(doc, PROV)
    with pytest.raises(EventXmlError, match="DOCTYPE"):
        list(iter_event_xml(io.BytesIO(doc), PROV))


@pytest.mark.parametrize("bad", ["<Event><System>", "not xml", "<Other/>",
                                 "<Event><System><EventID>x</EventID></System></Event>"])
def test_malformed_single_event(bad: str) -> None:
    with pytest.raises(EventXmlError):
        parse_event_xml(bad, PROV)


def test_stream_bare_wrapped_and_with_declarations() -> None:
    one = FULL_EVENT.encode()
    expected = parse_event_xml(one, PROV)
    decl = b'<?xml version="1.0" encoding="utf-8"?>\r\n'
    shapes = {
        "wevtutil": one + b"\r\n" + USER_DATA_EVENT.encode() + b"\r\n" + one,
        "wrapped": b"<Events>" + one + USER_DATA_EVENT.encode() + one + b"</Events>",
        "declarations": decl + one + decl + USER_DATA_EVENT.encode() + decl + one,
    }
    for name, blob in shapes.items():
        for chunk in (7, 64, 1 << 16):
            events = list(iter_event_xml(io.BytesIO(blob), PROV, chunk_size=chunk))
            assert len(events) == 3, (name, chunk)
            assert events[0] == expected and events[2] == expected, (name, chunk)
            assert events[1]["event_id"] == 1102


def test_stream_reports_unreadable_events_and_continues() -> None:
    bad = b"<Event><System><Channel>x</Channel></System></Event>"
    errors: list[str] = []
    events = list(iter_event_xml(io.BytesIO(FULL_EVENT.encode() + bad + FULL_EVENT.encode()), PROV,
                                 on_error=errors.append))
    assert len(events) == 2 and len(errors) == 1 and "EventID" in errors[0]


def test_stream_truncated_is_an_error() -> None:
    with pytest.raises(EventXmlError, match="malformed"):
        list(iter_event_xml(io.BytesIO(FULL_EVENT.encode()[:-20]), PROV))


def _corpus_evtx() -> list[Path]:
    return sorted(CORPUS.rglob("*.evtx"))


@pytest.mark.parametrize("native", [True, False], ids=["with-native", "python-only"])
def test_fast_path_equals_lxml_on_every_corpus_record(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast paths (C, then regular expressions) must give exactly what lxml gives, on real renderings."""
    if native and event_xml._native_parse is None:
        pytest.skip("producers._evtxrender is not built")
    if not native:
        monkeypatch.setattr(event_xml, "_native_parse", None)
    checked = 0
    for path in _corpus_evtx():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for record in evtx.PyEvtxParser(str(path), skip_errors=True).records():
                assert record is not None
                slow = parse_event_xml(record["data"], PROV, record_time=1)
                fast = parse_event_xml_fast(record["data"], PROV, record_time=1)
                assert fast == slow, (path.name, record["event_record_id"])
                checked += 1
    assert checked > 7000


def test_fast_path_unnamed_and_empty_names() -> None:
    xml = """<?xml version="1.0" encoding="utf-8"?>
<Event xmlns="http://schemas.microsoft.com/win/2004/08/events/event">
  <System>
    <Provider Name="Service Control Manager" Guid="{555908d1-a6d7-4695-8e1e-26931d2012f4}" EventSourceName="SCM">
    </Provider>
    <EventID Qualifiers="16384">7045</EventID>
    <Version>0</Version>
    <Level>4</Level>
    <Task>0</Task>
    <Opcode>0</Opcode>
    <Keywords>0x8080000000000000</Keywords>
    <TimeCreated SystemTime="2019-03-19T23:34:25.459016Z">
    </TimeCreated>
    <EventRecordID>2</EventRecordID>
    <Correlation>
    </Correlation>
    <Execution ProcessID="628" ThreadID="2468">
    </Execution>
    <Channel>System</Channel>
    <Computer>PC01.example.corp</Computer>
    <Security UserID="S-1-5-21-1">
    </Security>
  </System>
  <EventData>
    <Data>first unnamed</Data>
    <Data Name="">empty name</Data>
    <Data Name="ImagePath">%%SystemRoot%% &amp; more</Data>
    <Data></Data>
  </EventData>
</Event>"""
    fast, slow = parse_event_xml_fast(xml, PROV), parse_event_xml(xml, PROV)
    assert fast == slow
    assert fast["event_data"] == [{"name": None, "value": "first unnamed"}, {"name": "", "value": "empty name"},
                                  {"name": "ImagePath", "value": "%%SystemRoot%% & more"},
                                  {"name": None, "value": ""}]
    assert (fast["qualifiers"], fast["event_source_name"], fast["user_id"]) == (16384, "SCM", "S-1-5-21-1")


@functools.cache
def _security_rendering() -> str:
    """One record of the corpus exactly as the evtx parser renders it (4781, named Data)."""
    records = evtx.PyEvtxParser(str(CORPUS / "omerbenamram__evtx/samples/security.evtx")).records()
    return next(r["data"] for r in records if r is not None and r["event_record_id"] == 101)


_BASE_DATA = '    <Data Name="OldTargetUserName">Power Users</Data>\n'
_LAST_DATA = '    <Data Name="PrivilegeList">-</Data>\n'
# (what to replace in the record, by what): each probes one rule of the fast paths.
_VARIANTS = [
    ("", ""),
    ("<EventID>4781", '<EventID Qualifiers="16384">4781'),
    ('Guid="54849625-5478-4994-A5BA-3E3B0328C30D">', 'Guid="x" EventSourceName="Security">'),
    ('<Provider Name="Microsoft-Windows-Security-Auditing" Guid="54849625-5478-4994-A5BA-3E3B0328C30D">',
     "<Provider>"),
    ("<Computer>WIN-03DLIIOFRRA</Computer>", "<Computer>   </Computer>"),
    ("<Computer>WIN-03DLIIOFRRA</Computer>", "<Computer>\u2003</Computer>"),
    ("<Computer>WIN-03DLIIOFRRA</Computer>", "<Computer>h\u00f6st-\u6f22</Computer>"),
    ("<Keywords>0x8020000000000000</Keywords>", "<Keywords> </Keywords>"),
    ("<Keywords>0x8020000000000000</Keywords>", "<Keywords></Keywords>"),
    ("\n    <Keywords>0x8020000000000000</Keywords>", ""),
    ("<Version>0</Version>", "<Version></Version>"),
    ("<Version>0</Version>", "<Version>x</Version>"),
    ("<EventRecordID>101</EventRecordID>", "<EventRecordID>123456789012345678901234</EventRecordID>"),
    ('ProcessID="476"', 'ProcessID=""'),
    ('ProcessID="476"', 'ProcessID="4x"'),
    ("<Correlation>", '<Correlation ActivityID="{D2C3A1B0-0000-0000-0000-000000000001}">'),
    ("<Security>", '<Security UserID="S-1-5-18">'),
    ("2016-07-08T18:15:50.689631Z", "2016-07-08T18:15:50.6896317Z"),
    ("2016-07-08T18:15:50.689631Z", "2016-07-08T18:15:50.689631789Z"),
    ("2016-07-08T18:15:50.689631Z", "2016-07-08T18:15:50Z"),
    ("2016-07-08T18:15:50.689631Z", "2016-07-08T18:15:50.Z"),
    ("2016-07-08T18:15:50.689631Z", "2016-02-29T23:59:59.1Z"),
    ("2016-07-08T18:15:50.689631Z", "2015-02-29T00:00:00.1Z"),
    ("2016-07-08T18:15:50.689631Z", "2016-07-08T24:00:00.1Z"),
    ("2016-07-08T18:15:50.689631Z", "1601-01-01T00:00:00.0000001Z"),
    ("2016-07-08T18:15:50.689631Z", "2016-07-08 18:15:50.689631Z"),
    ('<TimeCreated SystemTime="2016-07-08T18:15:50.689631Z">', "<TimeCreated>"),
    (_BASE_DATA, '    <Data>unnamed</Data>\n    <Data Name="">empty name</Data>\n'),
    (_BASE_DATA, '    <Data Name="A">va"l">ue</Data>\n'),
    (_BASE_DATA, '    <Data Name="A"></Data>\n    <Data Name="A">  dup \t</Data>\n'),
    (_BASE_DATA, '    <Data Name="A" Other="b">v</Data>\n'),
    (_BASE_DATA, '    <Data Name="A"/>\n'),
    (_BASE_DATA, '    <Data Name="A">line\r\nnext \x01</Data>\n'),
    (_BASE_DATA, '    <Data Name="A">caf\u00e9 \U0001f600</Data>\n'),
    (_BASE_DATA, '    <Data Name="A"><Inner/></Data>\n'),
    (_BASE_DATA, "    <!-- c -->\n"),
    (_BASE_DATA, '    <Data Name="A">a &amp; b</Data>\n'),
    (_LAST_DATA, _LAST_DATA + "    <Binary>00FF</Binary>\n"),
    (_LAST_DATA, _LAST_DATA + "    <Binary/>\n"),
    (_BASE_DATA, "    <Binary>00</Binary>\n"),
    ("  <EventData>", '  <EventData Name="X">'),
    ("  <EventData>", '  <EventData Name="">'),
    ("  <EventData>", '  <EventData Name="a\tb">'),
    ("  <EventData>", '  <EventData Name="a<b">'),
    ("  <EventData>", "  <EventData Name='X'>"),
    ("  <EventData>", '  <EventData Name="X" Other="Y">'),
    ("  <EventData>", '  <EventData Name="X"/>'),
]


@functools.cache
def _user_data_rendering() -> str:
    """A 1102 (log cleared) record of the corpus as the evtx parser renders it: UserData/LogFileCleared."""
    (path,) = CORPUS.glob("**/ID472, 4728 Hidden user creation.evtx")
    records = evtx.PyEvtxParser(str(path)).records()
    return next(r["data"] for r in records if r is not None and "<UserData>" in r["data"])


_LOGON_ID = "<SubjectLogonId>0x14f509e2</SubjectLogonId>"
_LOG_FILE_CLEARED = '<LogFileCleared xmlns="http://manifests.microsoft.com/win/2004/08/windows/eventlog">'
_USER_DATA_VARIANTS = [
    ("", ""),
    (_LOGON_ID, "<SubjectLogonId></SubjectLogonId>"),
    (_LOGON_ID, "<SubjectLogonId/>"),
    (_LOGON_ID, "<SubjectLogonId />"),
    (_LOGON_ID, '<SubjectLogonId Kind="hex" Base="16">0x1</SubjectLogonId>'),
    (_LOGON_ID, "<SubjectLogonId Kind='hex'>0x1</SubjectLogonId>"),
    (_LOGON_ID, '<SubjectLogonId Kind="a\tb">0x1</SubjectLogonId>'),
    (_LOGON_ID, "<SubjectLogonId>a > b</SubjectLogonId>"),
    (_LOGON_ID, "<SubjectLogonId>a\r\nb</SubjectLogonId>"),
    (_LOGON_ID, "<SubjectLogonId>caf\u00e9 \x01 \"q\" 'a'</SubjectLogonId>"),
    (_LOGON_ID, "<SubjectLogonId>0x1</SubjectLogonID>"),
    (_LOGON_ID, "<SubjectLogonId>0x1</SubjectLogonId >"),
    (_LOGON_ID, "<SubjectLogonId><!-- c -->0x1</SubjectLogonId>"),
    (_LOGON_ID, "<SubjectLogonId><Inner><Deeper>x</Deeper></Inner></SubjectLogonId>"),
    (_LOGON_ID, "<Subject\u00e9>0x1</Subject\u00e9>"),
    ("<Security>", '<Security UserID="S-1-5-18">'),
    (_LOGON_ID, "<SubjectLogonId>0x1</SubjectLogonId><Empty></Empty><E2 A=\"1\"></E2>"),
    (_LOGON_ID, "<SubjectLogonId><Empty></Empty></SubjectLogonId>"),
    (_LOGON_ID, "<SubjectLogonId><Empty/></SubjectLogonId><E3 /><E4></E4 >"),
    *((_LOG_FILE_CLEARED, f"<LogFileCleared {attributes}>") for attributes in (
        'xmlns:auto-ns3="http://schemas.microsoft.com/win/2004/08/events" xmlns="LoadPerf"',
        'xmlns="http://http://manifests.microsoft.com/win/2004/08/windows/eventlog"',
        'x="1" xmlns="http://a.org/b"', 'xmlns="http://a.org/b" x="1"', 'x="1" x="2"', 'xmlns:p="http://a" xmlns:p="b"',
        'xmlns=""', 'xmlns="a/b.c-d_e"', 'xmlns="1x"', 'xmlns:p="urn"', 'xmlns:p="a b"', 'xmlns:xml="http://a"',
        'xmlns:xmlfoo="http://a"', 'xmlns:1="http://a"', 'xmlns:="http://a"', '1a="x"', '-a="x"', 'xmlns="//x"',
        'xmlns="a:b"', 'xmlns="http://a.b/c//d"', 'xmlns="http://-a"', 'xmlns="http://[::1]/"', 'xmlns="http://a.b/%41"',
        'xmlns:a="x" a:b="1"', 'xmlns:a="http://x"', " ".join(f'a{i}="{i}"' for i in range(17)))),
    ("<UserData>\n    <LogFileCleared", "<UserData></UserData>\n    <LogFileCleared"),
]


@pytest.mark.skipif(event_xml._native_parse is None, reason="producers._evtxrender is not built")
@pytest.mark.parametrize(("base", "old", "new"), [(_security_rendering, old, new) for old, new in _VARIANTS]
                         + [(_user_data_rendering, old, new) for old, new in _USER_DATA_VARIANTS])
def test_native_rendering_parser_declines_or_agrees_with_lxml(base: Callable[[], str], old: str, new: str) -> None:
    """The C parser either declines (None: the Python paths take the record) or gives exactly what lxml gives."""
    xml = base()
    assert old in xml
    xml = xml.replace(old, new, 1)
    assert event_xml._native_parse is not None
    native = event_xml._native_parse(xml, PROV, 5)
    try:
        expected: dict | None = parse_event_xml(xml, PROV, record_time=5)
    except EventXmlError:
        expected = None
    if native is not None:
        assert native == expected
    if expected is not None:
        assert parse_event_xml_fast(xml, PROV, record_time=5) == expected


_MARKUP = st.sampled_from(["<", ">", "/", "&", "&amp;", "&#x41;", "&#0;", "\"", "'", "=", " ", "\n", "\r", "\t",
                           "<Data>", "</Data>", "<Data Name=\"x\">", "<EventData>", "</EventData>", "<UserData>",
                           "</System>", "<!--", "-->", "<![CDATA[", "]]>", "\x00", "\ud7ff", "\U0001f600"])


@st.composite
def _mangled_rendering(draw: st.DrawFn) -> str:
    """A real rendering with a slice cut, repeated or replaced by markup or arbitrary text."""
    xml = draw(st.sampled_from([_security_rendering(), _user_data_rendering()]))
    start = draw(st.integers(0, len(xml)))
    end = draw(st.integers(start, min(len(xml), start + 64)))
    insert = draw(st.one_of(st.text(max_size=40), st.lists(_MARKUP, max_size=6).map("".join),
                            st.just(xml[start:end] * 2), st.just("")))
    return xml[:start] + insert + xml[end:]


@pytest.mark.skipif(event_xml._native_parse is None, reason="producers._evtxrender is not built")
@settings(max_examples=int(os.environ.get("SECSTREAM_NATIVE_FUZZ_EXAMPLES", "400")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(_mangled_rendering())
def test_native_rendering_parser_on_mangled_records_declines_or_agrees_with_lxml(xml: str) -> None:
    """Hostile or damaged renderings never crash the C parser: it declines, or gives exactly lxml's event."""
    assert event_xml._native_parse is not None
    native = event_xml._native_parse(xml, PROV, 5)
    if native is None:
        return
    try:
        expected: dict | None = parse_event_xml(xml, PROV, record_time=5)
    except EventXmlError:
        expected = None
    assert native == expected


def test_native_rendering_parser_is_in_use_when_required() -> None:
    """``make test`` sets SECSTREAM_REQUIRE_NATIVE_EVTX=1: this fails if producers._evtxrender did not build or load."""
    if os.environ.get("SECSTREAM_REQUIRE_NATIVE_EVTX", "") != "1":
        pytest.skip("SECSTREAM_REQUIRE_NATIVE_EVTX is not set")
    try:
        importlib.import_module("producers._evtxrender")
    except ImportError as exc:
        pytest.fail(f"SECSTREAM_REQUIRE_NATIVE_EVTX=1 but producers._evtxrender did not load: {exc}")
    assert event_xml._native_parse is not None, "loaded, but turned off (SECSTREAM_NATIVE_EVTX=0?)"
