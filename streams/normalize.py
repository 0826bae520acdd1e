"""RawEvent -> SecurityEvent row, the way the Microsoft agents write the Log Analytics ``SecurityEvent`` table.

Pure functions, no I/O. The rules (docs/normalization.md) come from real rows the agents wrote
(``securityevent-golden``): values verbatim, the Activity text from the agent's catalog, EventData fields copied to
the columns of the same name, a few derived columns (Account, AccountType, SubjectAccount, TargetAccount, Process,
LogonTypeName), and the ``EventData`` XML kept or emptied per EventID as each agent does.

Everything that depends only on the EventID is worked out once per (flavour, EventID) into a :class:`_Plan`, and
everything that depends only on the list of EventData field names (which position fills which column, the XML
template, which derived columns can apply) once per distinct list into a :class:`_Layout`. The per-event work is
then one straight pass: fields copied by position, the XML one %-format, times from per-second caches. No regular
expression and no XML parsing on the hot path (only events with UserData, AppLocker and 1102, parse their UserData;
guid columns still run their pattern).

A row is a dict keyed by column name holding only non-empty values: an absent key means "empty" (string -> "",
int/datetime -> null), as the SecurityEvent Avro schema and the sink expect.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import repeat
from operator import itemgetter, not_
from typing import Any, Literal

from lxml import etree

from schemas.catalog import DATA_DIR, activity
from schemas.event_data import DataItem, pairs
from schemas.native import optional_extension, switched_on
from streams.identity import EVENT_IDENTITY_NAMESPACE, content_fingerprint, event_origin_id

Flavour = Literal["ama", "mma"]
FLAVOURS: tuple[str, ...] = ("ama", "mma")

EVENT_NS = "http://schemas.microsoft.com/win/2004/08/events/event"
SOURCE_SYSTEM = "OpsManager"

# ----------------------------------------------------------------------------------------------- column catalog


def _column_records() -> list[dict[str, Any]]:
    return list(json.loads((DATA_DIR / "securityevent_columns.json").read_text(encoding="utf-8")))


_RECORDS = _column_records()
_COLUMN_TYPE = {str(c["name"]): str(c.get("workspace_type") or c["type"]) for c in _RECORDS}

# Columns the normaliser fills from System, the agent or derivation rules: an EventData field of the same name
# (there are none in the Windows manifests, but input is untrusted) must never overwrite them.
SYSTEM_COLUMNS = frozenset({
    "TenantId", "TimeGenerated", "SourceSystem", "Account", "AccountType", "Computer", "EventSourceName", "Channel",
    "Task", "Level", "EventData", "EventID", "Activity", "PartitionKey", "RowKey", "StorageAccount",
    "AzureDeploymentID", "AzureTableName", "SubjectAccount", "TargetAccount", "Process", "LogonTypeName",
    "SourceComputerId", "EventLevelName", "EventOriginId", "MG", "TimeCollected", "ManagementGroupName",
    "SystemUserId", "Version", "Opcode", "Keywords", "Correlation", "SystemProcessId", "SystemThreadId",
    "EventRecordId", "Type",
})
DATA_COLUMNS = frozenset(
    name for name in _COLUMN_TYPE if name not in SYSTEM_COLUMNS and not name.startswith("_")
)
INT_DATA_COLUMNS = frozenset(name for name in DATA_COLUMNS if _COLUMN_TYPE[name] == "int")
GUID_DATA_COLUMNS = frozenset(name for name in DATA_COLUMNS if _COLUMN_TYPE[name] == "guid")

# ------------------------------------------------------------------------------------ per-EventID agent behaviour
# Evidence: docs/normalization.md, "EventData kept or emptied". Each set names the golden rows it comes from.

# EventData emptied: every field is in a column. Seen for both agents unless noted.
_EMPTY_BOTH = frozenset({
    4624,  # MMA: misc/api 2023, otrf/GoldenSAML; AMA: azure-sentinel/asim_authentication 2024
    4625,  # AMA: asim_authentication; Azure-Sentinel issue #12238
    4648,  # MMA: msticpy/all_events_df
    4672,  # MMA: msticpy/all_events_df
    4688,  # AMA: otrf/Log4Shell (row without EventData); MMA: msticpy projections carry every field in columns
})
EVENT_DATA_EMPTIED: dict[str, frozenset[int]] = {
    # 4767: AMA, asim_userManagement. 4662: MMA only seen; assumed the same for AMA (the columns hold every field).
    "ama": _EMPTY_BOTH | {4767, 4662},
    # 4662: MMA, otrf/GoldenSAML. 4767: AMA only seen; assumed the same for MMA.
    "mma": _EMPTY_BOTH | {4662, 4767},
}

# Not parsed: EventData kept and no column filled, not even Account.
_UNPARSED_BOTH = frozenset({
    4656, 5156, 5158,  # AMA: otrf/Log4Shell
    4744, 4748, 4749, 4753, 4759, 4763,  # AMA: asim_userManagement ("security-disabled" groups) + upstream CSV
    5058, 5061,  # MMA: msticpy/all_events_df
    4627, 4703,  # Azure-Sentinel issue #12585 (with 5158, 4656, 5058)
})
EVENT_DATA_UNPARSED: dict[str, frozenset[int]] = {"ama": _UNPARSED_BOTH, "mma": _UNPARSED_BOTH}

# Account is the Target account for these; for 4776 it stays empty although TargetUserName is set.
TARGET_ACCOUNT_IDS = frozenset({4624, 4625, 4740})
NO_ACCOUNT_IDS = frozenset({4776})
# 4740 has an Account but AccountType "" (asim_userManagement).
NO_ACCOUNT_TYPE_IDS = frozenset({4740})

# AppLocker rows fill only these columns from UserData (8002 leaves TargetLogonId empty, msticpy/all_events_df);
# Account would be the TargetUser SID resolved on the host, which cannot be done from the event alone.
APPLOCKER_IDS = frozenset({8001, 8002, 8003, 8004, 8005, 8006, 8007})
APPLOCKER_COLUMNS = frozenset({"FilePath", "FileHash", "Fqbn", "TargetUser"})

LOGON_TYPE_NAMES = {
    2: "Interactive", 3: "Network", 4: "Batch", 5: "Service", 7: "Unlock", 8: "NetworkCleartext",
    9: "NewCredentials", 10: "RemoteInteractive", 11: "CachedInteractive", 12: "CachedRemoteInteractive",
    13: "CachedUnlock",
}
_LOGON_TYPE_NAME = {n: f"{n} - {name}" for n, name in LOGON_TYPE_NAMES.items()}

# Well-known SIDs of the machine's own service accounts (SYSTEM, LOCAL SERVICE, NETWORK SERVICE).
MACHINE_SIDS = frozenset({"S-1-5-18", "S-1-5-19", "S-1-5-20"})
MACHINE_ACCOUNT_NAMES = frozenset({"SYSTEM", "LOCAL SERVICE", "NETWORK SERVICE"})

# (RawEvent field, column) copied as they are for AMA only: text fields when non-empty, int fields when not null
# (0 is a value). Computer, EventSourceName, Channel and Task are copied the same way for both agents.
AMA_TEXT = (("keywords", "Keywords"), ("activity_id", "Correlation"))
AMA_INTS = (("version", "Version"), ("process_id", "SystemProcessId"), ("thread_id", "SystemThreadId"))

EVENT_LEVEL_NAMES = {0: "LogAlways", 1: "Critical", 2: "Error", 3: "Warning", 4: "Informational", 5: "Verbose"}

# The legacy agent writes the classic event type as Level: audit success 8, audit failure 16, else from the level.
KEYWORD_AUDIT_SUCCESS = 0x0020000000000000
KEYWORD_AUDIT_FAILURE = 0x0010000000000000
MMA_LEVEL_AUDIT_SUCCESS = "8"
MMA_LEVEL_AUDIT_FAILURE = "16"
MMA_LEVEL_BY_LEVEL = {0: "4", 1: "1", 2: "1", 3: "2", 4: "4", 5: "4"}
_LEVEL_TEXT = {n: str(n) for n in range(256)}


@dataclass(frozen=True, slots=True)
class NormalizeContext:
    """What a row needs beyond the event: per-deployment constants the agent would add.

    ``management_group_name`` is ``"AOI-<workspace id>"`` for direct agents and ``mg`` the management group id
    (``00000000-0000-0000-0000-000000000001``); empty means not set. ``TimeCollected`` is taken from the event's
    ``provenance.read_time_us`` and ``SourceComputerId`` from ``provenance.agent_id`` when that is a GUID.
    """

    management_group_name: str = ""
    mg: str = ""


DEFAULT_CONTEXT = NormalizeContext()


class NormalizeError(ValueError):
    """An event that cannot become a row; the message is the dead-letter reason."""


@dataclass(frozen=True, slots=True)
class _Plan:
    activity: str
    parse: bool  # copy EventData fields into columns, derive Account & co.
    keep_event_data: bool
    account: Literal["auto", "target", "none"]
    account_type: bool
    userdata_columns: frozenset[str] | None  # None = every leaf named like a column


def _make_plan(flavour: str, event_id: int) -> _Plan:
    parse = event_id not in EVENT_DATA_UNPARSED[flavour]
    if event_id in APPLOCKER_IDS:
        account: Literal["auto", "target", "none"] = "none"
    elif event_id in NO_ACCOUNT_IDS:
        account = "none"
    elif event_id in TARGET_ACCOUNT_IDS:
        account = "target"
    else:
        account = "auto"
    return _Plan(
        activity=activity(event_id),
        parse=parse,
        keep_event_data=not (parse and event_id in EVENT_DATA_EMPTIED[flavour]),
        account=account,
        account_type=event_id not in NO_ACCOUNT_TYPE_IDS,
        userdata_columns=APPLOCKER_COLUMNS if event_id in APPLOCKER_IDS else None,
    )


_PLANS: dict[str, dict[int, _Plan]] = {flavour: {} for flavour in FLAVOURS}


def _plans(flavour: str) -> dict[int, _Plan]:
    plans = _PLANS.get(flavour)
    if plans is None:
        raise ValueError(f"unknown agent flavour {flavour!r}; expected one of {', '.join(FLAVOURS)}")
    return plans


def plan_for(flavour: str, event_id: int) -> _Plan:
    plans = _plans(flavour)
    plan = plans.get(event_id)
    if plan is None:
        plan = _make_plan(flavour, event_id)
        if len(plans) < 70_000:  # EventIDs are 16-bit; untrusted input must not grow the cache without bound
            plans[event_id] = plan
    return plan


def event_data_policy(flavour: str, event_id: int) -> str:
    """"emptied", "kept" (fields also in columns) or "unparsed" (kept, no column filled), for docs and tests."""
    plan = plan_for(flavour, event_id)
    if not plan.parse:
        return "unparsed"
    return "kept" if plan.keep_event_data else "emptied"


# ------------------------------------------------------------------------------------------------- times

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TICKS_PER_SECOND = 10_000_000
SECONDS_PER_DAY = 86_400
# "HH:MM:" for each minute of the day and "SS" for each second: a time of day is two tuple look-ups, no strftime.
_HOUR_MINUTE = tuple(f"{m // 60:02d}:{m % 60:02d}:" for m in range(24 * 60))
_SECOND = tuple(f"{s:02d}" for s in range(60))


class _SecondCache:
    """``YYYY-MM-DDTHH:MM:SS`` per whole second (events of a batch share few seconds), the date per day, and the
    last full value (every event of a batch has the same read time). Each memo is one tuple, replaced in one
    assignment, so threads sharing the cache never see a key with another key's value."""

    __slots__ = ("_day", "_last", "_second")

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1 << 62, "")
        self._last: tuple[int, str] = (-1 << 62, "")
        self._day: tuple[int, str] = (-1 << 62, "")

    def iso(self, ticks: int) -> str:
        last = self._last
        if last[0] == ticks:
            return last[1]
        second, fraction = divmod(ticks, TICKS_PER_SECOND)
        cached = self._second
        if cached[0] == second:
            prefix = cached[1]
        else:
            day, second_of_day = divmod(second, SECONDS_PER_DAY)
            known = self._day
            if known[0] == day:
                date = known[1]
            else:
                # Raises OverflowError outside datetime's years 1..9999, as the full conversion would.
                date = f"{_EPOCH + timedelta(days=day):%Y-%m-%dT}"
                self._day = (day, date)
            minute, sec = divmod(second_of_day, 60)
            prefix = f"{date}{_HOUR_MINUTE[minute]}{_SECOND[sec]}"
            self._second = (second, prefix)
        text = f"{prefix}.{fraction:07d}Z"
        self._last = (ticks, text)
        return text


