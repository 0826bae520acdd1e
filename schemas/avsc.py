"""The versioned Avro schema files in ``schemas/avro/`` and the schema ids they carry without a registry.

A schema file is ``<Name>.v<version>.avsc``. The two message schemas (``RawEventBatch``, ``SecurityEventBatch``)
refer to their row types (``RawEvent``, ``SecurityEvent``) by full name; ``message_schema`` inlines those
references, so that each message schema is one self-contained JSON document (what a schema registry stores).

Schema ids without a registry are fixed per file: ``LOCAL_ID_BASE[name] + version``, e.g. RawEventBatch v1 is 101
and SecurityEventBatch v1 is 201. They never change and are never reused, so data written with one version can
always be traced to the exact file that describes it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from fastavro import parse_schema

AVRO_DIR = Path(__file__).resolve().parent / "avro"

RAW_EVENT_BATCH = "RawEventBatch"
SECURITY_EVENT_BATCH = "SecurityEventBatch"

# Message schema -> the row schema it refers to by name.
ROW_SCHEMA = {RAW_EVENT_BATCH: "RawEvent", SECURITY_EVENT_BATCH: "SecurityEvent"}
LOCAL_ID_BASE = {RAW_EVENT_BATCH: 100, SECURITY_EVENT_BATCH: 200}

_FILE_NAME = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9]*)\.v(?P<version>[1-9][0-9]?)\.avsc$")


@dataclass(frozen=True)
class MessageSchema:
    """One version of a message schema: its self-contained JSON, its fastavro-parsed form and its local id."""

    name: str
    version: int
    definition: dict[str, Any]
    parsed: Any

    @property
    def local_id(self) -> int:
        return LOCAL_ID_BASE[self.name] + self.version

    @property
    def full_name(self) -> str:
        return f"{self.definition['namespace']}.{self.definition['name']}"

    def to_json(self) -> str:
        """Compact JSON text, as sent to a schema registry."""
        return json.dumps(self.definition, separators=(",", ":"), ensure_ascii=False)


def versions(name: str, avro_dir: Path = AVRO_DIR) -> list[int]:
    """The versions of schema ``name`` that have a file, oldest first."""
    found = []
    for path in avro_dir.glob(f"{name}.v*.avsc"):
        match = _FILE_NAME.match(path.name)
        if match and match["name"] == name:
            found.append(int(match["version"]))
    return sorted(found)


def read_avsc(name: str, version: int, avro_dir: Path = AVRO_DIR) -> dict[str, Any]:
    path = avro_dir / f"{name}.v{version}.avsc"
    return dict(json.loads(path.read_text(encoding="utf-8")))


def inline_named(schema: Any, named: dict[str, dict[str, Any]]) -> Any:
    """``schema`` with each reference to a type in ``named`` (by full name) replaced by its definition."""
    if isinstance(schema, str):
        return named.get(schema, schema)
    if isinstance(schema, list):
        return [inline_named(branch, named) for branch in schema]
    if isinstance(schema, dict):
        return {key: inline_named(value, named) if key in ("type", "items", "values", "fields") else value
                for key, value in schema.items()}
    return schema


def message_schema(name: str, version: int | None = None, avro_dir: Path = AVRO_DIR) -> MessageSchema:
    """Version ``version`` (default: the newest) of message schema ``name``, with its row schema inlined.

    The row schema file of the same version is used (``RawEvent.v2`` goes with ``RawEventBatch.v2``). One object
    per (name, version), so schemas compare with ``is``.
    """
    if name not in ROW_SCHEMA:
        raise KeyError(f"unknown message schema {name!r}; known: {', '.join(ROW_SCHEMA)}")
    if version is None:
        known = versions(name, avro_dir)
        if not known:
            raise FileNotFoundError(f"no {name}.v<N>.avsc in {avro_dir}")
        version = known[-1]
    return _message_schema(name, version, avro_dir)


@cache
def _message_schema(name: str, version: int, avro_dir: Path) -> MessageSchema:
    row = read_avsc(ROW_SCHEMA[name], version, avro_dir)
    row_full_name = f"{row['namespace']}.{row['name']}"
    definition = inline_named(read_avsc(name, version, avro_dir), {row_full_name: row})
    return MessageSchema(name, version, definition, parse_schema(definition))


def by_local_id(schema_id: int, avro_dir: Path = AVRO_DIR) -> MessageSchema | None:
    """The message schema version whose local id is ``schema_id``, or None."""
    for name, base in LOCAL_ID_BASE.items():
        version = schema_id - base
        if 0 < version < 100 and version in versions(name, avro_dir):
            return message_schema(name, version, avro_dir)
    return None
