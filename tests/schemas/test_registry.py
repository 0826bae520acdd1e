"""Schema ids from a Confluent Schema Registry, through the real confluent_kafka client.

The registry is a small stand-in on a loopback port that speaks the four REST calls the client makes here (register,
lookup, get by id), with the registry's own error bodies.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

from schemas.codec import Codec, DecodeError, EncodeError
from schemas.registry import SchemaRegistryUnavailable, codec_from_settings, registry_codec
from secstream.config import SchemaRegistrySettings
from tests.schemas.conftest import stored
from tests.schemas.test_compat import _write_v2


class FakeRegistry(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.schemas: list[str] = []  # id - 1 -> schema string
        self.subjects: dict[str, list[int]] = {}
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeRegistry

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        path = urlparse(self.path).path.strip("/").split("/")
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(f"POST {'/'.join(path)}")
        subject = unquote(path[1])
        schema = body["schema"]
        ids = self.server.subjects.setdefault(subject, [])
        known = [i for i in ids if self.server.schemas[i - 1] == schema]
        if path[-1] == "versions":  # register: idempotent
            if not known:
                self.server.schemas.append(schema)
                ids.append(len(self.server.schemas))
                known = [ids[-1]]
            self._reply(200, {"id": known[0]})
        elif known:  # lookup
            self._reply(200, {"subject": subject, "id": known[0], "version": ids.index(known[0]) + 1,
                              "schema": schema})
        else:
            self._reply(404, {"error_code": 40403, "message": "Schema not found"})

    def do_GET(self) -> None:
        path = urlparse(self.path).path.strip("/").split("/")
        self.server.requests.append(f"GET {'/'.join(path)}")
        if path[:2] == ["schemas", "ids"] and 0 < int(path[2]) <= len(self.server.schemas):
            self._reply(200, {"schema": self.server.schemas[int(path[2]) - 1]})
        else:
            self._reply(404, {"error_code": 40403, "message": "Schema not found"})


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    server = FakeRegistry()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_ids_come_from_the_registry_and_are_stable(registry: FakeRegistry) -> None:
    _, raw = stored("RawEventBatch.v1")
    _, security = stored("SecurityEventBatch.v1")
    codec = registry_codec(registry.url)
    raw_bytes, security_bytes = codec.encode_raw_batch(raw), codec.encode_security_batch(security)
    assert raw_bytes[:5] == b"\x00\x00\x00\x00\x01" and security_bytes[:5] == b"\x00\x00\x00\x00\x02"
    assert set(registry.subjects) == {"secstream.v1.RawEventBatch", "secstream.v1.SecurityEventBatch"}
    # A second process (fresh client) gets the same ids and reads the data through the registry.
    other = registry_codec(registry.url)
    assert other.decode_raw_batch(raw_bytes) == raw
    assert other.decode_security_batch(security_bytes) == security
    assert other.encode_raw_batch(raw) == raw_bytes
    assert len(registry.schemas) == 2


def test_registered_schema_is_the_self_contained_avsc(registry: FakeRegistry) -> None:
    _, raw = stored("RawEventBatch.v1")
    registry_codec(registry.url, subject_prefix="prod-").encode_raw_batch(raw)
    definition = json.loads(registry.schemas[0])
    assert definition["name"] == "RawEventBatch"
    assert definition["fields"][-1]["type"]["items"]["name"] == "RawEvent"  # inlined, no reference
    assert list(registry.subjects) == ["prod-secstream.v1.RawEventBatch"]


def test_local_and_registry_ids_do_not_mix(registry: FakeRegistry) -> None:
    _, raw = stored("RawEventBatch.v1")
    data = registry_codec(registry.url).encode_raw_batch(raw)
    with pytest.raises(DecodeError, match="unknown schema id 1 "):
        Codec().decode_raw_batch(data)
    with pytest.raises(DecodeError, match="schema id 101 is not in the schema registry"):
        registry_codec(registry.url).decode_raw_batch(stored("RawEventBatch.v1")[0])


def test_newer_reader_resolves_older_writer_through_the_registry(registry: FakeRegistry, tmp_path: Path) -> None:
    _, raw = stored("RawEventBatch.v1")
    written_by_v1 = registry_codec(registry.url).encode_raw_batch(raw)
    _write_v2(tmp_path, "RawEventBatch", {"name": "sanitized", "type": "boolean", "default": False})
    from schemas.registry import RegistrySchemaIds

    v2_ids = RegistrySchemaIds(registry_codec(registry.url).ids.client)  # type: ignore[attr-defined]
    decoded = Codec(v2_ids, avro_dir=tmp_path).decode_raw_batch(written_by_v1)
    assert all(event.pop("sanitized") is False for event in decoded["events"])
    assert decoded == raw


def test_lookup_only_mode_refuses_unregistered_schema(registry: FakeRegistry) -> None:
    _, raw = stored("RawEventBatch.v1")
    with pytest.raises(ValueError, match=r"cannot find RawEventBatch v1 under subject 'secstream\.v1\.RawEventBatch'"):
        registry_codec(registry.url, auto_register=False).encode_raw_batch(raw)
    registry_codec(registry.url).encode_raw_batch(raw)
    assert registry_codec(registry.url, auto_register=False).encode_raw_batch(raw)[:5] == b"\x00\x00\x00\x00\x01"


def test_unreachable_registry_is_not_a_data_error(registry: FakeRegistry) -> None:
    url = registry.url
    registry.shutdown()
    registry.server_close()
    codec = registry_codec(url, client_conf={"max.retries": 0})
    _, raw = stored("RawEventBatch.v1")
    with pytest.raises(SchemaRegistryUnavailable):
        codec.encode_raw_batch(raw)
    with pytest.raises(SchemaRegistryUnavailable):
        codec.decode_raw_batch(b"\x00\x00\x00\x00\x07\x00")
    assert not isinstance(SchemaRegistryUnavailable("x"), DecodeError | EncodeError)


def test_codec_from_settings(registry: FakeRegistry) -> None:
    assert isinstance(codec_from_settings(SchemaRegistrySettings()).ids, type(Codec().ids))
    codec = codec_from_settings(SchemaRegistrySettings(url=registry.url, basic_auth_user_info="u:p"))
    _, raw = stored("RawEventBatch.v1")
    assert codec.encode_raw_batch(raw)[:5] == b"\x00\x00\x00\x00\x01"
