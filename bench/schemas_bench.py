"""Encode + decode throughput of the batch codec (schemas.codec) on realistic Windows security events.

Events come from real EVTX records of the dev corpus (parsed with the Rust ``evtx`` parser), mapped to the
RawEvent model; batches hold ~500 events of one host. SecurityEvent rows are built from the same events with the
columns a normaliser fills for them (System columns + the EventData fields that have a SecurityEvent column).

Candidates, side by side: the codec with its native engine (the C extension, the default when built), the same
codec forced to its pure-Python fallback (what ``SECSTREAM_NATIVE_CODEC=0`` selects), plain fastavro on the same
schema, and orjson on the same events as a reference. Single-threaded; the timer is process CPU time.

    .venv/bin/python bench/schemas_bench.py [--seconds 3] [--batch 500]

Prints a table and writes bench/results/schemas.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import evtx
import orjson
from fastavro import schemaless_reader, schemaless_writer

from schemas import codec, native
from schemas.catalog import COLUMN_TYPES, activity

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus" / "dev"
EVTX_FILES = [
    CORPUS / "omerbenamram__evtx" / "samples" / "security.evtx",
    CORPUS / "omerbenamram__evtx" / "samples" / "post-Security.evtx",
]
RESULTS = REPO / "bench" / "results" / "schemas.json"
EPOCH_TICKS = 621355968000000000  # .NET ticks at 1970-01-01


def _ticks(system_time: str) -> int:
    """ISO SystemTime (up to 7 fractional digits) -> 100 ns ticks since the Unix epoch."""
    head, _, frac = system_time.rstrip("Z").partition(".")
    seconds = int(datetime.fromisoformat(head + "+00:00").timestamp())
    return seconds * 10_000_000 + int((frac + "0000000")[:7])


def _attr(node: Any, name: str) -> Any:
    return node.get("#attributes", {}).get(name) if isinstance(node, dict) else None


def raw_event_from_evtx_json(record: dict[str, Any], source: str) -> dict[str, Any]:
    event = orjson.loads(record["data"])["Event"]
    system = event["System"]
    event_id = system["EventID"]
    qualifiers = None
    if isinstance(event_id, dict):
        qualifiers = _attr(event_id, "Qualifiers")
        event_id = event_id.get("#text")
    data = event.get("EventData") or {}
    if isinstance(data, dict):
        items = [{"name": k, "value": None if v is None else str(v)} for k, v in data.items() if k != "#attributes"]
    else:
        items = [{"name": None, "value": str(data)}]
    return {
        "provider_name": _attr(system["Provider"], "Name") or "",
        "provider_guid": "{" + _attr(system["Provider"], "Guid") + "}" if _attr(system["Provider"], "Guid") else None,
        "event_id": int(event_id),
        "qualifiers": qualifiers,
        "version": system.get("Version"),
        "level": system.get("Level"),
        "task": system.get("Task"),
        "opcode": system.get("Opcode"),
        "keywords": system.get("Keywords"),
        "time_created": _ticks(_attr(system["TimeCreated"], "SystemTime")),
        "event_record_id": system.get("EventRecordID"),
        "activity_id": _attr(system.get("Correlation"), "ActivityID"),
        "process_id": _attr(system.get("Execution"), "ProcessID"),
        "thread_id": _attr(system.get("Execution"), "ThreadID"),
        "channel": system.get("Channel") or "",
        "computer": system.get("Computer") or "",
        "user_id": _attr(system.get("Security"), "UserID"),
        "event_data": items,
        "user_data_xml": orjson.dumps(event["UserData"]).decode() if "UserData" in event else None,
        "provenance": {"source_format": "evtx", "agent_id": "bench-agent", "collector_id": None,
                       "read_time_us": time.time_ns() // 1000, "source_ref": source},
    }


def load_events(limit: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for path in EVTX_FILES:
        for record in evtx.PyEvtxParser(str(path)).records_json():
            if record is not None:
                events.append(raw_event_from_evtx_json(record, str(path.relative_to(CORPUS))))
            if len(events) >= limit:
                return events
    return events


def _iso(ticks: int) -> str:
    seconds, rest = divmod(ticks, 10_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest:07d}Z"


def security_row(event: dict[str, Any]) -> dict[str, Any]:
    """The columns a normaliser fills for ``event``: System columns plus EventData fields named like a column."""
    row: dict[str, Any] = {
        "TimeGenerated": _iso(event["time_created"]), "SourceSystem": "OpsManager", "Computer": event["computer"],
        "EventSourceName": event["provider_name"], "Channel": event["channel"], "EventID": event["event_id"],
        "Activity": activity(event["event_id"]), "Task": event["task"], "Level": str(event["level"]),
        "EventRecordId": str(event["event_record_id"]), "SystemProcessId": event["process_id"],
        "SystemThreadId": event["thread_id"], "Keywords": event["keywords"], "Version": event["version"],
        "MG": "00000000-0000-0000-0000-000000000001", "EventOriginId": str(uuid.uuid4()),
        "ManagementGroupName": "AOI-00000000-0000-0000-0000-000000000000", "Type": "SecurityEvent",
    }
    for item in event["event_data"]:
        name, value = item["name"], item["value"]
        kind = COLUMN_TYPES.get(name or "")
        if kind == "string":
            row[name] = value
        elif kind == "int" and value is not None and value.lstrip("-").isdigit():
            row[name] = int(value)
    row["EventData"] = "<EventData>" + "".join(f'<Data Name="{i["name"]}">{i["value"]}</Data>'
                                               for i in event["event_data"]) + "</EventData>"
    return row


def batches(items: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [items[i:i + size] for i in range(0, len(items) - size + 1, size)]


class Candidate:
    """One codec on one kind of batch: its encode and decode calls over every batch, timed in rounds."""

    def __init__(self, name: str, encode: Callable[[dict[str, Any]], bytes], decode: Callable[[bytes], Any],
                 envelopes: list[dict[str, Any]], key: str) -> None:
        self.name, self.encode, self.decode, self.envelopes = name, encode, decode, envelopes
        self.encoded = [encode(e) for e in envelopes]
        self.items = sum(len(e[key]) for e in envelopes)
        self.encode_times: list[float] = []
        self.decode_times: list[float] = []

    def run_round(self) -> None:
        start = time.process_time()
        for envelope in self.envelopes:
            self.encode(envelope)
        middle = time.process_time()
        for data in self.encoded:
            self.decode(data)
        self.encode_times.append(middle - start)
        self.decode_times.append(time.process_time() - middle)

    def result(self) -> dict[str, Any]:
        enc_s, dec_s = statistics.median(self.encode_times), statistics.median(self.decode_times)
        n = len(self.envelopes)
        result = {
            "batches": n, "items_per_batch": self.items // n, "rounds": len(self.encode_times),
            "avro_bytes_per_item": round(sum(map(len, self.encoded)) / self.items, 1),
            "encode_items_per_s": round(self.items / enc_s), "decode_items_per_s": round(self.items / dec_s),
            "encode_plus_decode_items_per_s": round(self.items / (enc_s + dec_s)),
            "encode_us_per_batch": round(enc_s / n * 1e6, 1), "decode_us_per_batch": round(dec_s / n * 1e6, 1),
            # The fastest round: the least disturbed by other processes on a shared machine.
            "encode_plus_decode_items_per_s_best": round(self.items / (min(self.encode_times)
                                                                      + min(self.decode_times))),
        }
        print(f"{self.name:<26} {result['avro_bytes_per_item']:>8} B/item"
              f"  encode {result['encode_items_per_s']:>9,}/s  decode {result['decode_items_per_s']:>9,}/s"
              f"  enc+dec {result['encode_plus_decode_items_per_s']:>9,}/s"
              f" (best round {result['encode_plus_decode_items_per_s_best']:>9,}/s)")
        return result


def run_interleaved(candidates: dict[str, Candidate], seconds: float) -> dict[str, dict[str, Any]]:
    """Round-robin over the candidates so that a change in machine load hits all of them alike; medians."""
    deadline = time.perf_counter() + seconds * len(candidates)
    rounds = 0
    while time.perf_counter() < deadline or rounds < 3:
        for candidate in candidates.values():
            candidate.run_round()
        rounds += 1
    return {key: candidate.result() for key, candidate in candidates.items()}


def _fastavro_pair(parsed: Any) -> tuple[Callable[[dict[str, Any]], bytes], Callable[[bytes], Any]]:
    """Plain fastavro schemaless calls on the same schema: the generic baseline the codec improves on."""

    def encode(batch: dict[str, Any]) -> bytes:
        out = io.BytesIO()
        schemaless_writer(out, parsed, batch)
        return out.getvalue()

    def decode(data: bytes) -> Any:
        return schemaless_reader(io.BytesIO(data), parsed, None)

    return encode, decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per candidate")
    parser.add_argument("--batch", type=int, default=500, help="events per batch")
    parser.add_argument("--events", type=int, default=4000, help="events loaded from the corpus")
    args = parser.parse_args()

    events = load_events(args.events)
    raw_batches = [{"host": b[0]["computer"], "batch_id": str(uuid.uuid4()), "sequence": i, "agent_id": "bench-agent",
                    "send_time_us": time.time_ns() // 1000, "events": b}
                   for i, b in enumerate(batches(events, args.batch))]
    security_batches = [{"computer": b["host"], "batch_id": str(uuid.uuid4()), "source_batch_id": b["batch_id"],
                         "rows": [security_row(e) for e in b["events"]]} for b in raw_batches]
    filled = statistics.mean(sum(v is not None for v in r.values()) for b in security_batches for r in b["rows"])
    load_start = os.getloadavg()[0]
    print(f"{len(events)} corpus events, batches of {args.batch}; SecurityEvent rows fill {filled:.1f} of "
          f"{len(COLUMN_TYPES)} columns; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")

    default = codec.default_codec()
    if not all(default.native_in_use.values()):
        print(f"native engine NOT in use ({native.IMPORT_ERROR or 'disabled by SECSTREAM_NATIVE_CODEC=0'}): the "
              "first two rows measure the pure-Python fallback too")
    fallback = codec.Codec(native=False)
    candidates = {
        "raw_event_batch": Candidate("RawEventBatch", codec.encode_raw_batch, codec.decode_raw_batch,
                                     raw_batches, "events"),
        "security_event_batch": Candidate("SecurityEventBatch", codec.encode_security_batch,
                                          codec.decode_security_batch, security_batches, "rows"),
        "raw_event_batch_python_fallback": Candidate("RawEventBatch Python", fallback.encode_raw_batch,
                                                     fallback.decode_raw_batch, raw_batches, "events"),
        "security_event_batch_python_fallback": Candidate("SecurityEvent Python", fallback.encode_security_batch,
                                                          fallback.decode_security_batch, security_batches, "rows"),
        "raw_event_batch_fastavro_generic": Candidate(
            "RawEventBatch fastavro", *_fastavro_pair(default.raw_schema.parsed), raw_batches, "events"),
        "security_event_batch_fastavro_generic": Candidate(
            "SecurityEvent fastavro", *_fastavro_pair(default.security_schema.parsed), security_batches, "rows"),
        "json_reference": Candidate("orjson (reference)", orjson.dumps, orjson.loads, raw_batches, "events"),
    }
    results: dict[str, Any] = run_interleaved(candidates, args.seconds)
    results["meta"] = {
        "python": platform.python_version(), "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "load_average_1m_end": os.getloadavg()[0], "load_average_1m_start": load_start,
        "timer": "process CPU time (one core), median of interleaved rounds",
        "corpus_files": [str(p.relative_to(CORPUS)) for p in EVTX_FILES], "events": len(events),
        "security_columns_filled_mean": round(filled, 1),
        "native_engine_in_use": default.native_in_use,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"written {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
