"""``secstream groups show|reset``: see and move a consumer group's committed offsets."""

from __future__ import annotations

import uuid
from typing import Annotated

import typer
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from rich.table import Table

from secstream import clikit
from secstream.kafka import client_config, consumer_config
from secstream.offsets import Position, PositionError, committed_offsets, partitions_of, resolve, set_committed_offsets

groups_app = typer.Typer(help="Inspect and reset consumer groups (stop the group's workers before a reset).",
                         no_args_is_help=True)


def _lookup_consumer(ctx: typer.Context) -> Consumer:
    # A throwaway group id: this consumer only reads metadata and watermarks, it never joins the group it inspects.
    s = clikit.settings(ctx)
    return Consumer(consumer_config(s.kafka, group_id=f"secstream-inspect-{uuid.uuid4().hex[:8]}"))


@groups_app.command("show")
def show(ctx: typer.Context, group: Annotated[str, typer.Option("--group", "-g", help="consumer group id")]) -> None:
    """Committed offset, end offset and lag per partition."""
    s = clikit.settings(ctx)
    admin = AdminClient(client_config(s.kafka))
    try:
        committed = committed_offsets(admin, group)
    except KafkaException as exc:
        clikit.fail(f"cannot read offsets of group {group!r}: {exc.args[0].str()}")
    if not committed:
        clikit.console.print(f"group {group!r} has no committed offsets")
        return
    consumer = _lookup_consumer(ctx)
    table = Table("topic", "partition", "committed", "end", "lag", title=f"group {group}")
    total = 0
    for (topic, partition), offset in sorted(committed.items()):
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        lag = max(0, high - offset)
        total += lag
        table.add_row(topic, str(partition), str(offset), str(high), str(lag))
    consumer.close()
    clikit.console.print(table)
    clikit.console.print(f"total lag: {total}")


@groups_app.command("reset")
def reset(
    ctx: typer.Context,
    group: Annotated[str, typer.Option("--group", "-g", help="consumer group id")],
    to_time: Annotated[str, typer.Option("--to-time", help="ISO-8601 time, offset, 'earliest' or 'latest'")],
    topic: Annotated[str | None, typer.Option("--topic", help="topic (default: every topic the group has)")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Move the group's committed offsets to a time (resolved per partition with offsets_for_times)."""
    s = clikit.settings(ctx)
    try:
        position = Position.parse(to_time)
    except PositionError as exc:
        clikit.fail_config(str(exc))
    admin = AdminClient(client_config(s.kafka))
    committed = committed_offsets(admin, group)
    topics = [topic] if topic else sorted({t for t, _ in committed})
    if not topics:
        clikit.fail(f"group {group!r} has no committed offsets; name the topic with --topic")
    consumer = _lookup_consumer(ctx)
    plans: dict[str, dict[int, int]] = {}
    table = Table("topic", "partition", "committed now", "new offset", title=f"reset {group} to {position.describe()}")
    try:
        for t in topics:
            parts = partitions_of(consumer, t)
            plans[t] = resolve(consumer, t, parts, position)
            for p in parts:
                now = committed.get((t, p))
                table.add_row(t, str(p), "-" if now is None else str(now), str(plans[t][p]))
    except PositionError as exc:
        clikit.fail(str(exc))
    finally:
        consumer.close()
    clikit.console.print(table)
    if not yes and not typer.confirm("Rewrite these committed offsets?", default=False):
        clikit.console.print("nothing changed")
        raise typer.Exit(1)
    for t, offsets in plans.items():
        try:
            set_committed_offsets(admin, group, t, offsets)
        except KafkaException as exc:
            clikit.fail(f"Kafka refused the reset of {group!r} on {t}: {exc.args[0].str()} "
                        "(stop every worker of the group first)")
    clikit.console.print(f"group {group} reset on {', '.join(topics)}")
