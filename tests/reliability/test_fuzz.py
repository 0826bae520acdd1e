"""Fuzzing the parsers that take outside input: event XML, Windows event JSON, XPath rules and the YAML config.

Every case must end in a value or in the documented exception of its parser (``EventXmlError``,
``RecordFormatError``, ``XPathError``, ``ConfigError``), which the stages turn into dead letters or a clear
configuration error; anything else would crash a stage. Events the adapters accept must also fit the RawEvent
Avro schema, or the producer would fail later, at encoding.

Example counts come from the hypothesis profile named by ``SECSTREAM_FUZZ_PROFILE``: ``ci`` (default, inside
``make test``) or ``fuzz`` (``make reliability``: 2,000 per test, 12,000 in all).
"""

from __future__ import annotations

import json
import os
import zipfile
from functools import cache
from typing import Any, cast

import evtx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producers.adapters.event_xml import EventXmlError, iter_event_xml, parse_event_xml
from producers.adapters.json_formats import RecordFormatError, map_json_record
from schemas.codec import encode_raw_batch
from secstream.config import ConfigError, Settings, load_settings
from streams.xpath import XPathError, compile_queries
from tests.conftest import CORPUS

settings.register_profile("ci", max_examples=120, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("fuzz", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ = settings(settings.get_profile(os.environ.get("SECSTREAM_FUZZ_PROFILE", "ci")))

PROVENANCE = {"source_format": "xml", "agent_id": "fuzz", "collector_id": None, "read_time_us": 0,
              "source_ref": "fuzz"}


def accepted(event: dict[str, Any]) -> None:
    """What an adapter accepts must encode as a RawEvent (one-event batch)."""
    encode_raw_batch({"host": event.get("computer") or "h", "batch_id": "b", "sequence": 0, "agent_id": "fuzz",
                      "send_time_us": 0, "events": [event]})


# -------------------------------------------------------------------------------------------- real samples

@cache
def real_event_xml() -> list[str]:
    """Rendered event XML of real EVTX records (Security and other channels)."""
    out: list[str] = []
    for name in ("kerberos_pwd_spray_4771.evtx", "ppl_bypass_ppldump_knowdll_hijack_sysmon_security.evtx",
                 "post-Security.evtx"):
        path = next(CORPUS.rglob(name))
        out += [str(cast(dict[str, Any], r)["data"]) for r in evtx.PyEvtxParser(str(path)).records()][:20]
    return out


@cache
def real_json_records() -> list[dict[str, Any]]:
    """Winlogbeat 8.x, NXLog and OTRF records of the corpus, verbatim."""
    out: list[dict[str, Any]] = []
    for path in sorted(CORPUS.rglob("*.evtx.golden.json"))[:3]:
        out += json.loads(path.read_text(encoding="utf-8"))[:5]
    for zipped in sorted(CORPUS.rglob("*.zip"))[:6]:
        with zipfile.ZipFile(zipped) as z:
            member = next(n for n in z.namelist() if n.endswith(".json"))
            with z.open(member) as f:
                for line in f.read(400_000).splitlines()[:15]:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(record, dict):
                        out.append(record)
    return out


# -------------------------------------------------------------------------------------------- event XML

_TAGS = ["Event", "System", "Provider", "EventID", "Version", "Level", "Task", "Opcode", "Keywords",
         "TimeCreated", "EventRecordID", "Correlation", "Execution", "Channel", "Computer", "Security",
         "EventData", "Data", "UserData", "Binary", "RenderingInfo", "Message"]
_ATTRS = ["Name", "Guid", "SystemTime", "Qualifiers", "ProcessID", "ThreadID", "UserID", "ActivityID",
          "EventSourceName", "xmlns"]
_TEXT = st.one_of(st.text(max_size=30), st.integers(-2**70, 2**70).map(str),
                  st.sampled_from(["4624", "2024-01-01T00:00:00.1234567Z", "0x8020000000000000", "", " ", "&amp;",
                                   "\x00", "\ud7ff", "{54849625-5478-4994-A5BA-3E3B0328C30D}"]))


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _element(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(
        lambda tag, attrs, text, kids: (
            f"<{tag}" + "".join(f' {k}="{_xml_escape(v)}"' for k, v in attrs.items()) + ">"
            + _xml_escape(text) + "".join(kids) + f"</{tag}>"),
        st.sampled_from(_TAGS), st.dictionaries(st.sampled_from(_ATTRS), _TEXT, max_size=3), _TEXT,
        st.lists(children, max_size=4))


EVENT_TREES = st.recursive(st.just(""), _element, max_leaves=25).map(
    lambda inner: '<Event xmlns="http://schemas.microsoft.com/win/2004/08/events/event">' + inner + "</Event>")


@st.composite
def mutated_real_xml(draw: st.DrawFn) -> bytes:
    """A real event, damaged: bytes replaced, cut short, or a piece repeated."""
    data = bytearray(draw(st.sampled_from(real_event_xml())).encode("utf-8"))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["byte", "cut", "repeat", "insert"]))
        if kind == "byte":
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at:]
        elif kind == "repeat":
            data[at:at] = data[at:at + draw(st.integers(1, 80))]
        else:
            data[at:at] = draw(st.sampled_from([b"<", b">", b"&", b"]]>", b"<!--", b"\xff\xfe", b"<Data>", b"&#0;"]))
    return bytes(data)


