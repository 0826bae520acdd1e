"""JSON event records (Winlogbeat 6/7/8, NXLog im_msvistalog, OTRF flat Windows JSON, Log Analytics export) -> RawEvent.

Each of these formats flattens or renames parts of the original event; what cannot be recovered stays null and is
listed per format in docs/producers.md. Values that the source carries are copied as they are; numbers that are
really EventData text (e.g. NXLog ``"LogonType": "2"``) stay text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson

from producers.adapters.event_xml import EVENT_NS, EventXmlError, blank_raw_event, int_or_none, parse_event_xml
from producers.timeutil import TICKS_PER_SECOND, TimeFormatError, iso_to_ticks

Mapper = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


class RecordFormatError(ValueError):
    """A JSON record that does not map to a RawEvent; the message says why (dead-letter reason)."""


# ---------------------------------------------------------------- shared helpers

_LEVEL_NAMES = {"critical": 1, "error": 2, "warning": 3, "information": 4, "verbose": 5}
_OPCODE_NAMES = {"info": 0, "start": 1, "stop": 2}
# Standard keyword bits, by the names Windows renders (Winlogbeat reports these names, not the mask).
_KEYWORD_BITS = {
    "response time": 0x0001000000000000,
    "wdi context": 0x0002000000000000,
    "wdi diag": 0x0004000000000000,
    "sqm": 0x0008000000000000,
    "audit failure": 0x0010000000000000,
    "audit success": 0x0020000000000000,
    "correlation hint": 0x0040000000000000,
    "classic": 0x0080000000000000,
}
# Bit 63 marks the Security channel in every Security event's Keywords (0x8020000000000000 = Audit Success).
_SECURITY_CHANNEL_BIT = 0x8000000000000000


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    return int_or_none(str(value))


def _text(value: Any) -> str | None:
    """EventData value as text: strings as they are, numbers as written, structures as compact JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


def keywords_hex(value: int) -> str:
    """A Keywords mask as Windows renders it: ``0x`` + lowercase hex, unsigned 64-bit (NXLog writes it signed)."""
    return f"0x{value & 0xFFFFFFFFFFFFFFFF:x}"


def keywords_from_names(names: list[str] | str | None, channel: str) -> str | None:
    if not names:
        return None
    if isinstance(names, str):
        names = [names]
    mask = 0
    for name in names:
        bit = _KEYWORD_BITS.get(str(name).strip().lower())
        if bit is None:
            return None  # a provider-defined keyword: its bit is not knowable from the name
        mask |= bit
    if channel.lower() == "security":
        mask |= _SECURITY_CHANNEL_BIT
    return keywords_hex(mask)


def _ticks(value: Any, what: str) -> int:
    if not isinstance(value, str):
        raise RecordFormatError(f"{what} missing or not a string")
    try:
        return iso_to_ticks(value)
    except TimeFormatError as exc:
        raise RecordFormatError(f"{what}: {exc}") from None


def _require_event_id(event: dict[str, Any], value: Any) -> None:
    event_id = _int(value)
    if event_id is None:
        raise RecordFormatError(f"EventID missing or not a number: {str(value)[:40]!r}")
    event["event_id"] = event_id


def _data_items(fields: dict[str, Any], skip: frozenset[str] | set[str] = frozenset()) -> list[dict[str, Any]]:
    return [{"name": k, "value": _text(v)} for k, v in fields.items() if k not in skip]


# ---------------------------------------------------------------- Winlogbeat

