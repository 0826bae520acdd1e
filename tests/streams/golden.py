"""Rebuild raw events from the real SecurityEvent rows in ``securityevent-golden`` and compare our rows with them.

A row that carries its EventData XML is a real raw<->row pair: the XML plus the row's System values make the
Windows event (parsed by the producers' own XML adapter), which is normalised and compared column by column. A row
without XML is rebuilt from its columns (the EventData fields are exactly the columns named after them) and checked
on the columns it has: that tests the derived columns (Account, AccountType, SubjectAccount, TargetAccount, Process,
LogonTypeName, Activity), typing, the emptied EventData and the agent-era columns.

Known upstream anomalies are listed in ``EXCEPTIONS`` with the reason; nothing is skipped silently, and an exception
that no longer matches anything fails the test.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from producers.adapters.event_xml import parse_event_xml
from producers.timeutil import iso_to_ticks
from schemas.catalog import COLUMN_TYPES
from streams.normalize import DATA_COLUMNS, GUID_DATA_COLUMNS, normalize_event

GOLDEN = Path(__file__).resolve().parents[2].parent / "shared" / "securityevent-golden"

# Not derived from the event: set by the workspace (TenantId, Type, _ResourceId, billing), per deployment or agent
# (MG, ManagementGroupName, SourceComputerId), at collection time (TimeCollected), or a random id per row in the real
# data (EventOriginId; ours is deterministic by design).
NOT_FROM_EVENT = frozenset({
    "TenantId", "Type", "_ResourceId", "_BilledSize", "_IsBillable", "_SubscriptionId", "MG", "ManagementGroupName",
    "SourceComputerId", "TimeCollected", "EventOriginId",
})
# AMA-era columns our rows fill even when the raw event has no value for them (System/Level is always there; a
# missing Security/@UserID is written "N/A").
AMA_ERA_ALWAYS_SET = ("EventLevelName", "SystemUserId")

# file -> "full" (an absent column means empty: API exports omit empty columns) or "projection" (only the columns
# the query projected; absent means unknown).
FILES: dict[str, str] = {
    "msticpy/all_events_df.jsonl": "full",
    "msticpy/host_logons.jsonl": "projection",
    "msticpy/host_logons.csv": "projection",
    "msticpy/failed_logons.jsonl": "projection",
    "msticpy/processes_on_host.jsonl": "projection",
    "msticpy/processes_on_host.csv": "projection",
    "msticpy/win_proc_test_4688.jsonl": "projection",
    "otrf/GoldenSAMLADFSMailAccess_WindowsEvents.jsonl": "full",
    "otrf/Log4Shell_securityauditing_java_serialized_object.jsonl": "full",
    "azure-sentinel/asim_userManagement_subset.jsonl": "full",
    "azure-sentinel/asim_authentication_subset.jsonl": "full",
    "misc/api_and_issue_rows.jsonl": "full",
}


@dataclass(frozen=True)
class Exception_:
    """A documented difference between a golden row and what any normaliser can produce from the event."""

    file: str
    columns: tuple[str, ...]
    reason: str
    event_ids: frozenset[int] | None = None
    # How the expected value is treated: "skip" the column, or "lf" (compare EventData with CRLF restored).
    action: str = "skip"

    def applies(self, file: str, event_id: int, column: str) -> bool:
        return (file == self.file and column in self.columns
                and (self.event_ids is None or event_id in self.event_ids))


EXCEPTIONS: tuple[Exception_, ...] = (
    Exception_(
        "msticpy/all_events_df.jsonl", ("Account", "AccountType"),
        "AppLocker 8002: the agent resolves the TargetUser SID to a name on the host (MSTICAlertsWin1\\MSTICAdmin);"
        " the event itself carries only the SID, so Account/AccountType cannot be rebuilt from it",
        frozenset({8002}),
    ),
    Exception_(
        "otrf/Log4Shell_securityauditing_java_serialized_object.jsonl", AMA_ERA_ALWAYS_SET,
        "exported in 2022, before the table gained the AMA-era columns (added 2024); the row cannot carry them",
    ),
    Exception_(
        "azure-sentinel/asim_userManagement_subset.jsonl", AMA_ERA_ALWAYS_SET,
        "exported in 2023, before the table gained the AMA-era columns (added 2024); the row cannot carry them",
    ),
    Exception_(
        "azure-sentinel/asim_userManagement_subset.jsonl", ("EventData",),
        "portal CSV export writes EventData with LF line ends where the API returns CRLF (mapping doc 2b);"
        " compared with CRLF restored",
        action="lf",
    ),
    Exception_(
        "otrf/GoldenSAMLADFSMailAccess_WindowsEvents.jsonl", ("EventData",),
        "AD FS rows of a re-ingested copy: EventData was moved to EventData_dynamic/EventData_string",
        frozenset({412, 501}),
    ),
)


@dataclass
class GoldenResult:
    rows: Counter[str] = field(default_factory=Counter)
    compared: Counter[str] = field(default_factory=Counter)
    matched: Counter[str] = field(default_factory=Counter)
    matched_values: Counter[str] = field(default_factory=Counter)  # matched and not empty
    exceptions_used: Counter[Exception_] = field(default_factory=Counter)  # cells the exception covered
    skipped_differences: Counter[Exception_] = field(default_factory=Counter)  # of those, cells that differ
    mismatches: list[tuple[str, int, int, str, Any, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------- loading


def _csv_rows(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8", newline="") as fh:
        for record in csv.DictReader(fh):
            row: dict[str, Any] = {k: v for k, v in record.items() if k}
            row["EventID"] = int(row["EventID"])
            if row.get("LogonType"):
                row["LogonType"] = int(row["LogonType"])
            yield row


def golden_rows(file: str) -> Iterator[dict[str, Any]]:
    path = GOLDEN / file
    if file.endswith(".csv"):
        yield from _csv_rows(path)
        return
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def is_security_event(file: str, row: dict[str, Any]) -> bool:
    """Some exports mix in rows of other tables (Event, query output without Type or SourceSystem)."""
    if "EventID" not in row:
        return False
    if FILES[file] == "projection":
        return True
    return row.get("Type") == "SecurityEvent" or ("Type" not in row and "SourceSystem" in row)


def expected_row(file: str, row: dict[str, Any]) -> dict[str, Any]:
    """The row as the workspace holds it, with the file's documented transcription damage undone."""
    out = dict(row)
    # Re-ingested copy: guid/dynamic-typed columns came back renamed X_string (mapping doc 1).
    for key in list(out):
        if key.endswith("_string") and key[:-7] in COLUMN_TYPES:
            out[key[:-7]] = out.pop(key)
    # Excel turned "-\user" into "#NAME?"; the transcriber recorded the original value next to it.
    out.update(row.get("_likely_original") or {})
    return out