def _parse_or_reject(xml: str | bytes) -> None:
    try:
        event = parse_event_xml(xml, PROVENANCE)
    except EventXmlError:
        return
    accepted(event)


@FUZZ
@given(EVENT_TREES)
def test_fuzz_generated_event_xml(xml: str) -> None:
    _parse_or_reject(xml)


@FUZZ
@given(mutated_real_xml())
def test_fuzz_damaged_real_event_xml(xml: bytes) -> None:
    _parse_or_reject(xml)
    # The same bytes inside a stream of events: every event is a RawEvent or an error passed to the handler.
    reasons: list[str] = []
    try:
        for event in iter_event_xml(iter([b"<Events>", xml, b"</Events>"]), PROVENANCE,
                                    on_error=lambda reason, *_: reasons.append(reason)):
            accepted(event)
    except EventXmlError:
        pass


# -------------------------------------------------------------------------------------------- event JSON

JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(allow_nan=True), _TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=20)


@st.composite
def mutated_real_json(draw: st.DrawFn) -> Any:
    """A real Winlogbeat / NXLog / OTRF record with fields removed, retyped or replaced."""
    record = dict(draw(st.sampled_from(real_json_records())))
    for _ in range(draw(st.integers(1, 5))):
        if not record:
            break
        key = draw(st.sampled_from(sorted(record)))
        action = draw(st.sampled_from(["drop", "replace", "nest"]))
        if action == "drop":
            del record[key]
        elif action == "replace":
            record[key] = draw(JSON_VALUES)
        elif isinstance(record[key], dict) and record[key]:
            inner = dict(record[key])
            inner[draw(st.sampled_from(sorted(inner)))] = draw(JSON_VALUES)
            record[key] = inner
    return record


def _map_or_reject(record: Any, fmt: str) -> None:
    try:
        event = map_json_record(record, {**PROVENANCE, "source_format": "json"}, fmt)
    except RecordFormatError:
        return
    accepted(event)


@FUZZ
@given(mutated_real_json(), st.sampled_from(["auto", "winlogbeat", "nxlog", "otrf", "sentinel-export"]))
def test_fuzz_damaged_real_json_records(record: Any, fmt: str) -> None:
    _map_or_reject(record, fmt)


@FUZZ
@given(JSON_VALUES)
def test_fuzz_arbitrary_json_values(value: Any) -> None:
    _map_or_reject(value, "auto")


# -------------------------------------------------------------------------------------------- XPath rules
# tests/streams/test_xpath.py already fuzzes arbitrary text and token soup; these are well-formed queries built
# from the grammar (so they reach the evaluator), run against events with missing, odd and huge values.

_FIELDS = ["EventID", "Level", "Task", "Opcode", "Keywords", "EventRecordID", "Version", "Computer", "Channel",
           "Provider[@Name", "TimeCreated[@SystemTime", "Security[@UserID", "Execution[@ProcessID"]
_LITERALS = st.one_of(st.integers(-2**63, 2**64).map(str), st.sampled_from(["'x'", '"4624"', "0x10", "''", "-1"]))