_TIME_GENERATED = _SecondCache()
_TIME_COLLECTED = _SecondCache()


def ticks_to_iso(ticks: int) -> str:
    """100 ns ticks since the Unix epoch -> ``2023-04-10T07:47:01.9710164Z``."""
    return _TIME_GENERATED.iso(ticks)


# ------------------------------------------------------------------------------------------------- values

_GUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
# GUID text -> column value (None: not a GUID). Agent ids and most GUID fields (LogonGuid is often all zeros) repeat.
_guid_cache: dict[str, str | None] = {}


def parse_int(value: str) -> int | None:
    """Decimal or ``0x`` hex, as Windows writes numbers; None for anything else (the caller keeps the text)."""
    # The prefix picks the base first: logon ids are hex, and a failed int() (an exception) costs more than the rest.
    try:
        return int(value, 16) if value[:2] in ("0x", "0X") else int(value)
    except ValueError:
        return None


def strip_guid(value: str) -> str | None:
    """``{xxxxxxxx-...}`` -> ``xxxxxxxx-...``; None when it is not a GUID (a guid column cannot hold it)."""
    if value[:1] == "{" and value[-1:] == "}":
        value = value[1:-1]
    return value if _GUID.fullmatch(value) else None


def _cached_guid(value: str) -> str | None:
    cached = _guid_cache.get(value, "")
    if cached == "":
        cached = strip_guid(value)
        if len(_guid_cache) < 50_000:  # bounded: per-logon GUIDs are unique
            _guid_cache[value] = cached
    return cached


