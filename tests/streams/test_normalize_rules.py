"""Normalisation rules on real corpus events and on the edge cases the golden rows do not reach."""

from __future__ import annotations

import copy
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from producers.timeutil import iso_to_ticks
from schemas.catalog import COLUMN_NAMES
from streams.identity import (
    EVENT_IDENTITY_NAMESPACE,
    event_identity,
    event_origin_id,
    identity_key,
)
from streams.normalize import (
    EVENT_DATA_EMPTIED,
    EVENT_DATA_UNPARSED,
    NormalizeContext,
    event_data_policy,
    normalize_batch,
    normalize_event,
    ticks_to_iso,
)
from tests.streams.corpus_events import corpus_events

AMA_ONLY = ("EventLevelName", "Version", "Opcode", "Keywords", "Correlation", "SystemProcessId", "SystemThreadId",
            "EventRecordId", "SystemUserId")


def logon(**overrides: Any) -> dict[str, Any]:
    """A 4624 as the evtx parser reads it (values from the misc/api golden row)."""
    event: dict[str, Any] = {
        "provider_name": "Microsoft-Windows-Security-Auditing",
        "provider_guid": "{54849625-5478-4994-A5BA-3E3B0328C30D}",
        "event_source_name": None, "event_id": 4624, "qualifiers": None, "version": 2, "level": 0, "task": 12544,
        "opcode": 0, "keywords": "0x8020000000000000", "time_created": iso_to_ticks("2023-04-10T07:47:01.9710164Z"),
        "event_record_id": 1234567, "activity_id": "{0A2D4E73-6B33-0001-A64E-2D0A336BD901}",
        "related_activity_id": None, "process_id": 720, "thread_id": 8812, "channel": "Security",
        "computer": "CH1-XXXX", "user_id": None, "user_data_xml": None, "rendered_message": None,
        "provenance": {"source_format": "evtx", "agent_id": "48fe7d27-1422-4005-abe8-2445b607f6f8",
                       "read_time_us": 1681112824677772, "collector_id": None, "source_ref": None},
        "event_data": [{"name": n, "value": v} for n, v in [
            ("SubjectUserSid", "S-1-5-18"), ("SubjectUserName", "CH1-XXXX$"), ("SubjectDomainName", "WORKGROUP"),
            ("SubjectLogonId", "0x3e7"), ("TargetUserSid", "S-1-5-21-3848374700-899364479-570268935-500"),
            ("TargetUserName", "timadmin"), ("TargetDomainName", "CH1-XXXX"), ("TargetLogonId", "0x1fc0ed"),
            ("LogonType", "10"), ("LogonProcessName", "User32 "), ("AuthenticationPackageName", "Negotiate"),
            ("WorkstationName", "CH1-XXXX"), ("LogonGuid", "{00000000-0000-0000-0000-000000000000}"),
            ("TransmittedServices", "-"), ("LmPackageName", "-"), ("KeyLength", "0"), ("ProcessId", "0x54c"),
            ("ProcessName", "C:\\Windows\\System32\\svchost.exe"), ("IpAddress", "1.1.1.1"), ("IpPort", "0"),
            ("ImpersonationLevel", "%%1833"), ("RestrictedAdminMode", "%%1843"),
            ("TargetOutboundUserName", "-"), ("TargetOutboundDomainName", "-"), ("VirtualAccount", "%%1843"),
            ("TargetLinkedLogonId", "0x0"), ("ElevatedToken", "%%1842"),
        ]],
    }
    event.update(overrides)
    return event


def data(event: dict[str, Any], name: str, value: str | None) -> dict[str, Any]:
    event = copy.deepcopy(event)
    for item in event["event_data"]:
        if item["name"] == name:
            item["value"] = value
    return event


# ---------------------------------------------------------------------------------------------- row shape


def test_a_logon_becomes_the_row_the_agent_writes() -> None:
    row = normalize_event(logon(), flavour="mma")
    assert row["TimeGenerated"] == "2023-04-10T07:47:01.9710164Z"  # 100 ns precision kept
    assert row["Level"] == "8"
    assert row["Account"] == "CH1-XXXX\\timadmin" and row["AccountType"] == "User"
    assert row["SubjectAccount"] == "WORKGROUP\\CH1-XXXX$" and row["TargetAccount"] == "CH1-XXXX\\timadmin"
    assert row["LogonType"] == 10 and row["LogonTypeName"] == "10 - RemoteInteractive"
    assert row["KeyLength"] == 0 and row["IpPort"] == "0"
    assert row["LogonGuid"] == "00000000-0000-0000-0000-000000000000"
    assert row["LogonProcessName"] == "User32 "  # not trimmed
    assert row["Process"] == "svchost.exe"
    assert "EventData" not in row  # 4624: every field is in a column
    assert row["SourceSystem"] == "OpsManager" and "Type" not in row
    assert set(row) <= set(COLUMN_NAMES)


