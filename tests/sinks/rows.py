"""Test rows for the sink: real SecurityEvent rows written by Microsoft's agents (the golden set), made unique.

Only the columns of the SecurityEvent Avro schema are kept, typed as the schema says; the columns the service sets
itself (TenantId, Type, _ResourceId, ...) are left out. Each generated row gets its own EventOriginId and a fresh
TimeGenerated, so rows can be counted and de-duplicated in the workspace.
"""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from schemas.codec import encode_security_batch

GOLDEN = Path(__file__).resolve().parents[2].parent / "shared" / "securityevent-golden"
SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "avro" / "SecurityEvent.v1.avsc"
GOLDEN_FILES = (
    "msticpy/all_events_df.jsonl",
    "msticpy/host_logons.jsonl",
    "msticpy/failed_logons.jsonl",
    "msticpy/processes_on_host.jsonl",
    "otrf/Log4Shell_securityauditing_java_serialized_object.jsonl",
    "otrf/GoldenSAMLADFSMailAccess_WindowsEvents.jsonl",
)
SERVER_SET = {"TenantId", "Type", "_ResourceId", "SourceSystem", "MG", "ManagementGroupName"}
NAMESPACE = uuid.UUID("8d6f2f1e-6a0e-4f5e-9d53-6b1f0c8f7a11")


@cache
def column_types() -> dict[str, str]:
    fields = json.loads(SCHEMA.read_text())["fields"]
    return {f["name"]: next(t for t in f["type"] if t != "null") for f in fields}


def _typed(name: str, value: Any, kind: str) -> Any:
    if value is None or value == "":
        return None
    if kind == "int":
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    if kind == "double":
        return float(value)
    return value if isinstance(value, str) else str(value)


@cache
def golden_rows() -> tuple[dict[str, Any], ...]:
    """The golden rows, restricted to schema columns (read-only: copy before changing)."""
    types = column_types()
    rows = []
    for name in GOLDEN_FILES:
        for line in (GOLDEN / name).read_text(encoding="utf-8").splitlines():
            source = json.loads(line)
            rows.append({k: _typed(k, v, types[k]) for k, v in source.items() if k in types and k not in SERVER_SET})
    return tuple(rows)


def now_iso() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}0Z"


def make_rows(count: int, computer: str, start: int = 0) -> list[dict[str, Any]]:
    """``count`` rows cycling through the golden rows, each with a unique EventOriginId (from ``start``)."""
    golden = golden_rows()
    stamp = now_iso()
    out = []
    for i in range(start, start + count):
        row = copy.copy(golden[i % len(golden)])
        row["Computer"] = computer
        row["TimeGenerated"] = stamp
        row["EventOriginId"] = str(uuid.uuid5(NAMESPACE, f"{computer}/{i}"))
        out.append(row)
    return out


def make_batches(total_rows: int, rows_per_batch: int, computers: int = 3) -> list[dict[str, Any]]:
    """SecurityEventBatch dicts, round-robin over ``computers`` hosts, ``total_rows`` rows in all."""
    batches = []
    made = 0
    index = 0
    while made < total_rows:
        n = min(rows_per_batch, total_rows - made)
        computer = f"HOST-{index % computers:02d}.contoso.local"
        batches.append({"computer": computer, "batch_id": f"b{index}", "source_batch_id": f"r{index}",
                        "rows": make_rows(n, computer, start=made)})
        made += n
        index += 1
    return batches


def encoded(batches: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    """(key, value) Kafka records for the batches, encoded with the project's codec."""
    return [(b["computer"].encode(), encode_security_batch(b)) for b in batches]