def _escape_text(value: str) -> str:
    if "&" in value or "<" in value or ">" in value:
        return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return value


def _escape_attr(value: str) -> str:
    return _escape_text(value).replace('"', "&quot;")


# ------------------------------------------------------------------------------------------------- EventData XML
# The agents write the element pretty-printed: one child per line, two spaces per level, CRLF, the element's
# namespace declared on it. Text is escaped like XML text (&, <, >); quotes and apostrophes stay as they are.

_CRLF = "\r\n"
EVENT_DATA_OPEN = f'<EventData xmlns="{EVENT_NS}">{_CRLF}'
EVENT_DATA_CLOSE = "</EventData>"
_DATA_CLOSE = f"</Data>{_CRLF}"
_data_heads: dict[str | None, tuple[str, str]] = {}


def _data_head(name: str | None) -> tuple[str, str]:
    """(opening tag, empty-element form) of a ``<Data>`` line, cached per field name."""
    heads = _data_heads.get(name)
    if heads is None:
        if name is None:
            heads = ("  <Data>", f"  <Data />{_CRLF}")
        else:
            escaped = _escape_attr(name)
            heads = (f'  <Data Name="{escaped}">', f'  <Data Name="{escaped}" />{_CRLF}')
        if len(_data_heads) < 100_000:
            _data_heads[name] = heads
    return heads