def test_mma_rows_leave_the_ama_columns_empty_and_ama_rows_fill_them() -> None:
    mma = normalize_event(logon(), flavour="mma")
    assert not any(c in mma for c in AMA_ONLY)
    ama = normalize_event(logon(), flavour="ama")
    assert ama["Level"] == "0"
    assert {c: ama[c] for c in AMA_ONLY} == {
        "EventLevelName": "LogAlways", "Version": 2, "Opcode": "0", "Keywords": "0x8020000000000000",
        "Correlation": "{0A2D4E73-6B33-0001-A64E-2D0A336BD901}", "SystemProcessId": 720, "SystemThreadId": 8812,
        "EventRecordId": "1234567", "SystemUserId": "N/A",
    }
    assert normalize_event(logon(user_id="S-1-5-18"))["SystemUserId"] == "S-1-5-18"


@pytest.mark.parametrize(
    ("keywords", "level", "expected"),
    [("0x8020000000000000", 0, "8"), ("0x8010000000000000", 0, "16"), ("0x4020000000000000", 4, "8"),
     ("0x8000000000000000", 4, "4"), (None, 2, "1"), (None, 3, "2"), ("0x0", 0, "4")],
)
def test_mma_level_is_the_classic_event_type(keywords: str | None, level: int, expected: str) -> None:
    assert normalize_event(logon(keywords=keywords, level=level), flavour="mma")["Level"] == expected


def test_pipeline_columns_come_from_context_and_provenance() -> None:
    context = NormalizeContext(management_group_name="AOI-81a662b5-8541-481b-977d-5d956616ac5e",
                               mg="00000000-0000-0000-0000-000000000001")
    row = normalize_event(logon(), context=context)
    assert row["ManagementGroupName"] == "AOI-81a662b5-8541-481b-977d-5d956616ac5e"
    assert row["MG"] == "00000000-0000-0000-0000-000000000001"
    assert row["SourceComputerId"] == "48fe7d27-1422-4005-abe8-2445b607f6f8"
    assert row["TimeCollected"] == "2023-04-10T07:47:04.6777720Z"
    host_named = logon(provenance={"source_format": "evtx", "agent_id": "ws-17", "read_time_us": 0})
    assert "SourceComputerId" not in normalize_event(host_named)


def test_time_generated_keeps_every_digit() -> None:
    for text in ("2023-04-10T07:47:01.9710164Z", "1970-01-01T00:00:00.0000000Z", "2038-01-19T03:14:08.0000001Z",
                 "1601-01-01T00:00:00.0000000Z"):
        assert ticks_to_iso(iso_to_ticks(text)) == text


# ---------------------------------------------------------------------------------------------- typing


def test_a_non_numeric_int_column_is_null_and_the_value_stays_in_event_data() -> None:
    row = normalize_event(data(logon(), "LogonType", "%%2313"))
    assert "LogonType" not in row and "LogonTypeName" not in row
    assert '<Data Name="LogonType">%%2313</Data>' in row["EventData"]  # 4624 normally has no EventData


def test_hex_int_columns_are_parsed() -> None:
    assert normalize_event(data(logon(), "KeyLength", "0x80"))["KeyLength"] == 128


def test_guid_braces_are_stripped_and_a_non_guid_is_not_forced_in() -> None:
    row = normalize_event(data(logon(), "LogonGuid", "{BD2DDA1B-862A-504F-2260-D9D2ED316E26}"))
    assert row["LogonGuid"] == "BD2DDA1B-862A-504F-2260-D9D2ED316E26"
    row = normalize_event(data(logon(), "LogonGuid", "-"))
    assert "LogonGuid" not in row and '<Data Name="LogonGuid">-</Data>' in row["EventData"]


def test_missing_fields_give_empty_columns() -> None:
    event = logon()
    event["event_data"] = [i for i in event["event_data"] if i["name"] not in ("KeyLength", "TargetUserName")]
    row = normalize_event(event)
    assert "KeyLength" not in row and "TargetUserName" not in row
    assert row["TargetAccount"] == "CH1-XXXX"  # the domain alone, as for 4781
    assert row["Account"] == "CH1-XXXX"