# ---------------------------------------------------------------------------------------------------- rebuilding

_MMA_SYSTEM = {  # Level column -> (System/Level, System/Keywords) of the event the legacy agent saw
    "8": (0, "0x8020000000000000"),
    "16": (0, "0x8010000000000000"),
    "4": (4, "0x8000000000000000"),
}


def flavour_of(row: dict[str, Any]) -> str:
    return "ama" if str(row.get("Level", "0")) == "0" else "mma"


def _system_values(row: dict[str, Any]) -> dict[str, Any]:
    level = str(row.get("Level", "0"))
    keywords: str | None
    if level in _MMA_SYSTEM:
        raw_level, keywords = _MMA_SYSTEM[level]
    else:
        raw_level, keywords = int(level), row.get("Keywords")
    user = row.get("SystemUserId")
    return {
        "provider_name": row.get("EventSourceName") or "Microsoft-Windows-Security-Auditing",
        "event_id": int(row["EventID"]),
        "version": row.get("Version"),
        "level": raw_level,
        "task": row.get("Task"),
        "opcode": int(row["Opcode"]) if row.get("Opcode") not in (None, "") else None,
        "keywords": keywords,
        "time_created": iso_to_ticks(row["TimeGenerated"]),
        "event_record_id": int(row["EventRecordId"]) if row.get("EventRecordId") not in (None, "") else None,
        "activity_id": row.get("Correlation") or None,
        "process_id": row.get("SystemProcessId"),
        "thread_id": row.get("SystemThreadId"),
        "channel": row.get("Channel") or "Security",
        "computer": row["Computer"],
        "user_id": user if user and user != "N/A" else None,
    }


def raw_event_from_xml(row: dict[str, Any], event_data_xml: str) -> dict[str, Any]:
    """Render a whole ``<Event>`` from the row's System values and its EventData/UserData XML, then parse it."""
    s = _system_values(row)

    def el(tag: str, value: Any) -> str:
        return "" if value is None else f"<{tag}>{escape(str(value))}</{tag}>"

    system = "".join([
        f"<Provider Name={quoteattr(s['provider_name'])}/>",
        el("EventID", s["event_id"]), el("Version", s["version"]), el("Level", s["level"]), el("Task", s["task"]),
        el("Opcode", s["opcode"]), el("Keywords", s["keywords"]),
        f"<TimeCreated SystemTime={quoteattr(row['TimeGenerated'])}/>",
        el("EventRecordID", s["event_record_id"]),
        f"<Correlation ActivityID={quoteattr(s['activity_id'])}/>" if s["activity_id"] else "<Correlation/>",
        (f"<Execution ProcessID=\"{s['process_id']}\" ThreadID=\"{s['thread_id']}\"/>"
         if s["process_id"] is not None else ""),
        el("Channel", s["channel"]), el("Computer", s["computer"]),
        f"<Security UserID={quoteattr(s['user_id'])}/>" if s["user_id"] else "<Security/>",
    ])
    xml = (f'<Event xmlns="http://schemas.microsoft.com/win/2004/08/events/event"><System>{system}</System>'
           f"{event_data_xml}</Event>")
    return parse_event_xml(xml, {"source_format": "xml", "agent_id": "", "read_time_us": 0})