def from_winlogbeat(record: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    """Winlogbeat 6.x (flat: event_data, log_name, computer_name ...) or 7.x/8.x (nested under ``winlog``)."""
    winlog = record.get("winlog")
    if isinstance(winlog, dict):
        original = (record.get("event") or {}).get("original")
        if isinstance(original, str) and original.lstrip().startswith("<Event"):
            # include_xml: the rendered XML is the complete record.
            try:
                return parse_event_xml(original, provenance)
            except EventXmlError as exc:
                raise RecordFormatError(f"event.original: {exc}") from None
        return _winlogbeat_fields(record, winlog, provenance, nested=True)
    return _winlogbeat_fields(record, record, provenance, nested=False)


def _winlogbeat_fields(
    record: dict[str, Any], w: dict[str, Any], provenance: dict[str, Any], nested: bool
) -> dict[str, Any]:
    ev = blank_raw_event(provenance)
    _require_event_id(ev, w.get("event_id", (record.get("event") or {}).get("code")))
    ev["channel"] = str(w.get("channel" if nested else "log_name") or "")
    ev["computer"] = str(w.get("computer_name") or "")
    ev["provider_name"] = str(w.get("provider_name" if nested else "source_name") or "")
    ev["provider_guid"] = w.get("provider_guid")
    ev["event_record_id"] = _int(w.get("record_id" if nested else "record_number"))
    ev["version"] = _int(w.get("version"))
    ev["activity_id"] = w.get("activity_id")
    ev["related_activity_id"] = w.get("related_activity_id")
    if nested:
        process = w.get("process") or {}
        ev["process_id"] = _int(process.get("pid"))
        ev["thread_id"] = _int((process.get("thread") or {}).get("id"))
        level_name = (record.get("log") or {}).get("level")
    else:
        ev["process_id"] = _int(w.get("process_id"))
        ev["thread_id"] = _int(w.get("thread_id"))
        level_name = record.get("level")
    ev["level"] = _LEVEL_NAMES.get(str(level_name).lower()) if level_name else None
    ev["opcode"] = _OPCODE_NAMES.get(str(w.get("opcode") or "").lower())
    ev["keywords"] = keywords_from_names(w.get("keywords"), ev["channel"])
    user = w.get("user") if nested else record.get("user")
    if isinstance(user, dict):
        ev["user_id"] = user.get("identifier")
    ev["time_created"] = _ticks(record.get("@timestamp"), "@timestamp")
    event_data = w.get("event_data")
    if isinstance(event_data, dict):
        ev["event_data"] = _data_items(event_data)
    user_data = w.get("user_data")
    if isinstance(user_data, dict):
        ev["user_data_xml"] = winlogbeat_user_data_xml(user_data, ev["provider_name"])
    ev["rendered_message"] = record.get("message")
    return ev


# Winlogbeat keeps UserData as {child element: text, ..., "xml_name": root element}; the root's namespace is dropped.
# The providers' manifests fix it per provider (as every recorded EVTX rendering of their events shows).
_USER_DATA_NAMESPACES = {
    "microsoft-windows-eventlog": "http://manifests.microsoft.com/win/2004/08/windows/eventlog",
    "microsoft-windows-applocker": "http://schemas.microsoft.com/schemas/event/Microsoft.Windows/1.0.0.0",
    "microsoft-windows-printservice":
        "http://manifests.microsoft.com/win/2005/08/windows/printing/spooler/core/events",
    "microsoft-windows-restartmanager": "http://www.microsoft.com/2005/08/Windows/Reliability/RestartManager/",
}
_XML_NAME = re.compile(r"[A-Za-z_][\w.-]*\Z")


def _xml_text(text: str, quote: bool = False) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace('"', "&quot;") if quote else text


def winlogbeat_user_data_xml(user_data: dict[str, Any], provider: str) -> str:
    """Winlogbeat's ``user_data`` map back as the ``<UserData>`` element it was read from.

    Each key becomes a child element of the root named by ``xml_name`` (in the map's order: Winlogbeat does not
    keep the XML order); the root's namespace comes from the provider when known. A key that is not an XML name
    becomes ``<Data Name="key">``, and a structured value its compact JSON."""
    root = user_data.get("xml_name")
    root = root if isinstance(root, str) and _XML_NAME.match(root) else "EventXML"
    namespace = _USER_DATA_NAMESPACES.get(provider.lower())
    parts = [f'<UserData xmlns="{EVENT_NS}"><{root}', f' xmlns="{namespace}">' if namespace else ">"]
    for key, value in user_data.items():
        if key == "xml_name":
            continue
        text = _xml_text(_text(value) or "")
        if _XML_NAME.match(key):
            parts.append(f"<{key}>{text}</{key}>" if text else f"<{key}/>")
        else:
            parts.append(f'<Data Name="{_xml_text(key, quote=True)}">{text}</Data>')
    parts.append(f"</{root}></UserData>")
    return "".join(parts)


# ---------------------------------------------------------------- NXLog im_msvistalog

_NXLOG_SYSTEM = frozenset({
    "@timestamp", "@version", "port", "host", "tags", "type", "Severity", "SeverityValue", "EventTime",
    "EventReceivedTime", "ExecutionProcessID", "SourceModuleName", "SourceModuleType", "RecordNumber", "Task",
    "SourceName", "Channel", "EventID", "Keywords", "ThreadID", "Hostname", "EventType", "Message", "Opcode",
    "Category", "ProviderGuid", "Version", "OpcodeValue", "AccountName", "Domain", "UserID", "AccountType",
    "ActivityID", "RelatedActivityID", "Qualifiers", "Level", "ERROR_EVT_UNRESOLVED",
})
_NXLOG_TIME = "%Y-%m-%d %H:%M:%S"


def _nxlog_offset(record: dict[str, Any]) -> timedelta:
    """EventTime is the agent's local time. Its offset is recovered from EventReceivedTime (same clock, local)
    and Logstash's @timestamp (UTC, moments later), rounded to 15 minutes; UTC when either is missing."""
    received, stamp = record.get("EventReceivedTime"), record.get("@timestamp")
    if not isinstance(received, str) or not isinstance(stamp, str):
        return timedelta(0)
    try:
        local = datetime.strptime(received[:19], _NXLOG_TIME).replace(tzinfo=UTC)
        utc = datetime.fromtimestamp(iso_to_ticks(stamp) / TICKS_PER_SECOND, UTC)
    except (ValueError, TimeFormatError):
        return timedelta(0)
    quarter = round((local - utc).total_seconds() / 900)
    return timedelta(seconds=quarter * 900) if abs(quarter) <= 14 * 4 else timedelta(0)


def _flat_common(record: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    """The keys NXLog and the OTRF flat JSON share (both descend from the Windows event's own names)."""
    ev = blank_raw_event(provenance)
    _require_event_id(ev, record.get("EventID"))
    ev["channel"] = str(record.get("Channel") or "")
    ev["computer"] = str(record.get("Hostname") or "")
    ev["provider_name"] = str(record.get("SourceName") or "")
    ev["provider_guid"] = record.get("ProviderGuid")
    ev["version"] = _int(record.get("Version"))
    ev["task"] = _int(record.get("Task"))
    ev["level"] = _int(record.get("Level"))
    ev["rendered_message"] = record.get("Message")
    return ev


def from_nxlog(record: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    ev = _flat_common(record, provenance)
    ev["event_record_id"] = _int(record.get("RecordNumber"))
    ev["opcode"] = _int(record.get("OpcodeValue"))
    ev["qualifiers"] = _int(record.get("Qualifiers"))
    keywords = record.get("Keywords")
    if isinstance(keywords, int) and not isinstance(keywords, bool):
        ev["keywords"] = keywords_hex(keywords)
    elif isinstance(keywords, str):
        ev["keywords"] = keywords_hex(int(keywords)) if keywords.lstrip("-").isdigit() else keywords
    ev["process_id"] = _int(record.get("ExecutionProcessID"))
    ev["thread_id"] = _int(record.get("ThreadID"))
    ev["activity_id"] = record.get("ActivityID")
    ev["related_activity_id"] = record.get("RelatedActivityID")
    ev["user_id"] = record.get("UserID")
    event_time = record.get("EventTime")
    if not isinstance(event_time, str):
        raise RecordFormatError("EventTime missing")
    try:
        local = iso_to_ticks(event_time, default_tz=timezone(_nxlog_offset(record)))
    except TimeFormatError as exc:
        raise RecordFormatError(f"EventTime: {exc}") from None
    ev["time_created"] = local
    ev["event_data"] = _data_items(record, _NXLOG_SYSTEM)
    return ev


# ---------------------------------------------------------------- OTRF flat Windows JSON (Export-WinEvents)

_OTRF_SYSTEM = frozenset({
    "@timestamp", "TimeCreated", "Hostname", "Channel", "EventID", "Level", "Keywords", "Task", "Message",
    "SourceName", "ProviderGuid", "RecordNumber", "EventRecordID", "Opcode", "Version",
})


def from_otrf(record: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    ev = _flat_common(record, provenance)
    ev["opcode"] = _int(record.get("Opcode"))
    ev["event_record_id"] = _int(record.get("RecordNumber", record.get("EventRecordID")))
    keywords = record.get("Keywords")
    ev["keywords"] = keywords if isinstance(keywords, str) else (
        keywords_hex(keywords) if isinstance(keywords, int) else None)
    ev["time_created"] = _ticks(record.get("TimeCreated", record.get("@timestamp")), "TimeCreated")
    ev["event_data"] = _data_items(record, _OTRF_SYSTEM)
    return ev


# ---------------------------------------------------------------- Log Analytics SecurityEvent export rows

# Columns the workspace adds or derives; everything else in a row is an EventData field.
_SENTINEL_SYSTEM = frozenset({
    "TenantId", "SourceSystem", "TimeGenerated", "Computer", "EventID", "MG", "ManagementGroupName", "Type",
    "_ResourceId", "EventSourceName", "Channel", "Task", "Level", "Activity", "SourceComputerId", "EventOriginId",
    "TimeCollected", "Account", "AccountType", "SubjectAccount", "TargetAccount", "LogonTypeName", "Process",
    "EventData", "InstanceId", "HostCustomEntity", "AccountCustomEntity", "timestamp", "EventLevel",
    "EventLevelName", "RenderedDescription", "EventLog", "Source", "UserName", "EventCategory", "EventType",
})
_KUSTO_SUFFIXES = ("_string", "_dynamic", "_int", "_long", "_real", "_bool", "_datetime", "_guid")


def from_sentinel_export(record: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    ev = blank_raw_event(provenance)
    _require_event_id(ev, record.get("EventID"))
    ev["channel"] = str(record.get("Channel") or record.get("EventLog") or "")
    ev["computer"] = str(record.get("Computer") or "")
    ev["provider_name"] = str(record.get("EventSourceName") or record.get("Source") or "")
    ev["task"] = _int(record.get("Task"))
    ev["level"] = _int(record.get("Level", record.get("EventLevel")))
    ev["time_created"] = _ticks(record.get("TimeGenerated"), "TimeGenerated")
    ev["rendered_message"] = record.get("RenderedDescription")
    xml = record.get("EventData")
    if isinstance(xml, str) and xml.lstrip().startswith("<"):
        try:
            wrapped = parse_event_xml(
                "<Event><System><EventID>0</EventID><TimeCreated SystemTime='1970-01-01T00:00:00Z'/></System>"
                + xml + "</Event>", provenance)
        except EventXmlError as exc:
            raise RecordFormatError(f"EventData: {exc}") from None
        ev["event_data"] = wrapped["event_data"]
        return ev
    items: list[dict[str, Any]] = []
    for key, value in record.items():
        if key in _SENTINEL_SYSTEM:
            continue
        if key == "EventData_dynamic" and isinstance(value, str):
            try:
                values = orjson.loads(value)
            except orjson.JSONDecodeError:
                values = [value]
            items.extend({"name": None, "value": _text(v)} for v in (values if isinstance(values, list) else [values]))
            continue
        name = next((key.removesuffix(s) for s in _KUSTO_SUFFIXES if key.endswith(s)), key)
        items.append({"name": name, "value": _text(value)})
    ev["event_data"] = items
    return ev


# ---------------------------------------------------------------- detection

MAPPERS: dict[str, Mapper] = {
    "winlogbeat": from_winlogbeat,
    "nxlog": from_nxlog,
    "otrf": from_otrf,
    "sentinel-export": from_sentinel_export,
}


def detect_json_format(record: dict[str, Any]) -> str:
    """Which JSON dialect a record is in, by the keys only that dialect writes."""
    if isinstance(record.get("winlog"), dict) or "event_data" in record or "log_name" in record:
        return "winlogbeat"
    if "SourceModuleType" in record or "EventReceivedTime" in record or "EventTime" in record:
        return "nxlog"
    if "TimeGenerated" in record and "Computer" in record:
        return "sentinel-export"
    if "TimeCreated" in record and "EventID" in record:
        return "otrf"
    raise RecordFormatError("not a known Windows event JSON record (Winlogbeat, NXLog, OTRF, Log Analytics)")


def map_json_record(record: Any, provenance: dict[str, Any], fmt: str = "auto") -> dict[str, Any]:
    if not isinstance(record, dict):
        raise RecordFormatError(f"expected a JSON object, got {type(record).__name__}")
    name = detect_json_format(record) if fmt == "auto" else fmt
    mapper = MAPPERS.get(name)
    if mapper is None:
        raise RecordFormatError(f"unknown JSON format {fmt!r}")
    prov = provenance if provenance.get("source_format") == name else {**provenance, "source_format": name}
    try:
        event = mapper(record, prov)
    except (AttributeError, TypeError, KeyError) as exc:
        # A field of an unexpected JSON type (an object where a string belongs, ...): this record is malformed.
        raise RecordFormatError(f"unexpected value in a {name} record: {exc}") from None
    _check_field_types(event)
    return event


_TEXT_FIELDS = ("provider_name", "provider_guid", "event_source_name", "keywords", "activity_id",
                "related_activity_id", "channel", "computer", "user_id", "user_data_xml", "rendered_message")
_INT_FIELDS = ("qualifiers", "version", "level", "task", "opcode", "event_record_id", "process_id", "thread_id")


def _check_field_types(event: dict[str, Any]) -> None:
    """One check for every format: JSON sources can put any type anywhere, the RawEvent schema cannot take it."""
    for name in _TEXT_FIELDS:
        value = event.get(name)
        if value is not None and not isinstance(value, str):
            raise RecordFormatError(f"{name} is a JSON {type(value).__name__}, not a string")
    for name in _INT_FIELDS:
        value = event.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise RecordFormatError(f"{name} is a JSON {type(value).__name__}, not an integer")