def event_data_xml(items: Sequence[DataItem]) -> str:
    """The ``EventData`` column for an event's ``event_data`` list."""
    parts = [EVENT_DATA_OPEN]
    append = parts.append
    heads = _data_heads
    for name, value in pairs(items):
        head_empty = heads.get(name) or _data_head(name)
        if not value:
            append(head_empty[1])
        elif "&" in value or "<" in value or ">" in value:
            append(f"{head_empty[0]}{_escape_text(value)}{_DATA_CLOSE}")
        else:
            append(f"{head_empty[0]}{value}{_DATA_CLOSE}")
    append(EVENT_DATA_CLOSE)
    return "".join(parts)


_USERDATA_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def _split_tag(tag: str) -> tuple[str | None, str]:
    if tag[:1] == "{":
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return None, tag


def _write_element(el: etree._Element, depth: int, parent_ns: str | None, out: list[str],
                   leaves: list[tuple[str, str]]) -> None:
    ns, local = _split_tag(el.tag)
    indent = "  " * depth
    attrs = "".join(f' {_split_tag(k)[1]}="{_escape_attr(v)}"' for k, v in el.attrib.items())
    if depth == 0:
        ns_decl, ns = f' xmlns="{EVENT_NS}"', EVENT_NS
    else:
        ns_decl = f' xmlns="{ns}"' if ns is not None and ns != parent_ns else ""
        ns = ns if ns is not None else parent_ns
    children = [c for c in el if isinstance(c.tag, str)]
    if children:
        out.append(f"{indent}<{local}{ns_decl}{attrs}>{_CRLF}")
        for child in children:
            _write_element(child, depth + 1, ns, out, leaves)
        out.append(f"{indent}</{local}>{_CRLF}")
        return
    text = el.text or ""
    leaves.append((local, text))
    if text:
        out.append(f"{indent}<{local}{ns_decl}{attrs}>{_escape_text(text)}</{local}>{_CRLF}")
    else:
        out.append(f"{indent}<{local}{ns_decl}{attrs} />{_CRLF}")


def user_data_xml(raw_xml: str) -> tuple[str, list[tuple[str, str]]]:
    """Raw ``<UserData>`` XML -> (the agents' pretty-printed form, the (name, text) of its leaf elements).

    Raises NormalizeError when the XML is not readable.
    """
    try:
        root = etree.fromstring(raw_xml.encode("utf-8"), _USERDATA_PARSER)
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise NormalizeError(f"UserData is not well-formed XML: {exc}") from None
    if root.getroottree().docinfo.internalDTD is not None:
        raise NormalizeError("UserData must not contain a DOCTYPE")
    out: list[str] = []
    leaves: list[tuple[str, str]] = []
    _write_element(root, 0, None, out, leaves)
    return "".join(out).removesuffix(_CRLF), leaves


# ------------------------------------------------------------------------------------------------- derivations


def _join_account(domain: str | None, user: str | None) -> str | None:
    if user and domain:
        return f"{domain}\\{user}"
    return user or domain or None


# Which inputs of the derived columns an event can have: (subject names, target names, process path, LogonType).
DeriveInputs = tuple[bool, bool, bool, bool]
ALL_DERIVE_INPUTS: DeriveInputs = (True, True, True, True)
_SUBJECT_FIELDS = frozenset({"SubjectUserName", "SubjectDomainName"})
_TARGET_FIELDS = frozenset({"TargetUserName", "TargetDomainName"})
_PROCESS_FIELDS = frozenset({"NewProcessName", "ProcessName", "FilePath"})


def derive_inputs(names: Iterable[str | None]) -> DeriveInputs:
    present = set(names)
    return (not _SUBJECT_FIELDS.isdisjoint(present), not _TARGET_FIELDS.isdisjoint(present),
            not _PROCESS_FIELDS.isdisjoint(present), "LogonType" in present)


