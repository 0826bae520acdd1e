"""Schema ids from a Confluent Schema Registry (optional; without one, ids come from the ``.avsc`` files).

Each message schema is registered under the subject ``<subject_prefix><full record name>`` (the record-name
strategy, e.g. ``secstream.v1.RawEventBatch``), so one subject serves every topic that carries the type. The
registry only hands out ids and stores schemas: encoding and decoding stay schemaless fastavro in the Confluent wire
format, so a batch written here is readable by any Confluent Avro deserializer, and the other way round.

Decoding data of an id the codec has not seen fetches that schema once and reads it through Avro schema
resolution into the current version's shape; if its parsing canonical form is the current one, the fast path is
used. A registry that cannot be reached raises ``SchemaRegistryUnavailable`` (retry later: the data is fine), a
registry that does not know the id raises ``DecodeError`` (the data cannot be read).
"""

from __future__ import annotations

import json
import threading
from typing import Any

from fastavro import parse_schema
from fastavro.schema import to_parsing_canonical_form

from schemas.avsc import MessageSchema
from schemas.codec import Codec, DecodeError


class SchemaRegistryUnavailable(RuntimeError):
    """The schema registry could not be asked (network, auth, 5xx). Retry; do not dead-letter the data."""


class RegistrySchemaIds:
    """``schemas.codec.SchemaIds`` backed by a ``confluent_kafka.schema_registry.SchemaRegistryClient``."""

    def __init__(self, client: Any, subject_prefix: str = "", auto_register: bool = True) -> None:
        self.client = client
        self.subject_prefix = subject_prefix
        self.auto_register = auto_register
        self._lock = threading.Lock()

    def subject(self, schema: MessageSchema) -> str:
        return f"{self.subject_prefix}{schema.full_name}"

    def writer_id(self, schema: MessageSchema) -> int:
        from confluent_kafka.schema_registry import Schema
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        subject = self.subject(schema)
        registry_schema = Schema(schema.to_json(), "AVRO")
        try:
            with self._lock:
                if self.auto_register:
                    return int(self.client.register_schema(subject, registry_schema))
                return int(self.client.lookup_schema(subject, registry_schema).schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code in (404, 409, 422):
                action = "register" if self.auto_register else "find"
                raise ValueError(
                    f"schema registry: cannot {action} {schema.name} v{schema.version} under subject {subject!r}"
                    f" (HTTP {exc.http_status_code}, error {exc.error_code}: {exc.error_message})"
                ) from None
            raise SchemaRegistryUnavailable(f"schema registry: {exc.error_message} (HTTP {exc.http_status_code})") \
                from None
        except Exception as exc:
            raise SchemaRegistryUnavailable(f"schema registry unreachable: {type(exc).__name__}: {exc}") from None

    def writer_schema(self, expected: MessageSchema, schema_id: int) -> Any:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            with self._lock:
                registered = self.client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise DecodeError(f"{expected.name}: schema id {schema_id} is not in the schema registry") from None
            raise SchemaRegistryUnavailable(f"schema registry: {exc.error_message} (HTTP {exc.http_status_code})") \
                from None
        except Exception as exc:
            raise SchemaRegistryUnavailable(f"schema registry unreachable: {type(exc).__name__}: {exc}") from None
        if (registered.schema_type or "AVRO") != "AVRO":
            raise DecodeError(f"{expected.name}: schema id {schema_id} is a {registered.schema_type} schema")
        try:
            definition = json.loads(registered.schema_str)
            name = f"{definition.get('namespace', '')}.{definition['name']}".lstrip(".")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DecodeError(f"{expected.name}: schema id {schema_id} is not an Avro record schema ({exc})") from None
        aliases = set(definition.get("aliases") or ()) | {expected.full_name}
        if name not in aliases:
            raise DecodeError(f"expected a {expected.name}, got schema id {schema_id} = {name}")
        if to_parsing_canonical_form(definition) == to_parsing_canonical_form(expected.definition):
            return expected.parsed
        return parse_schema(definition)


def registry_codec(url: str, *, basic_auth_user_info: str | None = None, ssl_ca_location: str | None = None,
                   subject_prefix: str = "", auto_register: bool = True,
                   client_conf: dict[str, Any] | None = None) -> Codec:
    """A Codec whose schema ids come from the registry at ``url``.

    ``client_conf``: further SchemaRegistryClient settings, e.g. ``{"max.retries": 0, "timeout": 5}``.
    """
    from confluent_kafka.schema_registry import SchemaRegistryClient

    conf: dict[str, Any] = {"url": url, **(client_conf or {})}
    if basic_auth_user_info:
        conf["basic.auth.user.info"] = basic_auth_user_info
    if ssl_ca_location:
        conf["ssl.ca.location"] = ssl_ca_location
    return Codec(RegistrySchemaIds(SchemaRegistryClient(conf), subject_prefix, auto_register))


def codec_from_settings(section: Any) -> Codec:
    """The Codec that ``Settings.schema_registry`` asks for: registry-backed when a URL is set, local otherwise."""
    if not getattr(section, "url", None):
        return Codec()
    secret = section.basic_auth_user_info
    return registry_codec(
        section.url,
        basic_auth_user_info=secret.get_secret_value() if secret is not None else None,
        ssl_ca_location=str(section.ssl_ca_location) if section.ssl_ca_location else None,
        subject_prefix=section.subject_prefix,
        auto_register=section.auto_register,
    )
