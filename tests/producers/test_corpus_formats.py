"""Every input format against the dev corpus: record counts equal SOURCES.md, fields equal the raw file content."""

from __future__ import annotations

import io
import json
import tarfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import evtx
import orjson
import pytest
from fastavro import parse_schema
from fastavro.validation import validate
from lxml import etree

from producers.adapters import event_xml
from producers.adapters.json_formats import keywords_hex
from producers.adapters.sources import discover
from producers.timeutil import iso_to_ticks
from tests.conftest import REPO
from tests.producers.conftest import CorpusFile

RAW_EVENT_SCHEMA = parse_schema(json.loads((REPO / "schemas/avro/RawEvent.v1.avsc").read_text()))
CSV_FORMAT = "Log Analytics SecurityEvent query result, CSV"  # a query projection, not an event source

# Every EVTX, Winlogbeat 8 and Log Analytics file, and the smallest archives of the bulky JSON formats
# (the whole corpus takes about a minute here; these cover every format and keep the suite quick).
SMALL_ARCHIVES = {
    "covenant_sc_query_dcerpc_smb_svcctl.zip",  # NXLog
    "covenant_sharpsc_stop_dcerpc_smb_svcctl.zip",  # NXLog
    "psh_windows_vault_web_credentials.zip",  # OTRF flat
    "empire_wdigest_downgrade.tar.gz",  # Winlogbeat 6
}


def _selected(files: list[CorpusFile]) -> list[CorpusFile]:
    return [f for f in files if f.fmt != CSV_FORMAT and (
        f.fmt in ("EVTX", "Winlogbeat 8.x event JSON array", "Log Analytics SecurityEvent export, JSON (zip)")
        or f.path.name in SMALL_ARCHIVES)]