def _derive(row: dict[str, Any], plan: _Plan, inputs: DeriveInputs = ALL_DERIVE_INPUTS) -> None:
    # ``inputs`` (from the event's layout) skips the look-ups of columns the event cannot have.
    has_subject, has_target, has_process, has_logon_type = inputs
    get = row.get
    subject = subject_user = target = target_user = None
    if has_subject:
        subject_user = get("SubjectUserName")
        subject = _join_account(get("SubjectDomainName"), subject_user)
        if subject:
            row["SubjectAccount"] = subject
    if has_target:
        target_user = get("TargetUserName")
        target = _join_account(get("TargetDomainName"), target_user)
        if target:
            row["TargetAccount"] = target

    mode = plan.account
    if mode == "target":
        if target:
            row["Account"] = target
            if plan.account_type:
                row["AccountType"] = _account_type(target_user, get("TargetUserSid"))
    elif mode == "auto":
        if subject_user:
            row["Account"] = subject
            if plan.account_type:
                row["AccountType"] = _account_type(subject_user, get("SubjectUserSid"))
        elif target_user:
            row["Account"] = target
            if plan.account_type:
                row["AccountType"] = _account_type(target_user, get("TargetUserSid") or get("TargetSid"))

    if has_process:
        path = get("NewProcessName") or get("ProcessName") or get("FilePath")
        if path:
            row["Process"] = path.rpartition("\\")[2]

    if has_logon_type:
        name = _LOGON_TYPE_NAME.get(get("LogonType"))  # type: ignore[arg-type]
        if name:
            row["LogonTypeName"] = name


def _account_type(user: str | None, sid: str | None) -> str:
    if (user and user[-1] == "$") or sid in MACHINE_SIDS or user in MACHINE_ACCOUNT_NAMES:
        return "Machine"
    return "User"


_PLAIN, _INT, _GUID_KIND = 0, 1, 2
# Field name -> how its value goes into the column of the same name (one dict look-up per field on the hot path).
_DATA_COLUMN_KIND: dict[str, int] = {
    name: _INT if name in INT_DATA_COLUMNS else _GUID_KIND if name in GUID_DATA_COLUMNS else _PLAIN
    for name in DATA_COLUMNS
}


def _set_typed(row: dict[str, Any], name: str, value: str, kind: int) -> bool:
    """Store an int or guid column; False (nothing stored) when the text is not of that type."""
    typed = parse_int(value) if kind == _INT else _cached_guid(value)
    if typed is None:
        return False
    row[name] = typed
    return True


def _copy_event_data(row: dict[str, Any], items: Iterable[tuple[Any, Any]]) -> bool:
    """Copy EventData fields named like a column (first occurrence wins). False when a value could not be typed."""
    typed_ok = True
    kinds = _DATA_COLUMN_KIND
    for name, value in items:
        kind = kinds.get(name)
        if kind is None:
            continue
        if not value or name in row:
            continue
        if kind == _PLAIN:
            row[name] = value
        elif not _set_typed(row, name, value, kind):
            typed_ok = False
    return typed_ok


def _copy_leaves(row: dict[str, Any], leaves: Iterable[tuple[str, str]], allowed: frozenset[str]) -> bool:
    """UserData leaves named like an allowed column, typed like EventData fields."""
    typed_ok = True
    for name, value in leaves:
        if name not in allowed or not value or name in row:
            continue
        kind = _DATA_COLUMN_KIND.get(name, _PLAIN)
        if kind == _PLAIN:
            row[name] = value
        elif not _set_typed(row, name, value, kind):
            typed_ok = False
    return typed_ok


# ------------------------------------------------------------------------------------------------- field layouts
# Events of one kind carry the same EventData field names in the same order. What depends only on that list of
# names (which positions fill which column, and how; the <Data> tags) is worked out once per distinct list, so an
# event's fields are copied by position with no per-field look-up.

_NAME = itemgetter(0)  # of a (name, value) pair
_VALUE = itemgetter(1)


@dataclass(frozen=True, slots=True)
class _Layout:
    plain: tuple[tuple[int, str], ...]  # (position, column) of text columns
    typed: tuple[tuple[int, str, int], ...]  # (position, column, kind) of int and guid columns
    heads: tuple[tuple[str, str], ...]  # per field: (opening tag, empty-element form) of its <Data> line
    by_position: bool  # no column name occurs twice (else the generic copy applies "first non-empty value wins")
    derive: DeriveInputs
    # The EventData XML as a %-template per pattern of empty values (True = empty), built when first seen.
    templates: dict[tuple[bool, ...], str]

    def template(self, empty: tuple[bool, ...]) -> str:
        template = self.templates.get(empty)
        if template is None:
            lines = [head[1].replace('%', '%%') if is_empty else f"{head[0].replace('%', '%%')}%s{_DATA_CLOSE}"
                     for head, is_empty in zip(self.heads, empty, strict=True)]
            template = f"{EVENT_DATA_OPEN}{''.join(lines)}{EVENT_DATA_CLOSE}"
            if len(self.templates) < 64:
                self.templates[empty] = template
        return template


_LAYOUTS: dict[tuple[str | None, ...], _Layout] = {}


