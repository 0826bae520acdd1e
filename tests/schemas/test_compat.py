"""Evolution rule: a new schema version reads all data written by older ones.

Every committed schema version keeps a payload it wrote (tests/schemas/data/<Schema>.v<N>.avro, made once by
make_v1_payloads.py); the current code must read each of them back to the batch stored beside it. A synthetic v2
(one added column / field with a default) shows the schema-resolution path the codec takes for an older writer.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader

from schemas.avsc import AVRO_DIR, LOCAL_ID_BASE, ROW_SCHEMA, message_schema, read_avsc, versions
from schemas.codec import Codec, DecodeError, decode_raw_batch, decode_security_batch
from tests.schemas.conftest import DATA, stored

DECODERS = {"RawEventBatch": decode_raw_batch, "SecurityEventBatch": decode_security_batch}
STORED = [(name, version) for name in ROW_SCHEMA for version in versions(name)]


@pytest.mark.parametrize(("name", "version"), STORED)
def test_every_version_keeps_a_stored_payload(name: str, version: int) -> None:
    assert (DATA / f"{name}.v{version}.avro").is_file(), "write one with make_v1_payloads.py before changing it"
    assert (DATA / f"{name}.v{version}.json").is_file()


@pytest.mark.parametrize(("name", "version"), STORED)
def test_current_reader_reads_stored_payload_of_every_version(name: str, version: int) -> None:
    data, expected = stored(f"{name}.v{version}")
    assert int.from_bytes(data[1:5], "big") == LOCAL_ID_BASE[name] + version
    assert DECODERS[name](data) == expected


@pytest.mark.parametrize(("name", "version"), STORED)
def test_stored_payload_resolves_from_its_own_avsc_to_the_current_schema(name: str, version: int) -> None:
    """Read the frozen bytes with fastavro: writer = that version's files as committed, reader = the newest."""
    data, expected = stored(f"{name}.v{version}")
    row = read_avsc(ROW_SCHEMA[name], version)
    named: dict[str, Any] = {}
    parse_schema(row, named_schemas=named)
    writer = parse_schema(read_avsc(name, version), named_schemas=named)
    record = schemaless_reader(io.BytesIO(data[5:]), writer, message_schema(name).parsed)
    assert isinstance(record, dict)
    if name == "SecurityEventBatch":
        record["rows"] = [{k: v for k, v in r.items() if v is not None} for r in record["rows"]]
    assert record == expected


def _write_v2(avro_dir: Path, name: str, new_field: dict[str, Any]) -> None:
    """A v2 of ``name`` whose row schema gains ``new_field`` (with a default, as the rule requires)."""
    for path in AVRO_DIR.glob("*.avsc"):
        shutil.copy(path, avro_dir / path.name)
    for file_name in (name, ROW_SCHEMA[name]):
        shutil.copy(AVRO_DIR / f"{file_name}.v1.avsc", avro_dir / f"{file_name}.v2.avsc")
    row = json.loads((avro_dir / f"{ROW_SCHEMA[name]}.v2.avsc").read_text(encoding="utf-8"))
    row["fields"].append(new_field)
    (avro_dir / f"{ROW_SCHEMA[name]}.v2.avsc").write_text(json.dumps(row), encoding="utf-8")


def test_a_v2_raw_event_reads_v1_data(tmp_path: Path) -> None:
    _write_v2(tmp_path, "RawEventBatch", {"name": "sanitized", "type": "boolean", "default": False})
    codec = Codec(avro_dir=tmp_path)
    assert codec.raw_schema.version == 2
    data, expected = stored("RawEventBatch.v1")
    decoded = codec.decode_raw_batch(data)
    assert all(event.pop("sanitized") is False for event in decoded["events"])
    assert decoded == expected
    written = codec.encode_raw_batch({**expected, "events": [{**expected["events"][0], "sanitized": True}]})
    assert written[1:5] == (102).to_bytes(4, "big")
    assert codec.decode_raw_batch(written)["events"][0]["sanitized"] is True


def test_a_v2_security_event_reads_v1_data(tmp_path: Path) -> None:
    _write_v2(tmp_path, "SecurityEventBatch", {"name": "NewColumn", "type": ["null", "string"], "default": None})
    codec = Codec(avro_dir=tmp_path)
    data, expected = stored("SecurityEventBatch.v1")
    assert codec.decode_security_batch(data) == expected
    row = {**expected["rows"][0], "NewColumn": "x"}
    written = codec.encode_security_batch({**expected, "rows": [row]})
    assert written[1:5] == (202).to_bytes(4, "big")
    assert codec.decode_security_batch(written)["rows"] == [row]


def test_a_v2_that_drops_a_default_cannot_read_v1(tmp_path: Path) -> None:
    """The rule has teeth: a field added without a default breaks reading old data, and decode says so."""
    _write_v2(tmp_path, "RawEventBatch", {"name": "tenant", "type": "string"})
    with pytest.raises(DecodeError, match="tenant"):
        Codec(avro_dir=tmp_path).decode_raw_batch(stored("RawEventBatch.v1")[0])