def _read(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    events: list[dict[str, Any]] = []
    issues: list[str] = []
    for source in discover([path]):
        events.extend(event for event, _ in source.read(None))
        issues.extend(source.issues)
    return events, issues


def test_selection_covers_every_format(corpus_files: list[CorpusFile]) -> None:
    formats = {f.fmt for f in corpus_files} - {CSV_FORMAT}
    assert {f.fmt for f in _selected(corpus_files)} == formats


def test_record_counts_match_ground_truth(corpus_files: list[CorpusFile]) -> None:
    mismatches = []
    for f in _selected(corpus_files):
        events, issues = _read(f.path)
        security = sum(1 for e in events if e["channel"].lower() == "security")
        if (len(events), security) != (f.records, f.security_records):
            mismatches.append((f.path.name, f.records, len(events), f.security_records, security, issues[:2]))
        for event in events[:50]:
            assert validate(event, RAW_EVENT_SCHEMA), f.path
    assert not mismatches


def test_damaged_evtx_reports_what_it_skipped(corpus_files: list[CorpusFile]) -> None:
    damaged = [f for f in corpus_files if f.path.name in
               ("sample_with_a_bad_chunk_magic.evtx", "sample-with-zero-data-size-event.evtx")]
    assert len(damaged) == 2
    for f in damaged:
        events, issues = _read(f.path)
        assert len(events) == f.records  # 270 and 335 readable records
        assert issues and all("Skipping EVTX data" in i for i in issues)


def _evtx_json(path: Path) -> list[dict[str, Any]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        records = evtx.PyEvtxParser(str(path), skip_errors=True).records_json()
        return [orjson.loads(r["data"])["Event"] for r in records if r is not None]


def test_evtx_fields_match_the_parsers_json_view(corpus_files: list[CorpusFile]) -> None:
    """The XML path against the same parser's JSON rendering, an independent view of the same records."""
    checked = 0
    for f in corpus_files:
        if f.fmt != "EVTX":
            continue
        events, _ = _read(f.path)
        views = _evtx_json(f.path)
        assert len(events) == len(views)
        for event, view in zip(events, views, strict=True):
            system = view["System"]
            event_id = system["EventID"]
            event_id = event_id["#text"] if isinstance(event_id, dict) else event_id
            assert str(event["event_id"]) == str(event_id)
            assert event["computer"] == (system.get("Computer") or "")
            if system.get("EventRecordID") is not None:
                assert event["event_record_id"] == int(system["EventRecordID"])
            data = view.get("EventData")
            if isinstance(data, dict) and not ({"Data", "#attributes", "Binary"} & set(data)):
                assert [i["name"] for i in event["event_data"]] == list(data)
                for item in event["event_data"]:
                    value = data[item["name"]]
                    if isinstance(value, str):
                        assert item["value"] == value, (f.path.name, item)
                    checked += 1
    assert checked > 50_000


@pytest.mark.skipif(event_xml.native_from_record is None, reason="producers._evtxrender is not built")
def test_evtx_native_reader_equals_the_python_reader(corpus_files: list[CorpusFile],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every EVTX file of the corpus, damaged ones included: the C record mapping gives the same events (full
    precision time, record ids) and the same reported issues as the Python one."""
    files = [f.path for f in corpus_files if f.fmt == "EVTX"]
    native = [_read(path) for path in files]
    monkeypatch.setattr(event_xml, "native_from_record", None)
    monkeypatch.setattr(event_xml, "_native_parse", None)
    python = [_read(path) for path in files]
    assert sum(len(events) for events, _ in native) > 7000
    for path, (native_events, native_issues), (python_events, python_issues) in zip(files, native, python,
                                                                                     strict=True):
        assert native_issues == python_issues, path.name
        for a, b in zip(native_events, python_events, strict=True):
            assert {**a, "provenance": None} == {**b, "provenance": None}, (path.name, b["event_record_id"])


def _as_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _zip_lines(path: Path) -> list[dict[str, Any]]:
    with zipfile.ZipFile(path) as archive:
        member = next(n for n in archive.namelist() if not n.startswith("__MACOSX"))
        return [orjson.loads(line) for line in archive.read(member).splitlines() if line.strip()]


def _by_name(files: list[CorpusFile], name: str) -> Path:
    return next(f.path for f in files if f.path.name == name)


def _events_and_rows(files: list[CorpusFile], name: str, count: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The mapped events of a zipped JSON-lines file next to its raw rows (same order, ``count`` of each)."""
    path = _by_name(files, name)
    events, _ = _read(path)
    raw = _zip_lines(path)
    assert len(events) == len(raw) == count
    return list(zip(events, raw, strict=True))


def _assert_event_data_from_row(event: dict[str, Any], row: dict[str, Any]) -> None:
    for item in event["event_data"]:
        assert _as_text(row[item["name"]]) == item["value"]


def test_nxlog_fields_verbatim(corpus_files: list[CorpusFile]) -> None:
    pairs = _events_and_rows(corpus_files, "covenant_sc_query_dcerpc_smb_svcctl.zip", 629)
    for event, row in pairs:
        assert event["provenance"]["source_format"] == "nxlog"
        assert event["event_id"] == row["EventID"]
        assert event["computer"] == row["Hostname"] and event["channel"] == row["Channel"]
        assert event["event_record_id"] == row["RecordNumber"]
        assert event["keywords"] == keywords_hex(row["Keywords"])
        assert event["rendered_message"] == row.get("Message")
        _assert_event_data_from_row(event, row)
        # EventTime is local time; the producer recovers UTC from EventReceivedTime vs @timestamp.
        stamp = iso_to_ticks(row["@timestamp"])
        assert 0 <= stamp - event["time_created"] < 120 * 10**7
    security = [e for e, _ in pairs if e["channel"] == "Security"]
    assert security and all(e["keywords"].startswith("0x80") for e in security)


def test_otrf_flat_fields_verbatim(corpus_files: list[CorpusFile]) -> None:
    for event, row in _events_and_rows(corpus_files, "psh_windows_vault_web_credentials.zip", 120):
        assert event["provenance"]["source_format"] == "otrf"
        assert event["keywords"] == row["Keywords"]
        assert event["time_created"] == iso_to_ticks(row["TimeCreated"])
        assert event["task"] == int(row["Task"])
        names = {i["name"] for i in event["event_data"]}
        assert "Message" not in names and "Hostname" not in names
        _assert_event_data_from_row(event, row)


def test_winlogbeat6_fields_verbatim(corpus_files: list[CorpusFile]) -> None:
    path = _by_name(corpus_files, "empire_wdigest_downgrade.tar.gz")
    events, _ = _read(path)
    with tarfile.open(path) as archive:
        member = archive.getmembers()[0]
        stream = archive.extractfile(member)
        assert stream is not None
        raw = [orjson.loads(line) for line in io.BytesIO(stream.read()) if line.strip()]
    assert len(events) == len(raw) == 2710
    for event, row in zip(events, raw, strict=True):
        assert event["provenance"]["source_format"] == "winlogbeat"
        assert event["event_record_id"] == int(row["record_number"])
        assert event["computer"] == row["computer_name"] and event["channel"] == row["log_name"]
        assert [(i["name"], i["value"]) for i in event["event_data"]] == list((row.get("event_data") or {}).items())
        if row["log_name"] == "Security" and row.get("keywords") == ["Audit Success"]:
            assert event["keywords"] == "0x8020000000000000"


def test_winlogbeat8_full_precision_time(corpus_files: list[CorpusFile]) -> None:
    path = _by_name(corpus_files, "security-windows2012_4768.evtx.golden.json")
    (event,), _ = _read(path)
    row = json.loads(path.read_text())[0]
    assert event["time_created"] == iso_to_ticks("2020-04-01T08:45:44.1717416Z")
    assert event["event_record_id"] == row["winlog"]["record_id"] == 5040235
    assert dict((i["name"], i["value"]) for i in event["event_data"]) == row["winlog"]["event_data"]
    assert (event["process_id"], event["thread_id"]) == (496, 2868)


def _user_data_tree(xml: str) -> tuple[str, str, list[tuple[str, str]]]:
    """(UserData tag, its element's qualified tag, [(leaf local name, text)]) of a user_data_xml value."""
    root = etree.fromstring(xml.encode())
    (element,) = list(root)
    return root.tag, element.tag, [(etree.QName(leaf).localname, leaf.text or "") for leaf in element]


def test_winlogbeat_user_data_is_the_userdata_xml(corpus_files: list[CorpusFile]) -> None:
    """1102 (log cleared) from Winlogbeat 8: UserData comes back as the XML a Windows rendering of the same event
    has (element names and namespaces as in the corpus' own EVTX 1102 records), with Winlogbeat's values verbatim,
    and the stream stage's UserData reader takes it."""
    path = _by_name(corpus_files, "1102.evtx.golden.json")
    (event,), issues = _read(path)
    assert not issues
    user_data = json.loads(path.read_text())[0]["winlog"]["user_data"]
    root, element, leaves = _user_data_tree(event["user_data_xml"])
    assert root == "{http://schemas.microsoft.com/win/2004/08/events/event}UserData"
    assert etree.QName(element).localname == user_data["xml_name"] == "LogFileCleared"
    assert leaves == [(k, v) for k, v in user_data.items() if k != "xml_name"]

    windows_1102 = [e for f in corpus_files if f.fmt == "EVTX" for e in _read(f.path)[0] if e["event_id"] == 1102]
    assert windows_1102, "the corpus has EVTX 1102 records to compare with"
    for recorded in windows_1102:
        recorded_root, recorded_element, recorded_leaves = _user_data_tree(recorded["user_data_xml"])
        assert (recorded_root, recorded_element) == (root, element)
        assert sorted(name for name, _ in recorded_leaves) == sorted(name for name, _ in leaves)

    from streams.normalize import user_data_xml

    assert user_data_xml(event["user_data_xml"])[1] == leaves


def test_winlogbeat6_user_data_is_xml(corpus_files: list[CorpusFile]) -> None:
    path = _by_name(corpus_files, "empire_wdigest_downgrade.tar.gz")
    events, _ = _read(path)
    with tarfile.open(path) as archive:
        stream = archive.extractfile(archive.getmembers()[0])
        assert stream is not None
        rows = [orjson.loads(line) for line in io.BytesIO(stream.read()) if line.strip()]
    checked = 0
    for event, row in zip(events, rows, strict=True):
        if "user_data" not in row:
            assert event["user_data_xml"] is None
            continue
        _, element, leaves = _user_data_tree(event["user_data_xml"])
        # WMI-Activity: its UserData namespace is not known here, so the element inherits the event namespace
        assert element == "{http://schemas.microsoft.com/win/2004/08/events/event}" + row["user_data"]["xml_name"]
        assert leaves == [(k, v) for k, v in row["user_data"].items() if k != "xml_name"]
        checked += 1
    assert checked == 3


@pytest.mark.parametrize("name", ["WindowsEvents.Zip"])
def test_log_analytics_export(corpus_files: list[CorpusFile], name: str) -> None:
    path = _by_name(corpus_files, name)
    events, issues = _read(path)
    assert len(events) == 38 and not issues
    logon = next(e for e in events if e["event_id"] == 4624)
    names = {i["name"] for i in logon["event_data"]}
    assert {"TargetUserName", "LogonType", "ProcessId"} <= names  # Kusto suffix _string removed
    assert "TenantId" not in names and "Account" not in names


def test_xml_stream_of_a_whole_log(corpus_files: list[CorpusFile], tmp_path: Path) -> None:
    """A wevtutil-style file (one rendered <Event> after another) holds what the EVTX file holds."""
    f = next(f for f in corpus_files if f.path.name == "security.evtx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rendered = [r["data"] for r in evtx.PyEvtxParser(str(f.path)).records() if r is not None]
    stream = tmp_path / "security.xml"
    stream.write_text("\r\n".join(rendered), encoding="utf-8")
    (source,) = discover([stream])
    assert source.fmt == "xml"
    from_xml = [e for e, _ in source.read(None)]
    from_evtx, _ = _read(f.path)
    assert len(from_xml) == f.records == 2261
    for a, b in zip(from_xml, from_evtx, strict=True):
        # The rendered SystemTime has microseconds; the EVTX reader adds the 7th digit from the record header.
        assert a["time_created"] // 10 == b["time_created"] // 10
        assert {**a, "time_created": 0, "provenance": None} == {**b, "time_created": 0, "provenance": None}


def test_truncated_archive_gives_its_readable_records(corpus_files: list[CorpusFile], tmp_path: Path) -> None:
    """Two OTRF tar.gz files are truncated upstream; a cut archive must yield what precedes the cut, and say so."""
    whole = _by_name(corpus_files, "empire_wdigest_downgrade.tar.gz")
    cut = tmp_path / "cut.tar.gz"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    events, issues = _read(cut)
    complete, _ = _read(whole)
    assert 0 < len(events) < len(complete)
    assert events[:-1] == [{**e, "provenance": events[0]["provenance"]} for e in complete[: len(events) - 1]]
    assert any("reading stopped: EOFError" in issue for issue in issues)