def _layout(names: tuple[str | None, ...]) -> _Layout:
    layout = _LAYOUTS.get(names)
    if layout is None:
        kinds = [(position, name, _DATA_COLUMN_KIND.get(name)) for position, name in enumerate(names)]  # type: ignore[arg-type]
        # Interned column names: the Avro encoder finds interned keys by identity.
        columns = [(position, sys.intern(str(name)), kind) for position, name, kind in kinds if kind is not None]
        layout = _Layout(
            plain=tuple((position, name) for position, name, kind in columns if kind == _PLAIN),
            typed=tuple((position, name, kind) for position, name, kind in columns if kind != _PLAIN),
            heads=tuple(_data_head(name) for name in names),
            by_position=len({name for _, name, _ in columns}) == len(columns),
            derive=derive_inputs(names),
            templates={},
        )
        if len(_LAYOUTS) < 10_000:  # untrusted input must not grow the cache without bound
            _LAYOUTS[names] = layout
    return layout


def _copy_by_position(row: dict[str, Any], values: list[Any], layout: _Layout) -> bool:
    """``_copy_event_data`` for a layout without repeated column names. False when a value could not be typed."""
    for position, column in layout.plain:
        value = values[position]
        if value:
            row[column] = value
    typed_ok = True
    for position, column, kind in layout.typed:
        value = values[position]
        if value and not _set_typed(row, column, value, kind):
            typed_ok = False
    return typed_ok


def _layout_xml(values: list[Any], layout: _Layout, items: Sequence[tuple[Any, Any]]) -> str:
    """``event_data_xml(items)`` from the layout's template: one %-format and one test for characters to escape."""
    present = tuple(filter(None, values))
    text = "".join(present)
    if "&" in text or "<" in text or ">" in text:
        return event_data_xml(items)
    if len(present) == len(values):
        return layout.template(_NONE_EMPTY.get(len(values)) or (False,) * len(values)) % present
    return layout.template(tuple(map(_is_empty, values))) % present


_NONE_EMPTY = {n: (False,) * n for n in range(256)}
_is_empty = not_


# ------------------------------------------------------------------------------------------------- entry points


def _mma_level(level: int | None, keywords: str | None) -> str:
    keyword_bits = _keywords_int(keywords)
    if keyword_bits & KEYWORD_AUDIT_SUCCESS:
        return MMA_LEVEL_AUDIT_SUCCESS
    if keyword_bits & KEYWORD_AUDIT_FAILURE:
        return MMA_LEVEL_AUDIT_FAILURE
    return MMA_LEVEL_BY_LEVEL.get(level if level is not None else 0, "4")


_keywords_cache: dict[str, int] = {}


def _keywords_int(keywords: str | None) -> int:
    if not keywords:
        return 0
    value = _keywords_cache.get(keywords)
    if value is None:
        parsed = parse_int(keywords.strip())
        value = parsed if parsed is not None else 0
        if len(_keywords_cache) < 10_000:
            _keywords_cache[keywords] = value
    return value


def normalize_event(
    raw_event: Mapping[str, Any], *, flavour: str = "ama", context: NormalizeContext = DEFAULT_CONTEXT,
    native: bool | None = None,
) -> dict[str, Any]:
    """One RawEvent dict -> one SecurityEvent row (only non-empty columns). Raises NormalizeError.

    ``native``: None uses the C extension when it is built and enabled (:func:`native_enabled`), False the Python
    code, True requires the extension. Both give the same rows.
    """
    plans = _plans(flavour)
    if _use_native(native, context):
        row = _native_rows([raw_event], flavour, context, None)[0][0]
        if row is not None:
            return row
    return _normalize(raw_event, plans, flavour, context)


def _normalize(raw_event: Mapping[str, Any], plans: dict[int, _Plan], flavour: str,
               context: NormalizeContext, origin_id: str | None = None) -> dict[str, Any]:
    event_id = raw_event.get("event_id")
    ticks = raw_event.get("time_created")
    if type(event_id) is not int or type(ticks) is not int:
        raise NormalizeError("event has no event_id or time_created" if event_id is None or ticks is None
                             else "event_id and time_created must be integers")
    plan = plans.get(event_id) or plan_for(flavour, event_id)
    try:
        return _row(raw_event, event_id, ticks, plan, flavour == "ama", context, origin_id)
    except KeyError as exc:
        raise NormalizeError(f"event has no {exc.args[0]!r} field") from None


def _copy_verbatim(row: dict[str, Any], raw_event: Mapping[str, Any], texts: tuple[tuple[str, str], ...],
                   ints: tuple[tuple[str, str], ...]) -> None:
    for field, column in texts:
        value = raw_event[field]
        if value:
            row[column] = value
    for field, column in ints:
        value = raw_event[field]
        if value is not None:
            row[column] = value


