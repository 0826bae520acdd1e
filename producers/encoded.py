"""Events that are already Avro: the EVTX fast path from parser records straight to a RawEventBatch message.

``producers._evtxrender.encode_records`` writes a chunk of EVTX records as RawEvents in the Avro binary encoding
without building any dict (see producers/_evtxrender.c). This module holds what the rest of the producer needs
around it, all per chunk or per batch:

* ``EncodedChunk``: encoded events of one source in read order, with their end offsets and the hosts they belong
  to (a run per change of computer);
* ``provenance_avro``: the Provenance record of a source in Avro (the same for every event of the source);
* ``encode_event``: one RawEvent dict encoded by ``schemas.codec`` (records the C code declines take this path
  and join the same batches);
* ``encode_batch``: the RawEventBatch message around pre-encoded events. The envelope is encoded by
  ``schemas.codec`` with an empty ``events`` array, then the events go in its place: an Avro array is a block
  count, the items, and a 0, so the result is byte for byte what the codec writes for the whole batch
  (tests/producers check this on every EVTX record of the corpus and on mangled ones);
* ``available``: whether the fast path can be taken: the extension is built and enabled
  (``SECSTREAM_NATIVE_EVTX=0`` turns it off, and the dict path stays the reference) and, checked once, it writes
  exactly what the codec writes (a schema change turns it off instead of producing different bytes).
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from producers.adapters import event_xml
from schemas.codec import decode_raw_batch, encode_raw_batch
from schemas.nullable_record import zigzag_varint

log = logging.getLogger(__name__)

Parts = Sequence[bytes | memoryview]
_EMPTY_ENVELOPE = {"host": "", "batch_id": "", "sequence": 0, "agent_id": "", "send_time_us": 0}
# An envelope of empty strings and zeros before the events array: five 0 bytes, then the array's block count 1.
_ONE_EVENT_PREFIX = b"\x00\x00\x00\x00\x00\x02"


@dataclass(slots=True)
class EncodedChunk:
    """Consecutive events of one source in Avro: event ``i`` is ``data[ends[i-1]:ends[i]]`` (from 0 for the
    first); ``runs`` lists ``(host, first event index)`` where the computer changes. A reader yields a chunk with
    the position of its last event; the others have the positions just before it (ordinals without a gap)."""

    data: bytes
    ends: Sequence[int]
    runs: list[tuple[str, int]]

    def __len__(self) -> int:
        return len(self.ends)

    @classmethod
    def of_event(cls, event: dict[str, Any]) -> EncodedChunk:
        """One RawEvent dict encoded by the codec (a record the C code declined, or one from another reader)."""
        data = encode_event(event)
        return cls(data, array("I", [len(data)]), [(event["computer"], 0)])


def avro_string(value: str) -> bytes:
    data = value.encode("utf-8")
    return zigzag_varint(len(data)) + data


def _optional_string(value: str | None) -> bytes:
    return b"\x00" if value is None else b"\x02" + avro_string(value)


def provenance_avro(provenance: dict[str, Any]) -> bytes:
    """The Provenance record (RawEvent.v1's last field) in Avro."""
    return b"".join([
        avro_string(provenance["source_format"]),
        avro_string(provenance.get("agent_id") or ""),
        _optional_string(provenance.get("collector_id")),
        zigzag_varint(provenance["read_time_us"]),
        _optional_string(provenance.get("source_ref")),
    ])


def encode_event(event: dict[str, Any]) -> bytes:
    """One RawEvent as the codec encodes it inside a batch. Raises ``schemas.codec.EncodeError`` when it does not
    fit the schema."""
    value = encode_raw_batch({**_EMPTY_ENVELOPE, "events": [event]})
    body = value[5:]  # after the wire-format header
    if not body.startswith(_ONE_EVENT_PREFIX) or body[-1] != 0:
        raise ValueError("RawEventBatch is not encoded as RawEventBatch.v1: pre-encoded events cannot be used")
    return body[len(_ONE_EVENT_PREFIX):-1]


def encode_batch(envelope: dict[str, Any], count: int, parts: Parts) -> bytes:
    """The message value of a RawEventBatch (``envelope``: every field but ``events``) whose ``count`` events are
    the concatenation of ``parts``."""
    empty = encode_raw_batch({**envelope, "events": []})
    if not count:
        return empty
    return b"".join([empty[:-1], zigzag_varint(count), *parts, b"\x00"])


def decode_events(count: int, parts: Parts) -> list[dict[str, Any]]:
    """The RawEvent dicts of ``count`` pre-encoded events (to split a batch the broker found too large)."""
    return decode_raw_batch(encode_batch(_EMPTY_ENVELOPE, count, parts))["events"]


_NATIVE = event_xml._native
_checked: dict[int, bool] = {}


def available() -> bool:
    """True when the C encoder is built, enabled, and writes what the codec writes (checked once per codec)."""
    if _NATIVE is None or not hasattr(_NATIVE, "encode_records"):
        return False
    from schemas.codec import default_codec

    key = id(default_codec())
    agrees = _checked.get(key)
    if agrees is None:
        agrees = _checked[key] = _agrees_with_codec()
        if not agrees:
            log.warning("the native EVTX encoder does not match the RawEventBatch codec in use; taking the dict path")
    return agrees


_PROBE_RECORD = {
    "event_record_id": 7,
    "timestamp": "2023-04-10T07:47:01.9710164Z UTC",
    "data": (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<Event xmlns="http://schemas.microsoft.com/win/2004/08/events/event">\n'
        "  <System>\n"
        '    <Provider Name="Microsoft-Windows-Security-Auditing" Guid="{54849625-5478-4994-a5ba-3e3b0328c30d}">\n'
        "    </Provider>\n"
        "    <EventID>4624</EventID>\n"
        "    <Version>2</Version>\n"
        "    <Level>0</Level>\n"
        "    <Task>12544</Task>\n"
        "    <Opcode>0</Opcode>\n"
        "    <Keywords>0x8020000000000000</Keywords>\n"
        '    <TimeCreated SystemTime="2023-04-10T07:47:01.971016Z">\n'
        "    </TimeCreated>\n"
        "    <EventRecordID>7</EventRecordID>\n"
        '    <Correlation ActivityID="{b0b5d3a8-5e1c-0000-6ad4-b5b01c5ed901}">\n'
        "    </Correlation>\n"
        '    <Execution ProcessID="652" ThreadID="700">\n'
        "    </Execution>\n"
        "    <Channel>Security</Channel>\n"
        "    <Computer>dc1.example.org</Computer>\n"
        "    <Security>\n"
        "    </Security>\n"
        "  </System>\n"
        "  <EventData>\n"
        '    <Data Name="SubjectUserSid">S-1-5-18</Data>\n'
        "    <Data>caf\u00e9</Data>\n"
        '    <Data Name="Empty"></Data>\n'
        "  </EventData>\n"
        "</Event>\n"
    ),
}
_PROBE_PROVENANCE = {"source_format": "evtx", "agent_id": "probe", "collector_id": None,
                     "read_time_us": 1_681_112_821_971_016, "source_ref": "probe.evtx"}


def _agrees_with_codec() -> bool:
    assert _NATIVE is not None
    try:
        _, taken, data, _, runs, _ = _NATIVE.encode_records(
            iter([_PROBE_RECORD]), [], provenance_avro(_PROBE_PROVENANCE), 1, 0)
        event = _NATIVE.from_record(_PROBE_RECORD, _PROBE_PROVENANCE)
        return bool(taken == 1 and event is not None and data == encode_event(event)
                    and runs == [("dc1.example.org", 0)])
    except ValueError:
        return False
