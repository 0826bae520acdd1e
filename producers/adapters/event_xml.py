"""Rendered Windows event XML (``<Event xmlns=".../2004/08/events/event">``) -> RawEvent dicts.

The same code reads EVTX records (the ``evtx`` parser renders XML), ``wevtutil qe /f:xml`` and
``Get-WinEvent | % ToXml()`` output, and the live event log. Values are kept verbatim: EventData ``<Data>`` in
document order (unnamed ones, duplicates, whitespace and ``%%`` codes included), UserData as raw XML, and
``SystemTime`` at full 100 ns precision.

Parsing is hardened: no network, no DTD loading, no entity expansion, and any DOCTYPE is rejected (billion-laughs
and external-entity documents never get expanded).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, cast

from lxml import etree

from producers.timeutil import TimeFormatError, iso_to_ticks
from schemas.native import switched_on

NativeParse = Callable[[str, dict[str, Any], int | None], dict[str, Any] | None]
NativeFromRecord = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any] | None]


def _load_native() -> Any:
    """The evtx parser's rendering in C (producers/_evtxrender.c, built by ``pip install`` when a compiler is
    present), or None. ``parse`` gives the same result as _parse_evtx_rendering below and ``from_record`` the same
    as sources._read_evtx does per record, several times faster; both return None for a record they decline.
    SECSTREAM_NATIVE_EVTX=0 turns them off."""
    if not switched_on("SECSTREAM_NATIVE_EVTX"):
        return None
    try:
        return importlib.import_module("producers._evtxrender")
    except ImportError:  # built optionally
        return None


_native = _load_native()
_native_parse = cast(NativeParse | None, _native and _native.parse)
native_from_record = cast(NativeFromRecord | None, _native and _native.from_record)

EVENT_NS = "http://schemas.microsoft.com/win/2004/08/events/event"


class EventXmlError(ValueError):
    """Input that is not a readable Windows event; the message says why (used as the dead-letter reason)."""


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        collect_ids=False,
    )


_PARSER = _parser()


def _local(tag: Any) -> str:
    if not isinstance(tag, str):  # comments and processing instructions
        return ""
    return tag.rpartition("}")[2]


def int_or_none(text: str | None) -> int | None:
    """Decimal or 0x-hex text, as renderings write numbers; None when absent, blank or not a number."""
    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    try:
        return int(text, 0) if text.lower().startswith("0x") else int(text)
    except ValueError:
        return None


# XML 1.0 forbids most C0 control characters, yet event data carries them (the evtx parser and wevtutil write them
# raw or as character references). They are swapped for private-use code points before parsing and swapped back in
# the parsed strings, so values stay verbatim.
_CONTROL_BYTES = re.compile(
    rb"[\x00-\x08\x0b\x0c\x0e-\x1f]|&#(?:x0*([0-8bcefBCEF]|1[0-9a-fA-F])|0*([0-8]|1[124-9]|2[0-9]|3[01]));"
)
_SHIFT = 0xF0000
_RESTORE = {_SHIFT + c: c for c in range(32)}


def _shift_control(match: re.Match[bytes]) -> bytes:
    hex_ref, dec_ref = match.group(1), match.group(2)
    code = int(hex_ref, 16) if hex_ref else int(dec_ref) if dec_ref else match.group(0)[0]
    return chr(_SHIFT + code).encode("utf-8")


def _escape_controls(data: bytes) -> bytes:
    return _CONTROL_BYTES.sub(_shift_control, data)


def _restore_controls(event: dict[str, Any]) -> None:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = value.translate(_RESTORE)
    for item in event["event_data"]:
        for key in ("name", "value"):
            if item[key] is not None:
                item[key] = item[key].translate(_RESTORE)


def blank_raw_event(provenance: dict[str, Any]) -> dict[str, Any]:
    """A RawEvent dict with every field at its "not supplied" value (the provenance dict is copied)."""
    return {
        "provider_name": "", "provider_guid": None, "event_source_name": None, "event_id": None,
        "qualifiers": None, "version": None, "level": None, "task": None, "opcode": None, "keywords": None,
        "time_created": None, "event_record_id": None, "activity_id": None, "related_activity_id": None,
        "process_id": None, "thread_id": None, "channel": "", "computer": "", "user_id": None,
        "event_data": [], "user_data_xml": None, "rendered_message": None, "provenance": dict(provenance),
    }


def _attribute_fields(tag: str, get: Callable[[str], str | None], out: dict[str, Any]) -> bool:
    """The System children whose values are attributes; False for any other tag."""
    if tag == "Provider":
        out["provider_name"] = get("Name") or ""
        out["provider_guid"] = get("Guid")
        out["event_source_name"] = get("EventSourceName")
    elif tag == "Correlation":
        out["activity_id"] = get("ActivityID")
        out["related_activity_id"] = get("RelatedActivityID")
    elif tag == "Execution":
        out["process_id"] = int_or_none(get("ProcessID"))
        out["thread_id"] = int_or_none(get("ThreadID"))
    elif tag == "Security":
        out["user_id"] = get("UserID")
    else:
        return False
    return True


def _reject_doctype(root: etree._Element) -> None:
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise EventXmlError("event XML must not contain a DOCTYPE or entity declarations")


# XML parsers turn CR LF in text into LF; a character reference keeps the CR, so values stay verbatim.
_TEXT_WITH_CR = re.compile(rb">[^<]*\r[^<]*<")


def _protect_cr(data: bytes) -> bytes:
    if b"\r" not in data:
        return data
    return _TEXT_WITH_CR.sub(lambda m: m.group(0).replace(b"\r", b"&#13;"), data)


def parse_event_xml(
    xml: str | bytes, provenance: dict[str, Any], record_time: int | None = None
) -> dict[str, Any]:
    """One rendered ``<Event>`` document -> RawEvent dict. Raises EventXmlError on bad input.

    ``record_time`` (ticks) stands in for a missing ``TimeCreated`` (EVTX records carry their own time).
    """
    if isinstance(xml, str):
        # lxml refuses a str with an encoding declaration; once decoded the declaration says nothing.
        xml = _XML_DECL.sub(b"", xml.encode("utf-8"), count=1)
    xml = _protect_cr(xml)
    try:
        root = etree.fromstring(xml, _PARSER)
    except etree.XMLSyntaxError as exc:
        escaped = _escape_controls(xml)
        if escaped == xml:
            raise EventXmlError(f"malformed event XML: {exc}") from None
        try:
            root = etree.fromstring(escaped, _PARSER)
        except etree.XMLSyntaxError as exc2:
            raise EventXmlError(f"malformed event XML: {exc2}") from None
        _reject_doctype(root)
        event = event_from_element(root, provenance, record_time)
        _restore_controls(event)
        return event
    _reject_doctype(root)
    return event_from_element(root, provenance, record_time)


def event_from_element(
    event: etree._Element, provenance: dict[str, Any], record_time: int | None = None
) -> dict[str, Any]:
    """An ``<Event>`` element -> RawEvent dict."""
    if _local(event.tag) != "Event":
        raise EventXmlError(f"expected an <Event> element, got <{_local(event.tag) or event.tag}>")
    out = blank_raw_event(provenance)
    for section in event:
        name = _local(section.tag)
        if name == "System":
            _read_system(section, out)
        elif name == "EventData":
            out["event_data"] = [
                {"name": d.get("Name"), "value": d.text if d.text is not None else ""}
                for d in section
                if _local(d.tag) == "Data"
            ]
        elif name == "UserData":
            out["user_data_xml"] = etree.tostring(section, encoding="unicode", with_tail=False)
        elif name == "RenderingInfo":
            for item in section:
                if _local(item.tag) == "Message":
                    out["rendered_message"] = item.text if item.text is not None else ""
    if out["event_id"] is None:
        raise EventXmlError("event has no System/EventID")
    if out["time_created"] is None:
        if record_time is None:
            raise EventXmlError("event has no System/TimeCreated/@SystemTime")
        out["time_created"] = record_time
    return out


def _system_text(text: str | None) -> str | None:
    """System values are single tokens; whitespace alone is how a renderer pretty-prints an empty element."""
    return None if text is None or text.isspace() else text


def _read_system(system: etree._Element, out: dict[str, Any]) -> None:
    for el in system:
        name = _local(el.tag)
        if _attribute_fields(name, el.get, out):
            continue
        if name == "EventID":
            event_id = int_or_none(el.text)
            if event_id is None:
                raise EventXmlError(f"System/EventID is not a number: {el.text!r}")
            out["event_id"] = event_id
            out["qualifiers"] = int_or_none(el.get("Qualifiers"))
        elif name in ("Version", "Level", "Task", "Opcode"):
            out[name.lower()] = int_or_none(el.text)
        elif name == "Keywords":
            out["keywords"] = _system_text(el.text)
        elif name == "TimeCreated":
            system_time = el.get("SystemTime")
            if system_time is None:
                continue
            try:
                out["time_created"] = iso_to_ticks(system_time)
            except TimeFormatError as exc:
                raise EventXmlError(f"System/TimeCreated: {exc}") from None
        elif name == "EventRecordID":
            out["event_record_id"] = int_or_none(el.text)
        elif name == "Channel":
            out["channel"] = _system_text(el.text) or ""
        elif name == "Computer":
            out["computer"] = _system_text(el.text) or ""


# ---------------------------------------------------------------- streams of many events

_XML_DECL = re.compile(rb"<\?xml[^>]*\?>")
_BOM = b"\xef\xbb\xbf"
_ROOT_OPEN = b"<secstream-events>"
_ROOT_CLOSE = b"</secstream-events>"


class _DeclarationFilter:
    """Drops ``<?xml ...?>`` declarations anywhere in a byte stream (concatenated ToXml()/evtx dumps repeat them)."""

    def __init__(self) -> None:
        self._carry = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._carry + chunk
        self._carry = b""
        # Hold back a possibly cut ``<?xml ...?>`` or ``&#...;`` at the end until the next chunk.
        cut = max(data.rfind(b"<"), data.rfind(b"&"))
        if cut != -1 and data.find(b">" if data[cut:cut + 1] == b"<" else b";", cut) == -1 and len(data) - cut < 256:
            data, self._carry = data[:cut], data[cut:]
        return self._clean(data)

    def close(self) -> bytes:
        rest, self._carry = self._carry, b""
        return self._clean(rest)

    @staticmethod
    def _clean(data: bytes) -> bytes:
        # CR kept as a character reference (see _protect_cr); Windows never breaks lines inside a tag.
        return _escape_controls(_XML_DECL.sub(b"", data)).replace(b"\r", b"&#13;")


def iter_event_xml(
    source: IO[bytes] | Iterable[bytes],
    provenance: dict[str, Any],
    chunk_size: int = 1 << 16,
    on_error: Any = None,
) -> Iterator[dict[str, Any]]:
    """Stream RawEvents from wevtutil / Get-WinEvent XML: ``<Event>`` elements, bare or wrapped in ``<Events>``.

    Memory stays bounded by one event. An ``<Event>`` that is well-formed but not a readable event is passed to
    ``on_error(reason)`` (or raises EventXmlError when no handler is given); malformed XML raises EventXmlError.
    """
    chunks: Iterable[bytes] = iter(lambda: source.read(chunk_size), b"") if hasattr(source, "read") else source
    parser = etree.XMLPullParser(
        events=("end",), resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )
    decl = _DeclarationFilter()
    started = False
    head = b""
    for chunk in chunks:
        if not started:
            head += chunk
            stripped = head.lstrip().removeprefix(_BOM).lstrip()
            if len(stripped) < 512 and b">" not in stripped:
                continue  # need enough of the prologue to look at
            stripped = decl.feed(stripped).lstrip()
            if stripped.startswith(b"<!DOCTYPE") or b"<!ENTITY" in stripped[:4096]:
                raise EventXmlError("event XML must not contain a DOCTYPE or entity declarations")
            started = True
            chunk = stripped
            yield from _feed(parser, _ROOT_OPEN, provenance, on_error)
        else:
            chunk = decl.feed(chunk)
        yield from _feed(parser, chunk, provenance, on_error)
    if not started:
        stripped = decl.feed(head.lstrip().removeprefix(_BOM)).lstrip()
        if not stripped:
            return
        if stripped.startswith(b"<!DOCTYPE"):
            raise EventXmlError("event XML must not contain a DOCTYPE or entity declarations")
        yield from _feed(parser, _ROOT_OPEN + stripped, provenance, on_error)
    yield from _feed(parser, decl.close() + _ROOT_CLOSE, provenance, on_error)
    try:
        parser.close()
    except etree.XMLSyntaxError as exc:
        raise EventXmlError(f"malformed event XML stream: {exc}") from None


def _feed(
    parser: etree.XMLPullParser, data: bytes, provenance: dict[str, Any], on_error: Any
) -> Iterator[dict[str, Any]]:
    try:
        parser.feed(data)
    except etree.XMLSyntaxError as exc:
        raise EventXmlError(f"malformed event XML stream: {exc}") from None
    for _action, el in parser.read_events():
        if _local(el.tag) != "Event":
            continue
        try:
            event = event_from_element(el, provenance)
            _restore_controls(event)
        except EventXmlError as exc:
            if on_error is None:
                raise
            on_error(str(exc))
        else:
            yield event
        # Free what has been read: the element and any siblings before it.
        parent = el.getparent()
        el.clear()
        if parent is not None:
            while el.getprevious() is not None:
                del parent[0]


# ---------------------------------------------------------------- fast path for canonical renderings

# The evtx parser (and the Windows renderer) write event XML in one regular shape: System children one per line,
# EventData as a flat list of <Data Name="...">text</Data>. For that shape a few regular expressions give exactly
# what lxml gives, several times faster. Anything else (UserData, RenderingInfo, Binary, CDATA, comments, character
# references) goes through lxml. tests/producers/test_event_xml.py checks both paths agree on every corpus record.
_ATTR = re.compile(r"([\w:]+)=\"([^\"]*)\"")
_DATA_ITEM = re.compile(r"<Data( Name=\"([^\"]*)\")?>([^<]*)</Data>")  # group 1 tells unnamed from Name=""
# After </System>: EventData (its own Name attribute, as in classic Application events, is not carried), UserData,
# or nothing. Group 1: the EventData body; group 2: the whole UserData element.
_EVENT_TAIL = re.compile(
    r"\s*(?:<EventData(?: Name=\"[^\"<>&]*\")?>(.*)</EventData>|<EventData/>|(<UserData>.*</UserData>))?\s*</Event>\s*",
    re.S,
)
# <Binary> (hex of the event's binary data) closes a classic event's EventData; RawEvent does not carry it.
_BINARY_LAST = re.compile(r"<Binary(?:/>|>[^<]*</Binary>)\s*\Z")
_EVENT_OPEN = f'<Event xmlns="{EVENT_NS}">'
# A start tag directly followed by its end tag: lxml writes such an element back as <a/>.
_EMPTY_ELEMENT = re.compile(r"<[^/>][^>]*(?<!/)></")
# A tag of the plain shape lxml writes back unchanged: name, double-quoted attributes without characters it would
# escape or normalise, no space before ">" or "/>".
_PLAIN_TAG = re.compile(r'<(/?)([\w.:-]+)((?: [\w.:-]+="[^"<>&\t\n\r]*")*)(/?)>')
_ATTRIBUTE_NAME = re.compile(r' ([\w.:-]+)="[^"]*"')
_ENTITIES = {"&lt;": "<", "&gt;": ">", "&amp;": "&", "&quot;": '"', "&apos;": "'"}
_ENTITY = re.compile(r"&(?:lt|gt|amp|quot|apos);")
_INT_FIELDS = {"Version": "version", "Level": "level", "Task": "task", "Opcode": "opcode",
               "EventRecordID": "event_record_id"}


# The System block exactly as the evtx parser renders it (children in schema order, optional ones may be absent).
# One match replaces the per-element loop below for nearly every record; anything else takes the loop.
_EVTX_SYSTEM = re.compile(
    r'\s*<Provider(?: Name="(?P<pn>[^"]*)")?(?: Guid="(?P<pg>[^"]*)")?(?: EventSourceName="(?P<es>[^"]*)")?'
    r"\s*(?:/>|>\s*</Provider>)"
    r'\s*<EventID(?: Qualifiers="(?P<q>\d*)")?>(?P<id>\d+)</EventID>'
    r"(?:\s*<Version>(?P<ver>\d*)\s*</Version>)?"
    r"(?:\s*<Level>(?P<lvl>\d*)\s*</Level>)?"
    r"(?:\s*<Task>(?P<task>\d*)\s*</Task>)?"
    r"(?:\s*<Opcode>(?P<op>\d*)\s*</Opcode>)?"
    r"(?:\s*<Keywords>(?P<kw>[^<]*)</Keywords>)?"
    r'\s*<TimeCreated(?: SystemTime="(?P<tc>[^"]*)")?\s*(?:/>|>\s*</TimeCreated>)'
    r"(?:\s*<EventRecordID>(?P<rid>\d*)\s*</EventRecordID>)?"
    r'(?:\s*<Correlation(?: ActivityID="(?P<act>[^"]*)")?(?: RelatedActivityID="(?P<ract>[^"]*)")?'
    r"\s*(?:/>|>\s*</Correlation>))?"
    r'(?:\s*<Execution(?: ProcessID="(?P<pid>\d*)")?(?: ThreadID="(?P<tid>\d*)")?\s*(?:/>|>\s*</Execution>))?'
    r"\s*<Channel>(?P<ch>[^<]*)</Channel>"
    r"\s*<Computer>(?P<comp>[^<]*)</Computer>"
    r'(?:\s*<Security(?: UserID="(?P<uid>[^"]*)")?\s*(?:/>|>\s*</Security>))?\s*'
)


# The same, with the exact whitespace of the evtx parser's rendering and its prologue: several times cheaper to
# match than the general pattern above (no open-ended whitespace runs to try), so it goes first.
_EVTX_PROLOGUE = f'<?xml version="1.0" encoding="utf-8"?>\n{_EVENT_OPEN}\n  <System>'
_EVTX_SYSTEM_EXACT = re.compile(
    r'\n    <Provider(?: Name="([^"<]*)")?(?: Guid="([^"<]*)")?(?: EventSourceName="([^"<]*)")?>\n    </Provider>'
    r'\n    <EventID(?: Qualifiers="(\d*)")?>(\d+)</EventID>'
    r"(?:\n    <Version>(\d*)</Version>)?"
    r"(?:\n    <Level>(\d*)</Level>)?"
    r"(?:\n    <Task>(\d*)</Task>)?"
    r"(?:\n    <Opcode>(\d*)</Opcode>)?"
    r"(?:\n    <Keywords>([^<]*)</Keywords>)?"
    r'\n    <TimeCreated(?: SystemTime="([^"<]*)")?>\n    </TimeCreated>'
    r"(?:\n    <EventRecordID>(\d*)</EventRecordID>)?"
    r'(?:\n    <Correlation(?: ActivityID="([^"<]*)")?(?: RelatedActivityID="([^"<]*)")?>\n    </Correlation>)?'
    r'(?:\n    <Execution(?: ProcessID="(\d*)")?(?: ThreadID="(\d*)")?>\n    </Execution>)?'
    r"\n    <Channel>([^<]*)</Channel>"
    r"\n    <Computer>([^<]*)</Computer>"
    r'(?:\n    <Security(?: UserID="([^"<]*)")?>\n    </Security>)?'
    r"\n  </System>\n"
)
_DATA_OPEN = '  <EventData>\n    <Data Name="'
_DATA_CLOSE = "</Data>\n  </EventData>\n</Event>\n"
_DATA_SEPARATOR = '</Data>\n    <Data Name="'
_EVENT_DATA_CLOSE = "</EventData>\n</Event>\n"


def _evtx_system(match: re.Match[str], provenance: dict[str, Any], record_time: int | None) -> dict[str, Any]:
    (pn, pg, es, q, event_id, ver, lvl, task, op, keywords, system_time, rid, act, ract, pid, tid, channel, computer,
     uid) = match.groups()
    if system_time is not None:
        try:
            time_created: int | None = iso_to_ticks(system_time)
        except TimeFormatError:
            raise _NotCanonical from None
    elif record_time is not None:
        time_created = record_time
    else:
        raise _NotCanonical
    return {
        "provider_name": pn or "", "provider_guid": pg, "event_source_name": es,
        "event_id": int(event_id), "qualifiers": int(q) if q else None, "version": int(ver) if ver else None,
        "level": int(lvl) if lvl else None, "task": int(task) if task else None, "opcode": int(op) if op else None,
        "keywords": keywords if keywords and not keywords.isspace() else None,
        "time_created": time_created, "event_record_id": int(rid) if rid else None,
        "activity_id": act, "related_activity_id": ract,
        "process_id": int(pid) if pid else None, "thread_id": int(tid) if tid else None,
        "channel": "" if channel.isspace() else channel, "computer": "" if computer.isspace() else computer,
        "user_id": uid, "event_data": [], "user_data_xml": None, "rendered_message": None,
        "provenance": dict(provenance),
    }


def _unescape(text: str) -> str:
    return _ENTITY.sub(lambda m: _ENTITIES[m.group(0)], text) if "&" in text else text


class _NotCanonical(Exception):
    pass


def parse_event_xml_fast(
    xml: str, provenance: dict[str, Any], record_time: int | None = None
) -> dict[str, Any]:
    """Same result as :func:`parse_event_xml`, quicker for the usual rendering; falls back to lxml otherwise."""
    if _native_parse is not None:
        event = _native_parse(xml, provenance, record_time)
        if event is not None:
            return event
    try:
        return _parse_evtx_rendering(xml, provenance, record_time)
    except _NotCanonical:
        pass
    try:
        return _parse_canonical(xml, provenance, record_time)
    except _NotCanonical:
        return parse_event_xml(xml, provenance, record_time)


def _parse_evtx_rendering(xml: str, provenance: dict[str, Any], record_time: int | None) -> dict[str, Any]:
    """The evtx parser's own rendering, character for character: prologue, System, then named <Data> only (or
    UserData, or nothing), no entity or character reference anywhere."""
    if "&" in xml or not xml.startswith(_EVTX_PROLOGUE):
        raise _NotCanonical
    system = _EVTX_SYSTEM_EXACT.match(xml, len(_EVTX_PROLOGUE))
    if system is None:
        raise _NotCanonical
    out = _evtx_system(system, provenance, record_time)
    end = system.end()
    if xml.startswith(_DATA_OPEN, end) and xml.endswith(_DATA_CLOSE):
        out["event_data"] = _named_data_items(xml, end)
    elif xml.startswith("  <EventData>", end) and xml.endswith(_EVENT_DATA_CLOSE):
        out["event_data"] = _data_items(xml[end + 13:-len(_EVENT_DATA_CLOSE)])
    elif xml.startswith("  <UserData>", end) and xml.endswith("</UserData>\n</Event>\n"):
        user_data = xml[end + 2:-len("\n</Event>\n")]
        if "<!" in user_data:
            raise _NotCanonical
        out["user_data_xml"] = _user_data_as_lxml_writes_it(xml, end, user_data)
    elif len(xml) != end + 9 or not xml.endswith("</Event>\n"):
        raise _NotCanonical
    return out


def _parse_canonical(xml: str, provenance: dict[str, Any], record_time: int | None) -> dict[str, Any]:
    if "&#" in xml or "<!" in xml:
        raise _NotCanonical
    start = xml.find("<System>")
    end = xml.find("</System>", start)
    if start == -1 or end == -1 or xml.find("<Event", 0, start) == -1:
        raise _NotCanonical
    tail = _EVENT_TAIL.fullmatch(xml, end + 9)
    if tail is None:
        raise _NotCanonical
    system = _EVTX_SYSTEM.fullmatch(xml, start + 8, end) if xml.find("&", start, end) == -1 else None
    if system is not None:
        try:
            out = _evtx_system(system, provenance, record_time)
        except _NotCanonical:
            out = _system_by_elements(xml, start, end, provenance, record_time)
    else:
        out = _system_by_elements(xml, start, end, provenance, record_time)
    body, user_data = tail.groups()
    if body:
        out["event_data"] = _data_items(body)
    elif user_data is not None:
        out["user_data_xml"] = _user_data_as_lxml_writes_it(xml, start, user_data)
    return out


def _data_items(body: str) -> list[dict[str, str | None]]:
    """The body of <EventData>: flat <Data> elements, named or not, optionally followed by <Binary>."""
    if "<Binary" in body:
        binary = _BINARY_LAST.search(body)
        if binary is None:
            raise _NotCanonical
        body = body[:binary.start()]
    items = _DATA_ITEM.findall(body)
    if body.count("<") != 2 * len(items):
        raise _NotCanonical  # something besides flat <Data> elements (ComplexData, nesting)
    if "&" in body:
        return [{"name": _unescape(n) if named else None, "value": _unescape(v)} for named, n, v in items]
    return [{"name": n if named else None, "value": v} for named, n, v in items]


def _named_data_items(xml: str, end: int) -> list[dict[str, str | None]]:
    """'<Data Name="A">a</Data>\n    <Data Name="B">b</Data>' cut at the separators; the count of "<" proves there
    is nothing else (no unnamed Data, Binary, nesting, comment or CDATA); otherwise the general scan."""
    parts = xml[end + len(_DATA_OPEN):-len(_DATA_CLOSE)].split(_DATA_SEPARATOR)
    if xml.count("<", end) != 2 * len(parts) + 3:
        return _data_items(xml[end + 13:-len(_EVENT_DATA_CLOSE)])
    items = [part.partition('">') for part in parts]
    for name, sep, _ in items:
        if not sep or '"' in name:
            raise _NotCanonical  # another attribute besides Name
    return [{"name": name, "value": value} for name, _, value in items]


def _user_data_as_lxml_writes_it(xml: str, system_start: int, user_data: str) -> str:
    """The UserData element as ``etree.tostring`` serialises it, when the text is already in that form.

    lxml writes the element back as it was read, plus the default namespace it inherits from ``<Event>``, as long as
    nothing in it needs re-escaping or normalising: no entity or ``>`` in text, no CR, double-quoted attributes
    without tab/newline, no empty ``<a></a>`` (written back as ``<a/>``). Anything else goes through lxml."""
    if ("&" in user_data or "\r" in user_data or "<?" in user_data
            or xml.count("xmlns", 0, system_start) != 1 or xml.find(_EVENT_OPEN, 0, system_start) == -1):
        raise _NotCanonical
    tags = _PLAIN_TAG.findall(user_data)
    if user_data.count("<") != len(tags) or user_data.count(">") != len(tags):
        raise _NotCanonical
    if "></" in user_data and _EMPTY_ELEMENT.search(user_data):
        raise _NotCanonical
    open_tags: list[str] = []
    for closing, name, attrs, empty in tags:
        if closing:
            if not open_tags or open_tags.pop() != name or attrs or empty:
                raise _NotCanonical
        else:
            if attrs and not _attributes_as_lxml_writes_them(attrs):
                raise _NotCanonical
            if not empty:
                open_tags.append(name)
    if open_tags:
        raise _NotCanonical
    return f'<UserData xmlns="{EVENT_NS}">' + user_data[10:]


def _attributes_as_lxml_writes_them(attributes: str) -> bool:
    """No attribute twice (not well-formed) and the namespace declarations first (lxml writes them first)."""
    names = _ATTRIBUTE_NAME.findall(attributes)
    declares = [name == "xmlns" or name.startswith("xmlns:") for name in names]
    return len(set(names)) == len(names) and declares == sorted(declares, reverse=True)


def _system_by_elements(xml: str, start: int, end: int, provenance: dict[str, Any],
                        record_time: int | None) -> dict[str, Any]:
    out = blank_raw_event(provenance)
    # Split on "<": each piece is "Tag attrs>text" or "/Tag>whitespace". Plain string operations are several
    # times faster than a regular expression scan here.
    pieces = xml[start + 8:end].split("<")
    if pieces[0].strip():
        raise _NotCanonical
    open_tag = None
    for piece in pieces[1:]:
        head, sep, text = piece.partition(">")
        if not sep:
            raise _NotCanonical
        if head[0] == "/":
            if head[1:] != open_tag or text.strip():
                raise _NotCanonical
            open_tag = None
            continue
        if open_tag is not None:
            raise _NotCanonical  # an element inside a System child: not the canonical shape
        self_closing = head[-1] == "/"
        if self_closing:
            head = head[:-1]
        tag, _, attr_text = head.partition(" ")
        if not self_closing:
            open_tag = tag
        elif text.strip():
            raise _NotCanonical
        attrs = {k: _unescape(v) for k, v in _ATTR.findall(attr_text)} if attr_text else {}
        value = None if self_closing or not text or text.isspace() else text
        if _attribute_fields(tag, attrs.get, out):
            continue
        if tag == "EventID":
            event_id = int_or_none(value)
            if event_id is None:
                raise _NotCanonical
            out["event_id"] = event_id
            out["qualifiers"] = int_or_none(attrs.get("Qualifiers"))
        elif tag in _INT_FIELDS:
            out[_INT_FIELDS[tag]] = int_or_none(value)
        elif tag == "Keywords":
            out["keywords"] = None if value is None else _unescape(value)
        elif tag == "TimeCreated":
            if "SystemTime" in attrs:
                try:
                    out["time_created"] = iso_to_ticks(attrs["SystemTime"])
                except TimeFormatError:
                    raise _NotCanonical from None
        elif tag == "Channel":
            out["channel"] = _unescape(text) if value is not None else ""
        elif tag == "Computer":
            out["computer"] = _unescape(text) if value is not None else ""
    if open_tag is not None or out["event_id"] is None:
        raise _NotCanonical
    if out["time_created"] is None:
        if record_time is None:
            raise _NotCanonical
        out["time_created"] = record_time
    return out