def _row(raw_event: Mapping[str, Any], event_id: int, ticks: int, plan: _Plan, ama: bool,
         context: NormalizeContext, origin_id: str | None) -> dict[str, Any]:
    # One straight pass with the fewest dict operations: this runs for every event. RawEvent dicts carry every
    # field of the Avro schema, so fields are indexed, not .get()-ed.
    row: dict[str, Any] = {
        "TimeGenerated": _TIME_GENERATED.iso(ticks),
        "SourceSystem": SOURCE_SYSTEM,
        "EventID": event_id,
        "Activity": plan.activity,
        "EventOriginId": origin_id or event_origin_id(raw_event),
    }
    # The System fields of both flavours, unrolled (this runs for every event); AMA's go through _copy_verbatim.
    value = raw_event["computer"]
    if value:
        row["Computer"] = value
    value = raw_event["provider_name"]
    if value:
        row["EventSourceName"] = value
    value = raw_event["channel"]
    if value:
        row["Channel"] = value
    value = raw_event["task"]
    if value is not None:
        row["Task"] = value
    level = raw_event["level"]
    if not ama:
        row["Level"] = _mma_level(level, raw_event["keywords"])
    elif level is not None:
        row["Level"] = _LEVEL_TEXT.get(level) or str(level)

    items = pairs(raw_event["event_data"])
    user_data = raw_event["user_data_xml"]
    # UserData (AppLocker, 1102) is the only part that needs an XML parse; events with it are rare.
    user_xml, leaves = user_data_xml(user_data) if user_data and not items else (None, [])
    values: list[Any] = []
    layout = None
    if items:
        values = list(map(_VALUE, items))
        layout = _layout(tuple(map(_NAME, items)))
    keep = plan.keep_event_data
    if plan.parse:
        typed_ok = True
        if layout is not None:
            typed_ok = (_copy_by_position(row, values, layout) if layout.by_position
                        else _copy_event_data(row, items))
        if leaves:
            typed_ok = _copy_leaves(row, leaves, plan.userdata_columns or DATA_COLUMNS) and typed_ok
        _derive(row, plan, layout.derive if layout is not None and not leaves else ALL_DERIVE_INPUTS)
        # A value a typed column cannot hold is not dropped: EventData keeps it even where it is normally emptied.
        keep = keep or not typed_ok
    if keep:
        if layout is not None:
            row["EventData"] = _layout_xml(values, layout, items)
        elif user_xml:
            row["EventData"] = user_xml

    if ama:
        _copy_verbatim(row, raw_event, AMA_TEXT, AMA_INTS)
        if level is not None:
            level_name = EVENT_LEVEL_NAMES.get(level)
            if level_name:
                row["EventLevelName"] = level_name
        value = raw_event["opcode"]
        if value is not None:
            row["Opcode"] = _LEVEL_TEXT.get(value) or str(value)
        value = raw_event["event_record_id"]
        if value is not None:
            row["EventRecordId"] = str(value)
        row["SystemUserId"] = raw_event["user_id"] or "N/A"

    if context.mg:
        row["MG"] = context.mg
    if context.management_group_name:
        row["ManagementGroupName"] = context.management_group_name
    provenance = raw_event["provenance"]
    if provenance:
        read_time_us = provenance.get("read_time_us")
        if read_time_us:
            row["TimeCollected"] = _TIME_COLLECTED.iso(read_time_us * 10)
        agent_id = provenance.get("agent_id")
        if agent_id:
            guid = _cached_guid(agent_id)
            if guid:
                row["SourceComputerId"] = guid
    return row


def normalize_batch(
    raw_events: Iterable[Mapping[str, Any]],
    *,
    flavour: str = "ama",
    context: NormalizeContext = DEFAULT_CONTEXT,
    origin_ids: Sequence[str] | None = None,
    native: bool | None = None,
) -> tuple[list[dict[str, Any]], list[tuple[Mapping[str, Any], str]]]:
    """Normalise a batch: (rows, [(event, reason), ...] for events that cannot become a row -> dead letter).

    ``origin_ids``, when the caller already has them (one per event, ``event_origin_id``), saves hashing each
    event again. An unknown ``flavour`` is a programming/configuration error and raises ValueError for the whole
    batch. ``native`` as for :func:`normalize_event`.
    """
    plans = _plans(flavour)
    if origin_ids is not None:
        raw_events = list(raw_events)
        if len(origin_ids) != len(raw_events):
            raise ValueError(f"{len(origin_ids)} origin ids for {len(raw_events)} events")
    rows: list[dict[str, Any]] = []
    rejected: list[tuple[Mapping[str, Any], str]] = []
    if _use_native(native, context):
        events = raw_events if type(raw_events) is list else list(raw_events)
        built, fallbacks = _native_rows(events, flavour, context, origin_ids)
        if not fallbacks:
            return built, rejected
        # Events outside the extension's common shape: the Python code, in place, with its own errors.
        ids: Iterable[str | None] = repeat(None) if origin_ids is None else origin_ids
        for raw_event, row, origin_id in zip(events, built, ids, strict=False):
            if row is not None:
                rows.append(row)
            else:
                _normalize_into(rows, rejected, raw_event, plans, flavour, context, origin_id)
        return rows, rejected
    ids = repeat(None) if origin_ids is None else origin_ids  # lengths checked above
    for raw_event, origin_id in zip(raw_events, ids, strict=False):
        _normalize_into(rows, rejected, raw_event, plans, flavour, context, origin_id)
    return rows, rejected


