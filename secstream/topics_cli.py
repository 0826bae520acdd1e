"""``secstream topics create|list``."""

from __future__ import annotations

import typer
from rich.table import Table

from secstream import clikit
from secstream.broker import is_reachable
from secstream.kafka import client_config
from secstream.topics import ensure_topics, planned_topics

topics_app = typer.Typer(help="Provision the pipeline's topics.", no_args_is_help=True)


@topics_app.command("create")
def create(ctx: typer.Context) -> None:
    """Create the raw, normalised, dead-letter and internal topics (idempotent)."""
    s = clikit.settings(ctx)
    if not is_reachable(s.kafka.bootstrap_servers, timeout=10):
        clikit.fail(f"Kafka at {s.kafka.bootstrap_servers} is unreachable (check kafka.bootstrap_servers and TLS/SASL)")
    results = ensure_topics(s)
    table = Table("topic", "partitions", "result", "purpose")
    for r in results:
        table.add_row(r.spec.name, str(r.spec.partitions), f"{r.action} {r.detail}".strip(), r.spec.purpose)
    clikit.console.print(table)
    if any(r.action == "error" for r in results):
        raise typer.Exit(1)


@topics_app.command("list")
def list_topics(ctx: typer.Context) -> None:
    """Show the planned topics and what the cluster has."""
    from confluent_kafka.admin import AdminClient

    s = clikit.settings(ctx)
    existing = AdminClient(client_config(s.kafka)).list_topics(timeout=10).topics
    table = Table("topic", "planned partitions", "actual partitions")
    for spec in planned_topics(s):
        have = existing.get(spec.name)
        table.add_row(spec.name, str(spec.partitions), str(len(have.partitions)) if have else "missing")
    clikit.console.print(table)
