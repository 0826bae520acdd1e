"""``secstream schemas list|register|xpath|decode``: schema ids, registration, event-set queries, inspection."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from schemas.avsc import LOCAL_ID_BASE, message_schema, versions
from schemas.codec import Codec, DecodeError
from schemas.event_sets import EVENT_SETS, event_set_xpath
from schemas.registry import RegistrySchemaIds, SchemaRegistryUnavailable, codec_from_settings
from secstream import clikit

schemas_app = typer.Typer(help="Schema ids and registration, event-set XPath queries, message inspection.",
                          no_args_is_help=True)


class Kind(StrEnum):
    raw = "raw"
    security = "security"


def _registry_codec(ctx: typer.Context) -> Codec:
    section = clikit.settings(ctx).schema_registry
    if not section.url:
        clikit.fail_config("schema_registry.url is not set (secstream uses local schema ids without it)")
    return codec_from_settings(section)


@schemas_app.command("list")
def list_schemas(ctx: typer.Context) -> None:
    """Every schema version with its local id, and its registry id when a registry is configured."""
    section = clikit.settings(ctx).schema_registry
    lookup = None
    if section.url:
        codec = codec_from_settings(section.model_copy(update={"auto_register": False}))
        lookup = codec.ids if isinstance(codec.ids, RegistrySchemaIds) else None
    table = Table("schema", "version", "local id", "subject", "registry id")
    for name in LOCAL_ID_BASE:
        for version in versions(name):
            schema = message_schema(name, version)
            registry_id = "-"
            if lookup is not None:
                try:
                    registry_id = str(lookup.writer_id(schema))
                except ValueError:
                    registry_id = "not registered"
                except SchemaRegistryUnavailable as exc:
                    clikit.fail(str(exc))
            subject = lookup.subject(schema) if lookup is not None else schema.full_name
            table.add_row(name, f"v{version}", str(schema.local_id), subject, registry_id)
    clikit.console.print(table)


@schemas_app.command("register")
def register(ctx: typer.Context) -> None:
    """Register the current schema versions with the configured schema registry (idempotent)."""
    codec = _registry_codec(ctx)
    if not isinstance(codec.ids, RegistrySchemaIds):
        clikit.fail_config("schema_registry.url is not set")
    codec.ids.auto_register = True
    for schema in (codec.raw_schema, codec.security_schema):
        try:
            schema_id = codec.ids.writer_id(schema)
        except (ValueError, SchemaRegistryUnavailable) as exc:
            clikit.fail(str(exc))
        clikit.console.print(f"{codec.ids.subject(schema)}: id {schema_id} ({schema.name} v{schema.version})",
                             highlight=False)


@schemas_app.command("xpath")
def xpath(
    name: Annotated[str, typer.Argument(help=f"event set: {', '.join(EVENT_SETS)}")],
    as_json: Annotated[bool, typer.Option("--json", help="a JSON array, as a DCR's xPathQueries")] = False,
) -> None:
    """The AMA-style XPath queries of an event set, as the Azure portal writes them into a DCR."""
    if name not in EVENT_SETS:
        clikit.fail_config(f"unknown event set {name!r}; known: {', '.join(EVENT_SETS)}")
    queries = event_set_xpath(name)
    if as_json:
        print(json.dumps(queries, indent=2))
    else:
        for query in queries:
            print(query)


@schemas_app.command("decode")
def decode(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="a Kafka message value (e.g. from a dead-letter record); - = stdin")],
    kind: Annotated[Kind, typer.Option("--kind", help="raw = RawEventBatch, security = SecurityEventBatch")] = Kind.raw,
) -> None:
    """Print a message value as JSON, or why it cannot be read (exit 1)."""
    data = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    codec = codec_from_settings(clikit.settings(ctx).schema_registry)
    try:
        batch = codec.decode_raw_batch(data) if kind is Kind.raw else codec.decode_security_batch(data)
    except (DecodeError, SchemaRegistryUnavailable) as exc:
        clikit.fail(str(exc))
    print(json.dumps(batch, indent=1, ensure_ascii=False))