def _comparison(field: str, op: str, literal: str) -> str:
    if field.endswith(("[@Name", "[@SystemTime", "[@UserID", "[@ProcessID")):
        return f"{field}{op}{literal}]"
    return f"{field}{op}{literal}"


_ATOMS = st.one_of(
    st.builds(_comparison, st.sampled_from(_FIELDS), st.sampled_from(["=", "!=", "<", "<=", ">", ">="]), _LITERALS),
    st.builds(lambda mask: f"band(Keywords,{mask})", st.sampled_from(["4503599627370496", "0x8010000000000000", "0"])),
    st.builds(lambda ms: f"TimeCreated[timediff(@SystemTime) <= {ms}]", st.integers(0, 2**40)),
)
SYSTEM_PREDICATES = st.recursive(_ATOMS, lambda inner: st.one_of(
    st.builds(lambda a, b: f"({a} and {b})", inner, inner),
    st.builds(lambda a, b: f"({a} or {b})", inner, inner),
    st.builds(lambda a: f"not({a})", inner)), max_leaves=8)
DATA_PREDICATES = st.builds(lambda name, value: f"Data[@Name='{name}']='{value}'",
                            st.sampled_from(["TargetUserName", "LogonType", "SubjectUserSid", "x"]),
                            st.text(alphabet="abcAB019-_ ", max_size=8))
QUERIES = st.builds(
    lambda channel, system, data: f"{channel}!*[System[{system}]]" + (f" and *[EventData[{data}]]" if data else ""),
    st.sampled_from(["Security", "Microsoft-Windows-AppLocker/EXE and DLL", "Application"]),
    SYSTEM_PREDICATES, st.none() | DATA_PREDICATES)

ODD_EVENTS = st.fixed_dictionaries({
    "event_id": st.integers(0, 65535), "level": st.none() | st.integers(-5, 300),
    "task": st.none() | st.integers(0, 70000), "opcode": st.none() | st.integers(0, 300),
    "version": st.none() | st.integers(0, 300),
    "keywords": st.none() | st.sampled_from(["0x8020000000000000", "", "garbage", "0x" + "f" * 40, "-1"]),
    "time_created": st.integers(-2**62, 2**62), "event_record_id": st.none() | st.integers(-2**63, 2**63 - 1),
    "channel": st.sampled_from(["Security", "Application", ""]), "computer": st.text(max_size=20),
    "provider_name": st.text(max_size=20), "user_id": st.none() | st.text(max_size=10),
    "process_id": st.none() | st.integers(0, 2**32), "thread_id": st.none() | st.integers(0, 2**32),
    "event_data": st.lists(st.fixed_dictionaries({"name": st.none() | st.sampled_from(["TargetUserName", "x"]),
                                                  "value": st.none() | st.text(max_size=10)}), max_size=4),
})


@FUZZ
@given(QUERIES, ODD_EVENTS)
def test_fuzz_grammar_xpath_on_odd_events(query: str, event: dict[str, Any]) -> None:
    try:
        compiled = compile_queries(query, clock=lambda: 1_700_000_000.0)
    except XPathError:
        return
    for q in compiled:
        for selector in q.selects + q.suppresses:
            if selector.node is not None:
                assert isinstance(selector.node.predicate(event), bool)


# -------------------------------------------------------------------------------------------- config

_KEYS = sorted({*Settings.model_fields, *(k for f in Settings.model_fields.values()
                                          for k in getattr(f.annotation, "model_fields", {})), "bootstrap_servers",
                "xpath", "event_set", "computers", "name", "endpoint", "credential", "mode", "token"})
YAML_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=False), st.text(max_size=20),
              st.sampled_from(["All", "Common", "Security!*", "https://x", "emulator", "memory://", "zstd"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=8), inner, max_size=4)),
    max_leaves=20)
CONFIGS = st.dictionaries(st.sampled_from(sorted(Settings.model_fields)), YAML_VALUES, max_size=5)


@FUZZ
@given(st.one_of(CONFIGS.map(lambda d: yaml.safe_dump(d)), st.text(max_size=200)))
def test_fuzz_config_files(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz-config.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_settings(path)
    except ConfigError as exc:
        assert str(exc)
