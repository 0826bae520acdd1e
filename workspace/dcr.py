"""Data collection rules in the ARM JSON format, and the workspace tables they write to.

A DCR file is what ``az monitor data-collection rule show`` prints (or just its ``properties``):
``streamDeclarations``, ``destinations.logAnalytics``, ``dataFlows`` with ``outputStream`` and ``transformKql``,
plus ``immutableId``. Loading validates the rule the way DCR creation does and says exactly what is wrong.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

# Kusto types a stream declaration may use (data-collection-rule-structure.md "Stream declarations").
STREAM_TYPES = frozenset({"string", "int", "long", "real", "boolean", "dynamic", "datetime"})
# Table column types: the stream types plus guid (SecurityEvent.MG is a guid column).
TABLE_TYPES = STREAM_TYPES | {"guid"}
# Set by the platform on every row, whatever the client sends (log-standard-columns.md).
RESERVED_COLUMNS = ("TenantId", "Type", "_ResourceId", "_SubscriptionId", "SourceSystem", "_IsBillable",
                    "_BilledSize")
IMMUTABLE_ID = re.compile(r"^dcr-[0-9a-f]{32}$")
COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,44}$")
TABLES_DIR = Path(__file__).resolve().parent / "tables"
DEFAULT_DCR_DIR = Path(__file__).resolve().parent / "dcrs"


class DcrError(ValueError):
    """A data collection rule or table definition the emulator cannot load; the message names file and field."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str


@dataclass(frozen=True)
class Table:
    """A Log Analytics table: ``SecurityEvent`` or a custom ``*_CL`` table."""

    name: str
    columns: tuple[Column, ...]

    def column_types(self) -> dict[str, str]:
        return {c.name: c.type for c in self.columns}


@dataclass(frozen=True)
class DataFlow:
    stream: str
    table: Table
    transform: str
    workspace_id: str  # the TenantId stamped on rows (the workspace's customer id)


@dataclass(frozen=True)
class Dcr:
    immutable_id: str
    name: str
    resource_id: str
    source: Path
    streams: dict[str, tuple[Column, ...]]
    flows: tuple[DataFlow, ...]

    def flows_for(self, stream: str) -> tuple[DataFlow, ...]:
        return tuple(f for f in self.flows if f.stream == stream)


def load_table(name: str, tables_dir: Path = TABLES_DIR) -> Table:
    path = tables_dir / f"{name}.json"
    if not path.is_file():
        raise DcrError(f"table {name!r} is not available in the emulated workspace (no {path.name} in {tables_dir})")
    try:
        doc = orjson.loads(path.read_bytes())
        columns = tuple(Column(c["name"], c["type"]) for c in doc["columns"])
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise DcrError(f"{path}: not a table definition ({exc})") from None
    for c in columns:
        if c.type not in TABLE_TYPES:
            raise DcrError(f"{path}: column {c.name!r} has unknown type {c.type!r}")
    return Table(name=doc.get("name", name), columns=columns)


def _fail(path: Path, where: str, message: str) -> DcrError:
    return DcrError(f"{path}: {where}: {message}")


def _columns(path: Path, stream: str, spec: Any) -> tuple[Column, ...]:
    where = f"properties.streamDeclarations[{stream!r}]"
    if not isinstance(spec, dict) or not isinstance(spec.get("columns"), list) or not spec["columns"]:
        raise _fail(path, where, "needs a non-empty 'columns' list")
    seen: set[str] = set()
    out = []
    for i, col in enumerate(spec["columns"]):
        if not isinstance(col, dict) or not isinstance(col.get("name"), str):
            raise _fail(path, f"{where}.columns[{i}]", "needs 'name' and 'type'")
        name, ctype = col["name"], col.get("type")
        if not COLUMN_NAME.match(name):
            raise _fail(path, f"{where}.columns[{i}]", f"invalid column name {name!r}")
        if ctype not in STREAM_TYPES:
            raise _fail(path, f"{where}.columns[{i}]",
                        f"type {ctype!r} of {name!r} is not one of {', '.join(sorted(STREAM_TYPES))}")
        if name in seen:
            raise _fail(path, f"{where}.columns[{i}]", f"column {name!r} declared twice")
        seen.add(name)
        out.append(Column(name, ctype))
    return tuple(out)


def _output_table(path: Path, where: str, output: Any, stream_columns: tuple[Column, ...],
                  tables_dir: Path) -> Table:
    if not isinstance(output, str):
        raise _fail(path, where, "needs 'outputStream' (Microsoft-<Table> or Custom-<Name>_CL)")
    if output.startswith("Microsoft-"):
        try:
            return load_table(output.removeprefix("Microsoft-"), tables_dir)
        except DcrError as exc:
            raise _fail(path, where, f"Table for output stream {output!r} is not available ({exc})") from None
    if output.startswith("Custom-") and output.endswith("_CL"):
        # A custom table has the columns it was created with; here, those of its input stream.
        declared = {c.name for c in stream_columns}
        extra = tuple(Column(n, "string") for n in ("TenantId", "Type", "_ResourceId") if n not in declared)
        return Table(name=output.removeprefix("Custom-"), columns=stream_columns + extra)
    raise _fail(path, where, f"outputStream {output!r} must be Microsoft-<Table> or Custom-<Name>_CL")