def raw_event_from_columns(row: dict[str, Any]) -> dict[str, Any]:
    """The event of a row without XML: its EventData fields are the row's columns named after them."""
    items = []
    for name, value in row.items():
        if name not in DATA_COLUMNS or value in (None, ""):
            continue
        text = str(value)
        if name in GUID_DATA_COLUMNS:
            text = "{" + text.upper() + "}"  # as Windows writes GUIDs in event data
        items.append({"name": name, "value": text})
    event = _system_values(row)
    event.update(event_data=items, user_data_xml=None, provenance={"source_format": "sentinel-export",
                                                                     "agent_id": "", "read_time_us": 0})
    return event


# ---------------------------------------------------------------------------------------------------- comparing


def _empty(value: Any) -> bool:
    return value is None or value == ""


def _same(column: str, expected: Any, actual: Any) -> bool:
    if _empty(expected) or _empty(actual):
        return _empty(expected) and _empty(actual)
    kind = COLUMN_TYPES.get(column)
    if kind == "datetime":
        return bool(iso_to_ticks(str(expected)) == iso_to_ticks(str(actual)))
    if kind == "int":
        return int(expected) == int(actual)
    if column in GUID_DATA_COLUMNS:
        return str(expected).lower() == str(actual).lower()
    return str(expected) == str(actual)


def compare_file(file: str, result: GoldenResult,
                 normalise: Callable[..., dict[str, Any]] = normalize_event) -> None:
    mode = FILES[file]
    for line_no, source in enumerate(golden_rows(file), 1):
        if not is_security_event(file, source):
            continue
        expected = expected_row(file, source)
        event_id = int(expected["EventID"])
        xml = expected.get("EventData") or ""
        if xml:
            xml_for_event = xml.replace("\r\n", "\n").replace("\n", "\r\n")
            raw = raw_event_from_xml(expected, xml_for_event)
        else:
            raw = raw_event_from_columns(expected)
        actual = normalise(raw, flavour=flavour_of(expected))
        result.rows[file] += 1
        # A row cut short by its source (an issue excerpt) says nothing about the columns it lacks.
        full = mode == "full" and "_truncated" not in source
        columns = COLUMN_TYPES if full else [c for c in expected if c in COLUMN_TYPES]
        for column in columns:
            if column in NOT_FROM_EVENT:
                continue
            want, got = expected.get(column), actual.get(column)
            rule = next((e for e in EXCEPTIONS if e.applies(file, event_id, column)), None)
            if rule is not None:
                if rule.action == "skip":
                    result.exceptions_used[rule] += 1
                    if not _same(column, want, got):
                        result.skipped_differences[rule] += 1
                    continue
                if rule.action == "lf" and isinstance(want, str) and "\r\n" not in want and "\n" in want:
                    result.exceptions_used[rule] += 1
                    want = want.replace("\n", "\r\n")
            result.compared[file] += 1
            if _same(column, want, got):
                result.matched[file] += 1
                if not _empty(want):
                    result.matched_values[file] += 1
            else:
                result.mismatches.append((file, line_no, event_id, column, want, got))


def run_golden(normalise: Callable[..., dict[str, Any]] = normalize_event) -> GoldenResult:
    result = GoldenResult()
    for file in FILES:
        compare_file(file, result, normalise)
    return result


def mismatch_table(result: GoldenResult, limit: int = 80) -> str:
    lines = [f"{len(result.mismatches)} column mismatches", "file:line | EventID | column | expected | ours"]
    for file, line_no, event_id, column, want, got in result.mismatches[:limit]:
        lines.append(f"{file}:{line_no} | {event_id} | {column} | {want!r:.120} | {got!r:.120}")
    by_column = Counter((m[3], m[2]) for m in result.mismatches)
    lines.append("by (column, EventID): " + ", ".join(f"{c}/{e}: {n}" for (c, e), n in by_column.most_common()))
    return "\n".join(lines)


def summary(result: GoldenResult) -> str:
    lines = ["file | rows | cells compared | matched | matched non-empty"]
    for file in FILES:
        lines.append(f"{file} | {result.rows[file]} | {result.compared[file]} | {result.matched[file]}"
                     f" | {result.matched_values[file]}")
    lines.append("exceptions (cells covered / of which differ):")
    for rule in EXCEPTIONS:
        lines.append(f"  {result.exceptions_used[rule]:4d} / {result.skipped_differences[rule]:4d}  {rule.file}"
                     f" [{','.join(rule.columns)}]: {rule.reason}")
    return "\n".join(lines)
