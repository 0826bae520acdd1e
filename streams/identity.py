"""The identity of a Windows event, and the deterministic ``EventOriginId`` derived from it.

An event is identified by ``(Computer, Channel, EventRecordID, TimeCreated)``:

* ``EventRecordID`` is a counter kept **per channel** of one computer, so it needs Computer and Channel beside it.
* The counter is not unique over time: clearing a log (Security event 1102 "The audit log was cleared", or a
  reinstall / log file replacement) restarts it at 1, so a record id seen a week ago can be reused by a different
  event today. ``TimeCreated`` at its full 100 ns precision separates those, while a duplicate of the same event
  (sent twice by the host, or by two load-balanced collectors) carries exactly the same four values.
* Nothing that a collector adds (arrival time, collector id, batch id) is part of it, so copies that travelled
  different paths compare equal.

Some exporters have no record number. Their events get a content fingerprint in place of the record id (see
:func:`event_identity`), so two different events with the same time are never taken for one another.

``EventOriginId`` is the UUIDv5 of the identity under :data:`EVENT_IDENTITY_NAMESPACE`. Every row written for the
same event carries the same id, so a duplicate that still reaches the workspace can be found with
``SecurityEvent | summarize count() by EventOriginId | where count_ > 1``.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from schemas.event_data import as_dicts

# uuid5(NAMESPACE_URL, "urn:secstream:event-identity:v1"). Fixed forever: changing it changes every EventOriginId.
EVENT_IDENTITY_NAMESPACE = uuid.UUID("6227968b-7768-5b82-8eb6-449319c9f5be")
_NAMESPACE_BYTES = EVENT_IDENTITY_NAMESPACE.bytes

# The UUID variant nibble (RFC 4122: binary 10xx) for each value of the hash's hex digit at that position.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}

EventIdentity = tuple[str, str, int | str, int]


def content_fingerprint(raw_event: Mapping[str, Any]) -> str:
    """A stable digest of what the event says, used as record id when the source has none."""
    payload = orjson.dumps(
        [
            raw_event.get("provider_name"),
            raw_event.get("event_id"),
            as_dicts(raw_event.get("event_data")),  # either form of the items: the same digest
            raw_event.get("user_data_xml"),
        ]
    )
    return "sha1:" + hashlib.sha1(payload).hexdigest()[:20]


def event_identity(raw_event: Mapping[str, Any]) -> EventIdentity:
    """``(Computer, Channel, EventRecordID, TimeCreated ticks)`` of a RawEvent dict.

    The record id is an ``int`` when the source has one (every EVTX, XML, Winlogbeat and NXLog event), otherwise a
    ``"sha1:..."`` fingerprint of the event's content. Values are taken verbatim (Computer is not case-folded):
    copies of one event are byte-identical, and folding could merge events of two hosts that differ only in case.
    """
    record_id = raw_event.get("event_record_id")
    return (
        raw_event.get("computer") or "",
        raw_event.get("channel") or "",
        record_id if record_id is not None else content_fingerprint(raw_event),
        raw_event["time_created"],
    )


def identity_key(identity: EventIdentity) -> bytes:
    """The byte string an identity is hashed from. Newlines cannot occur in computer or channel names."""
    computer, channel, record_id, ticks = identity
    return f"{computer}\n{channel}\n{record_id}\n{ticks}".encode()


def uuid5_string(name: bytes) -> str:
    """``str(uuid.uuid5(EVENT_IDENTITY_NAMESPACE, name))`` without building UUID objects (it runs per event)."""
    h = hashlib.sha1(_NAMESPACE_BYTES + name).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def event_origin_id(raw_event: Mapping[str, Any]) -> str:
    """The ``EventOriginId`` of a RawEvent: UUIDv5 of its identity, lower-case, without braces.

    Same value as ``uuid5_string(identity_key(event_identity(raw_event)))``, inlined because it runs for every
    event (RawEvent dicts carry every schema field, so they are indexed).
    """
    record_id = raw_event["event_record_id"]
    if record_id is None:
        record_id = content_fingerprint(raw_event)
    return uuid5_string(
        f"{raw_event['computer']}\n{raw_event['channel']}\n{record_id}\n{raw_event['time_created']}".encode()
    )
