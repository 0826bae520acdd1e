"""The live Windows Event Log through ``EvtSubscribe`` (pywin32), resumable through bookmarks.

Windows only: pywin32 is imported when a live source is opened on win32, never elsewhere. Events are rendered to
XML by Windows (``EvtRender(..., EvtRenderEventXml)``) and read by the same code as ``wevtutil`` output
(``producers.adapters.event_xml``). The position of an event is its EventRecordID, which only grows within a
channel; a bookmark is exactly (channel, record id), so the checkpoint file needs nothing else, and a restart
subscribes with ``EvtSubscribeStartAfterBookmark``.

The pywin32 calls sit behind ``EventLogApi`` so the reading logic runs (and is tested) anywhere on a recorded
stream of rendered XML.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any, Protocol
from xml.sax.saxutils import quoteattr

from producers.adapters.event_xml import EventXmlError, parse_event_xml_fast
from producers.timeutil import now_us

NEXT_BATCH = 128  # event handles per EvtNext call


class EventLogApi(Protocol):
    """The Windows Event Log calls the live source needs."""

    def subscribe(self, channel: str, query: str, bookmark_xml: str | None) -> Any:
        """Pull subscription; starts after the bookmark when given, else at the oldest record."""
        ...

    def next_xml(self, subscription: Any, count: int, timeout_ms: int) -> list[str]:
        """Up to ``count`` rendered events; an empty list when none arrived within the timeout."""
        ...

    def close(self, subscription: Any) -> None: ...


def bookmark_xml(channel: str, record_id: int) -> str:
    """The XML Windows uses for a bookmark (what ``EvtRender(bookmark, EvtRenderBookmark)`` returns)."""
    return (f"<BookmarkList><Bookmark Channel={quoteattr(channel)} RecordId='{record_id}' IsCurrent='true'/>"
            "</BookmarkList>")


class LiveEventLogSource:
    """One channel of the local event log, as a producer source (``key`` = ``wineventlog:<channel>``)."""

    fmt = "wineventlog"
    position_kind = "record_id"

    def __init__(self, channel: str, query: str = "*", api: EventLogApi | None = None,
                 poll_timeout_ms: int = 1000) -> None:
        self.channel = channel
        self.query = query
        self.key = f"wineventlog:{channel}"
        self.issues: list[str] = []
        self._api = api
        self.poll_timeout_ms = poll_timeout_ms

    @property
    def api(self) -> EventLogApi:
        if self._api is None:
            if sys.platform != "win32":
                raise RuntimeError("the live Windows Event Log can only be read on Windows")
            self._api = Win32EventLogApi()
        return self._api

    def read(self, resume: int | None, agent_id: str = "",
             on_issue: Callable[[str, bytes | None], None] | None = None,
             follow: bool = False) -> Iterator[tuple[dict[str, Any], int]]:
        """Events after record id ``resume``. Without ``follow``, stops when the channel has nothing new."""
        provenance = {"source_format": "wineventlog", "agent_id": agent_id, "collector_id": None,
                      "read_time_us": now_us(), "source_ref": self.key}
        api = self.api
        subscription = api.subscribe(self.channel, self.query,
                                     bookmark_xml(self.channel, resume) if resume is not None else None)
        try:
            while True:
                rendered = api.next_xml(subscription, NEXT_BATCH, self.poll_timeout_ms)
                if not rendered:
                    if not follow:
                        return
                    continue
                provenance["read_time_us"] = now_us()
                for xml in rendered:
                    try:
                        event = parse_event_xml_fast(xml, provenance)
                    except EventXmlError as exc:
                        self.issues.append(str(exc))
                        if on_issue is not None:
                            on_issue(f"{self.key}: {exc}", xml.encode("utf-8", "replace"))
                        continue
                    record_id = event["event_record_id"]
                    if record_id is None or (resume is not None and record_id <= resume):
                        continue
                    yield event, record_id
        finally:
            api.close(subscription)


class Win32EventLogApi:  # pragma: no cover - needs Windows
    """``EventLogApi`` over pywin32 (``win32evtlog``, ``win32event``)."""

    def __init__(self) -> None:
        import win32event
        import win32evtlog

        self._evt = win32evtlog
        self._event = win32event

    def subscribe(self, channel: str, query: str, bookmark_xml: str | None) -> Any:
        evt = self._evt
        signal = self._event.CreateEvent(None, 0, 0, None)
        if bookmark_xml is not None:
            bookmark = evt.EvtCreateBookmark(bookmark_xml)
            handle = evt.EvtSubscribe(channel, evt.EvtSubscribeStartAfterBookmark, SignalEvent=signal,
                                      Query=query, Bookmark=bookmark)
        else:
            handle = evt.EvtSubscribe(channel, evt.EvtSubscribeStartAtOldestRecord, SignalEvent=signal,
                                      Query=query)
        return (handle, signal)

    def next_xml(self, subscription: Any, count: int, timeout_ms: int) -> list[str]:
        handle, signal = subscription
        events = self._evt.EvtNext(handle, count, 0)
        if not events:
            self._event.WaitForSingleObject(signal, timeout_ms)
            events = self._evt.EvtNext(handle, count, 0)
        return [self._evt.EvtRender(e, self._evt.EvtRenderEventXml) for e in events or ()]

    def close(self, subscription: Any) -> None:
        handle, _signal = subscription
        handle.Close()