# ---------------------------------------------------------------------------------------------- EventData


def test_event_data_is_pretty_printed_and_escaped_like_the_agents() -> None:
    event = logon(event_id=4663, event_data=[
        {"name": "ObjectName", "value": "C:\\a&b<c>\"d'.txt"},
        {"name": "AccessList", "value": "%%4432 \t\t\t\t"},
        {"name": None, "value": "unnamed"},
        {"name": "Empty", "value": ""},
        {"name": "Null", "value": None},
    ])
    row = normalize_event(event)
    assert row["EventData"] == (
        '<EventData xmlns="http://schemas.microsoft.com/win/2004/08/events/event">\r\n'
        '  <Data Name="ObjectName">C:\\a&amp;b&lt;c&gt;"d\'.txt</Data>\r\n'
        '  <Data Name="AccessList">%%4432 \t\t\t\t</Data>\r\n'
        "  <Data>unnamed</Data>\r\n"
        '  <Data Name="Empty" />\r\n'
        '  <Data Name="Null" />\r\n'
        "</EventData>"
    )
    assert row["ObjectName"] == "C:\\a&b<c>\"d'.txt"  # the column holds the value itself


def test_first_occurrence_wins_and_system_columns_cannot_be_overwritten() -> None:
    event = logon(event_id=4663, event_data=[
        {"name": "ObjectName", "value": "first"}, {"name": "ObjectName", "value": "second"},
        {"name": "EventID", "value": "1"}, {"name": "Computer", "value": "evil"}, {"name": "Account", "value": "x"},
    ])
    row = normalize_event(event)
    assert row["ObjectName"] == "first"
    assert row["EventID"] == 4663 and row["Computer"] == "CH1-XXXX" and "Account" not in row


@pytest.mark.parametrize("flavour", ["ama", "mma"])
def test_unparsed_ids_keep_event_data_and_fill_no_column(flavour: str) -> None:
    for event_id in sorted(EVENT_DATA_UNPARSED[flavour]):
        row = normalize_event(logon(event_id=event_id), flavour=flavour)
        assert "EventData" in row and "Account" not in row and "SubjectUserName" not in row, event_id


@pytest.mark.parametrize("flavour", ["ama", "mma"])
def test_emptied_ids_have_no_event_data(flavour: str) -> None:
    for event_id in sorted(EVENT_DATA_EMPTIED[flavour]):
        assert "EventData" not in normalize_event(logon(event_id=event_id), flavour=flavour), event_id
        assert event_data_policy(flavour, event_id) == "emptied"


def test_audit_log_cleared_keeps_its_user_data_and_fills_the_subject() -> None:
    (cleared,) = [e for e in corpus_events() if e["event_id"] == 1102 and e["computer"] == "SANS-TBT570"][:1]
    row = normalize_event(cleared, flavour="mma")
    assert row["Activity"] == "1102 - The audit log was cleared."
    assert row["Level"] == "8"  # keywords 0x4020000000000000: audit success
    assert row["EventData"] == (
        '<UserData xmlns="http://schemas.microsoft.com/win/2004/08/events/event">\r\n'
        '  <LogFileCleared xmlns="http://manifests.microsoft.com/win/2004/08/windows/eventlog">\r\n'
        "    <SubjectUserSid>S-1-5-21-1552841522-3835366585-4197357653-1001</SubjectUserSid>\r\n"
        "    <SubjectUserName>student</SubjectUserName>\r\n"
        "    <SubjectDomainName>SANS-TBT570</SubjectDomainName>\r\n"
        "    <SubjectLogonId>0x42c3d</SubjectLogonId>\r\n"
        "  </LogFileCleared>\r\n"
        "</UserData>"
    )
    assert row["Account"] == "SANS-TBT570\\student" and row["AccountType"] == "User"


def test_unknown_ids_get_the_bare_id_as_activity() -> None:
    assert normalize_event(logon(event_id=4763))["Activity"] == "4763"
    assert normalize_event(logon(event_id=412))["Activity"] == "412"


# ---------------------------------------------------------------------------------------------- batches


def test_every_corpus_event_normalises_and_only_to_known_columns() -> None:
    events = corpus_events()
    for flavour in ("ama", "mma"):
        rows, rejected = normalize_batch(events, flavour=flavour)
        assert not rejected and len(rows) == len(events)
        assert set().union(*rows) <= set(COLUMN_NAMES)


