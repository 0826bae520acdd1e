"""``secstream replay``: re-read a bounded range of the raw or normalized topic and backfill a destination."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from secstream import clikit
from secstream.replay.core import TOPIC_KINDS, ReplayCounts, TopicKind

EXIT_FATAL = 3


def replay(
    ctx: typer.Context,
    topic: Annotated[str, typer.Option("--topic", help="raw (re-run rules over raw events) or normalized "
                                                       "(re-deliver rows as they are)")],
    start: Annotated[str, typer.Option("--from", help="ISO-8601 time (Kafka message time), offset or 'earliest'")],
    end: Annotated[str | None, typer.Option("--to", help="ISO-8601 time, offset or 'latest' (default: the end "
                                                         "offsets at start; the range is fixed then)")] = None,
    partitions: Annotated[str | None, typer.Option("--partitions", help="comma-separated partitions, e.g. 0,2 "
                                                                        "(default: all)")] = None,
    destination: Annotated[str | None, typer.Option("--destination", "-d", help="destination name (default: the "
                                                                                "only one configured)")] = None,
    rules: Annotated[str | None, typer.Option("--rules", help="raw only: a YAML file of rules, or comma-separated "
                                                              "names of configured rules (default: all rules)")] = None,
    name: Annotated[str | None, typer.Option("--name", help="names the run and its consumer group "
                                                            "<replay.group_prefix><name>")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count per partition and EventID; send nothing")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Replay a bounded range of Kafka offsets into a destination (backfill), without duplicating rows it holds."""
    from confluent_kafka import KafkaException

    from secstream.offsets import Position, PositionError
    from secstream.replay.core import RulesError
    from secstream.replay.reading import StalledError
    from secstream.replay.runner import choose_destination, make_plan, replay_group, run_replay
    from sinks.retry import FatalSinkError
    from sinks.runner import group_id

    settings = clikit.settings(ctx)
    from secstream.telemetry import setup_telemetry

    setup_telemetry(settings.telemetry, "secstream-replay")
    if topic not in TOPIC_KINDS:
        clikit.fail_config(f"--topic {topic!r}: expected raw or normalized")
    kind: TopicKind = "raw" if topic == "raw" else "normalized"
    try:
        first = Position.parse(start)
        last = Position.parse(end) if end else None
        chosen = [int(p) for p in partitions.split(",") if p.strip()] if partitions else None
        dest = choose_destination(settings, destination, kind, dry_run)
        plan = make_plan(settings, kind, first, last, chosen, dest, rules, name)
    except (PositionError, RulesError, ValueError) as exc:
        clikit.fail_config(str(exc))
    except KafkaException as exc:
        clikit.fail(f"cannot plan the replay: {exc.args[0].str() if exc.args else exc}")

    where = f"destination {dest.name}" if dest else "nowhere (dry run)"
    spans = ", ".join(f"{r.partition}: {r.start}..{r.end - 1}" for r in plan.ranges if r.size) or "nothing"
    clikit.console.print(f"replay {plan.name}: {plan.topic} offsets {spans} ({plan.messages:,} messages) → {where}"
                         + (f", rules {plan.fingerprint}" if plan.fingerprint else ""), highlight=False)
    if plan.left_to_live and dest is not None:
        cut = ", ".join(f"partition {p}: {n:,} messages" for p, n in sorted(plan.left_to_live.items()))
        clikit.console.print(f"left to the live sink (group {group_id(settings, dest)} has not committed past them "
                             f"yet; it delivers them itself): {cut}", highlight=False)
    if plan.live_behind:
        clikit.err_console.print(
            f"[yellow]warning:[/] {'; '.join(plan.live_behind)} not finished yet: rows they will still send are not "
            f"known to this replay and may arrive twice. Let them catch up first (or move the sink's group to the "
            f"end with `secstream groups reset`) for an exact result.", highlight=False)
    if not dry_run and not yes and sys.stdin.isatty():
        typer.confirm(f"Send to {where} (progress committed to group {replay_group(settings, plan.name)})?",
                      abort=True)

    started = time.monotonic()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[events]:,} events, {task.fields[rate]:,.0f}/s"), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), console=clikit.err_console, transient=False) as bar:
        task = bar.add_task("dry run" if dry_run else "replay", total=plan.messages or None, events=0, rate=0.0)

        def progress(counts: ReplayCounts) -> None:
            elapsed = max(time.monotonic() - started, 1e-6)
            bar.update(task, completed=counts.messages, events=counts.read, rate=counts.read / elapsed)

        try:
            result = run_replay(settings, plan, dry=dry_run, progress=progress)
        except FatalSinkError as exc:
            clikit.fail(str(exc), EXIT_FATAL)
        except StalledError as exc:
            clikit.fail(str(exc), EXIT_FATAL)
    c = result.counts
    unit = "events" if kind == "raw" else "rows"
    table = Table("", "count", title=f"replay {plan.name}" + (" (dry run)" if result.dry_run else ""))
    table.add_row("messages", f"{c.messages:,}")
    table.add_row(f"read ({unit})", f"{c.read:,}")
    table.add_row("would send" if result.dry_run else "sent (accepted)", f"{result.sent:,}")
    table.add_row("filtered by rules", f"{c.filtered:,}")
    table.add_row("duplicates skipped", f"{c.duplicates:,}")
    table.add_row("already delivered, skipped", f"{c.already_delivered:,}")
    table.add_row("dead-lettered", f"{result.dead_lettered:,}")
    clikit.console.print(table)
    if result.dry_run:
        by = Table("partition", "rows", title="per partition")
        for p, n in sorted(c.by_partition.items()):
            by.add_row(str(p), f"{n:,}")
        clikit.console.print(by)
        ids = Table("EventID", "rows", title="per EventID")
        for event_id, n in sorted(c.by_event_id.items(), key=lambda kv: -kv[1]):
            ids.add_row(str(event_id), f"{n:,}")
        clikit.console.print(ids)
