"""Writes the stored v1 payloads the compatibility tests read. Run once per schema version, then never again.

    .venv/bin/python tests/schemas/data/make_v1_payloads.py

Inputs are real data: EVTX records of the dev corpus (parsed by the producers' XML adapter) for RawEventBatch, and
rows the Microsoft agents wrote (the SecurityEvent golden set) for SecurityEventBatch, plus a few edge cases.
Outputs: ``<Schema>.v1.avro`` (a Kafka message value as written by v1) and ``<Schema>.v1.json`` (the batch a v1
reader returns for it, defaults filled in).
"""

from __future__ import annotations

import json
from pathlib import Path

import evtx

from producers.adapters.event_xml import parse_event_xml
from schemas.codec import decode_raw_batch, decode_security_batch, encode_raw_batch, encode_security_batch

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[3] / "shared"
EVTX = SHARED / "corpus" / "dev" / "omerbenamram__evtx" / "samples" / "security.evtx"
GOLDEN = SHARED / "securityevent-golden"


def raw_batch() -> dict:
    wanted = {4624: 2, 4672: 1, 4907: 1, 1100: 1, 4731: 1}
    events = []
    for record in evtx.PyEvtxParser(str(EVTX)).records():
        assert record is not None
        provenance = {"source_format": "evtx", "agent_id": "agent-7", "collector_id": None,
                      "read_time_us": 1_700_000_000_123_456, "source_ref": "samples/security.evtx"}
        event = parse_event_xml(record["data"], provenance)
        if wanted.get(event["event_id"], 0) > 0:
            wanted[event["event_id"]] -= 1
            events.append(event)
    edge = dict(events[0])
    edge["event_data"] = [{"name": "Dup", "value": " a "}, {"name": "Dup", "value": ""}, {"name": None, "value": None},
                          {"name": "Ünïcødé ✓", "value": "%%1833 😀\r\n"}]
    edge["rendered_message"] = ""
    edge["user_data_xml"] = "<UserData><x a='1'/></UserData>"
    edge["time_created"] = -1  # one tick before the epoch: signed longs must survive
    events.append(edge)
    return {"host": events[0]["computer"], "batch_id": "5b0e8c40-4f3c-4d55-9d55-7c5f5c9f0a01", "sequence": 42,
            "agent_id": "agent-7", "send_time_us": 1_700_000_000_200_000, "events": events}


def security_batch() -> dict:
    rows = []
    for name, count in (("msticpy/all_events_df.jsonl", 3), ("azure-sentinel/asim_userManagement_subset.jsonl", 2)):
        with (GOLDEN / name).open(encoding="utf-8") as lines:
            for line, _ in zip(lines, range(count), strict=False):
                row = {k: v for k, v in json.loads(line).items() if not k.startswith("_") and v is not None}
                rows.append(row)
    return {"computer": rows[0]["Computer"], "batch_id": "b1", "source_batch_id": "5b0e8c40", "rows": rows}


def main() -> None:
    for name, batch, encode, decode in (
        ("RawEventBatch", raw_batch(), encode_raw_batch, decode_raw_batch),
        ("SecurityEventBatch", security_batch(), encode_security_batch, decode_security_batch),
    ):
        payload = encode(batch)
        (HERE / f"{name}.v1.avro").write_bytes(payload)
        # What a v1 reader returns for it: the batch with every default filled in.
        (HERE / f"{name}.v1.json").write_text(json.dumps(decode(payload), indent=1, ensure_ascii=False) + "\n",
                                              "utf-8")
        print(f"wrote {name}.v1.avro / .json")


if __name__ == "__main__":
    main()