def check_transform(path: Path, where: str, kql: Any) -> str:
    """Only the identity transform runs here; anything else is refused at load time, never half-applied."""
    if kql is None:
        return "source"
    if not isinstance(kql, str) or "\n" in kql:
        raise _fail(path, where, "transformKql must be a single-line string")
    if kql.strip() != "source":
        raise _fail(path, where, f"transformKql {kql!r} is not supported by the workspace emulator: only "
                                 "'source' (send the table's own columns; do any reshaping before sending)")
    return "source"


def parse_dcr(doc: Any, path: Path, tables_dir: Path = TABLES_DIR) -> Dcr:
    if not isinstance(doc, dict):
        raise DcrError(f"{path}: the top level must be a JSON object (an ARM dataCollectionRules resource)")
    props = doc.get("properties", doc)
    if not isinstance(props, dict):
        raise _fail(path, "properties", "must be an object")
    immutable_id = props.get("immutableId")
    if not isinstance(immutable_id, str) or not IMMUTABLE_ID.match(immutable_id):
        raise _fail(path, "properties.immutableId", "needs 'dcr-' followed by 32 lowercase hex digits")
    declarations = props.get("streamDeclarations")
    if not isinstance(declarations, dict) or not declarations:
        raise _fail(path, "properties.streamDeclarations", "needs at least one Custom-* stream")
    streams: dict[str, tuple[Column, ...]] = {}
    for name, spec in declarations.items():
        if not name.startswith("Custom-"):
            raise _fail(path, f"properties.streamDeclarations[{name!r}]", "stream names must begin with 'Custom-'")
        streams[name] = _columns(path, name, spec)
    workspaces = _workspaces(path, props)
    flows: list[DataFlow] = []
    raw_flows = props.get("dataFlows")
    if not isinstance(raw_flows, list) or not raw_flows:
        raise _fail(path, "properties.dataFlows", "needs at least one data flow")
    for i, flow in enumerate(raw_flows):
        where = f"properties.dataFlows[{i}]"
        if not isinstance(flow, dict):
            raise _fail(path, where, "must be an object")
        transform = check_transform(path, where, flow.get("transformKql"))
        destinations = flow.get("destinations") or []
        unknown = [d for d in destinations if d not in workspaces]
        if not destinations or unknown:
            raise _fail(path, where, f"destinations must name destinations.logAnalytics entries (unknown: {unknown})")
        for stream in flow.get("streams") or []:
            if stream not in streams:
                if stream.startswith("Microsoft-"):
                    continue  # agent (dataSources) streams; not reachable through the ingestion API
                raise _fail(path, where, f"stream {stream!r} is not declared in streamDeclarations")
            table = _output_table(path, where, flow.get("outputStream"), streams[stream], tables_dir)
            if "TimeGenerated" not in {c.name for c in streams[stream]}:
                raise _fail(path, where, f"the transformation output of {stream!r} has no TimeGenerated column")
            flows.extend(DataFlow(stream, table, transform, workspaces[d]) for d in destinations)
    return Dcr(
        immutable_id=immutable_id,
        name=str(doc.get("name") or path.stem),
        resource_id=str(doc.get("id") or ""),
        source=path,
        streams=streams,
        flows=tuple(flows),
    )


def _workspaces(path: Path, props: dict[str, Any]) -> dict[str, str]:
    """Destination name -> workspace id (a stable GUID derived from the workspace resource id)."""
    entries = (props.get("destinations") or {}).get("logAnalytics") or []
    if not entries:
        raise _fail(path, "properties.destinations.logAnalytics", "needs at least one workspace")
    out = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("workspaceResourceId"):
            raise _fail(path, f"properties.destinations.logAnalytics[{i}]", "needs 'name' and 'workspaceResourceId'")
        out[entry["name"]] = str(uuid.uuid5(uuid.NAMESPACE_URL, entry["workspaceResourceId"].lower()))
    return out


def load_dcr_file(path: Path, tables_dir: Path = TABLES_DIR) -> Dcr:
    try:
        doc = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise DcrError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise DcrError(f"{path}: cannot read ({exc.strerror})") from None
    return parse_dcr(doc, path, tables_dir)


def load_dcrs(directory: Path, tables_dir: Path = TABLES_DIR) -> dict[str, Dcr]:
    """Every ``*.json`` DCR in ``directory``, keyed by immutable id."""
    if not directory.is_dir():
        raise DcrError(f"DCR directory {directory} does not exist")
    dcrs: dict[str, Dcr] = {}
    for path in sorted(directory.glob("*.json")):
        dcr = load_dcr_file(path, tables_dir)
        if dcr.immutable_id in dcrs:
            raise DcrError(f"{path}: immutableId {dcr.immutable_id} is also used by {dcrs[dcr.immutable_id].source}")
        dcrs[dcr.immutable_id] = dcr
    if not dcrs:
        raise DcrError(f"no DCR files (*.json) in {directory}")
    return dcrs