def test_bad_events_go_to_the_dead_letter_with_a_reason_and_the_rest_survive() -> None:
    good = logon()
    no_time = {k: v for k, v in logon().items() if k != "time_created"}
    bad_userdata = logon(event_id=8002, event_data=[], user_data_xml="<UserData><RuleAndFileData>")
    rows, rejected = normalize_batch([good, no_time, bad_userdata, good])
    assert len(rows) == 2
    assert [event for event, _ in rejected] == [no_time, bad_userdata]
    assert rejected[0][1] == "event has no event_id or time_created"
    assert rejected[1][1].startswith("UserData is not well-formed XML")


def test_origin_ids_given_with_a_batch_are_the_rows_ids_and_must_match_its_length() -> None:
    events = [logon(), logon(event_record_id=7)]
    ids = [event_origin_id(e) for e in events]
    rows, rejected = normalize_batch(events, origin_ids=ids)
    assert not rejected and [row["EventOriginId"] for row in rows] == ids
    # The ids are taken as given, not hashed again.
    rows, _ = normalize_batch(events, origin_ids=["a-given-id", "another"])
    assert [row["EventOriginId"] for row in rows] == ["a-given-id", "another"]
    with pytest.raises(ValueError, match="origin ids"):
        normalize_batch(events, origin_ids=ids[:1])


def test_an_unknown_flavour_is_refused() -> None:
    with pytest.raises(ValueError, match="flavour"):
        normalize_batch([logon()], flavour="winlogbeat")


# ---------------------------------------------------------------------------------------------- identity


def test_event_origin_id_is_the_uuid5_of_the_identity() -> None:
    event = logon()
    assert event_identity(event) == ("CH1-XXXX", "Security", 1234567, event["time_created"])
    expected = uuid.uuid5(EVENT_IDENTITY_NAMESPACE, identity_key(event_identity(event)).decode())
    assert event_origin_id(event) == str(expected)
    assert normalize_event(event)["EventOriginId"] == str(expected)


def test_copies_from_two_collectors_share_the_id_and_a_reused_record_id_does_not() -> None:
    event = logon()
    via_other_collector = logon(provenance={"source_format": "xml", "agent_id": "x", "collector_id": "c2",
                                            "read_time_us": 5})
    assert event_origin_id(event) == event_origin_id(via_other_collector)
    # After the Security log was cleared (1102) record ids start again: same id, later time, other event.
    after_clear = logon(time_created=event["time_created"] + 36_000_000_000)
    assert event_origin_id(after_clear) != event_origin_id(event)
    assert event_origin_id(logon(channel="System")) != event_origin_id(event)
    assert event_origin_id(logon(computer="CH2-XXXX")) != event_origin_id(event)


def test_events_without_record_id_are_told_apart_by_content() -> None:
    a = logon(event_record_id=None)
    b = data(logon(event_record_id=None), "TargetUserName", "bob")
    assert event_identity(a)[2] != event_identity(b)[2]
    assert str(event_identity(a)[2]).startswith("sha1:")
    assert event_origin_id(a) == event_origin_id(copy.deepcopy(a))


# ---------------------------------------------------------------------------------------------- properties

_XML_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff"), max_size=40
) | st.sampled_from(["%%4432 \t\t\t\t", "a&b", "<x>", "]]>", '"q"', "-"])
_NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,20}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.none() | _NAMES, _XML_TEXT), min_size=1, max_size=12))
def test_event_data_xml_reads_back_as_the_same_fields(fields: list[tuple[str | None, str]]) -> None:
    event = logon(event_id=4663, event_data=[{"name": n, "value": v} for n, v in fields])
    xml = normalize_event(event)["EventData"]
    root = etree.fromstring(xml.encode("utf-8"))
    assert root.tag == "{http://schemas.microsoft.com/win/2004/08/events/event}EventData"
    assert [(d.get("Name"), d.text or "") for d in root] == fields
    assert xml.count("\r\n") == len(fields) + 1


def test_normalising_from_several_threads_gives_the_same_rows() -> None:
    events = [logon(time_created=logon()["time_created"] + i * 3_333_333,
                    provenance={"source_format": "evtx", "agent_id": "", "read_time_us": 1_681_112_824_000_000 + i})
              for i in range(400)]
    expected = [normalize_event(e) for e in events]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            assert list(pool.map(normalize_event, events)) == expected