def _normalize_into(rows: list[dict[str, Any]], rejected: list[tuple[Mapping[str, Any], str]],
                    raw_event: Mapping[str, Any], plans: dict[int, _Plan], flavour: str, context: NormalizeContext,
                    origin_id: str | None) -> None:
    try:
        rows.append(_normalize(raw_event, plans, flavour, context, origin_id))
    except NormalizeError as exc:
        rejected.append((raw_event, str(exc)))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        rejected.append((raw_event, f"malformed event: {exc.__class__.__name__}: {exc}"))


# ------------------------------------------------------------------------------------------------- native rows
# ``streams._normalize`` (C, built optionally like the Avro codec) builds the rows of the common events from the
# same plans and layouts, as tuples; for anything else it answers None and the Python code above runs.

NATIVE_ENV = "SECSTREAM_NATIVE_NORMALIZE"  # "0": the Python code even when the extension is built
_native, NATIVE_IMPORT_ERROR = optional_extension("streams._normalize")

_ACCOUNT_MODES = {"auto": 0, "target": 1, "none": 2}
# Per flavour: EventID -> (activity, parse, keep_event_data, account mode, account_type), and names -> layout.
_NATIVE_PLANS: dict[str, dict[int, tuple[str, bool, bool, int, bool]]] = {flavour: {} for flavour in FLAVOURS}
_NATIVE_LAYOUTS: dict[tuple[str | None, ...], tuple[Any, ...]] = {}


def native_available() -> bool:
    """True when the C extension is importable (whatever ``SECSTREAM_NATIVE_NORMALIZE`` says)."""
    return _native is not None


def native_enabled() -> bool:
    """True when rows are built by the C extension: it is importable and ``SECSTREAM_NATIVE_NORMALIZE`` is not 0."""
    return _native is not None and switched_on(NATIVE_ENV)


def _use_native(native: bool | None, context: NormalizeContext) -> bool:
    if native is None:
        native = native_enabled()
    elif native and _native is None:
        raise RuntimeError(f"streams._normalize is not available: {NATIVE_IMPORT_ERROR}")
    return native and type(context.mg) is str and type(context.management_group_name) is str


def _native_plan(ama: bool, event_id: int) -> tuple[str, bool, bool, int, bool]:
    flavour = "ama" if ama else "mma"
    plan = plan_for(flavour, event_id)
    native = (plan.activity, plan.parse, plan.keep_event_data, _ACCOUNT_MODES[plan.account], plan.account_type)
    plans = _NATIVE_PLANS[flavour]
    if len(plans) < 70_000:
        plans[event_id] = native
    return native


def _native_layout(names: tuple[str | None, ...]) -> tuple[Any, ...]:
    layout = _layout(names)
    # The same objects as the layout's, as a tuple the extension reads by index.
    native = (layout.plain, layout.typed, layout.heads, layout.by_position, layout.derive)
    if len(_NATIVE_LAYOUTS) < 10_000:
        _NATIVE_LAYOUTS[names] = native
    return native


def _native_rows(events: list[Any], flavour: str, context: NormalizeContext,
                 origin_ids: Sequence[str] | None) -> tuple[list[Any], int]:
    assert _native is not None
    ids = None if origin_ids is None else list(origin_ids)
    rows, fallbacks = _native.rows(events, flavour == "ama", _NATIVE_PLANS[flavour], context.mg,
                                   context.management_group_name, ids)
    return rows, fallbacks


def _configure_native() -> None:
    """Hand the tables and cache callbacks to the extension (once at import; again if a test reconfigured it)."""
    assert _native is not None
    _native.configure(
        fingerprint=content_fingerprint, plan_factory=_native_plan, layouts=_NATIVE_LAYOUTS,
        layout_factory=_native_layout,
        guid_cache=_guid_cache, guid_func=_cached_guid, keywords_cache=_keywords_cache, keywords_func=_keywords_int,
        level_text=tuple(_LEVEL_TEXT[n] for n in range(256)),
        level_names=tuple(EVENT_LEVEL_NAMES[n] for n in range(len(EVENT_LEVEL_NAMES))),
        logon_type_names=_LOGON_TYPE_NAME, machine_sids=MACHINE_SIDS, machine_names=MACHINE_ACCOUNT_NAMES,
        mma_levels=(*(MMA_LEVEL_BY_LEVEL[n] for n in range(6)), MMA_LEVEL_AUDIT_SUCCESS, MMA_LEVEL_AUDIT_FAILURE,
                    "4"),
        source_system=SOURCE_SYSTEM, not_available="N/A", machine="Machine", user="User",
        xml_open=EVENT_DATA_OPEN, xml_close=EVENT_DATA_CLOSE, data_close=_DATA_CLOSE,
        namespace=EVENT_IDENTITY_NAMESPACE.bytes,
    )


if _native is not None:
    _configure_native()
