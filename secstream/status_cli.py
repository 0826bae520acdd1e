"""``secstream status``: per-Computer connector health and the lag of every stage."""

from __future__ import annotations

from typing import Annotated

import orjson
import typer
from rich.table import Table

from secstream import clikit
from secstream.status import StatusReport, ago, build_report, parse_duration


def status(
    ctx: typer.Context,
    silent_after: Annotated[str | None, typer.Option(
        "--silent-after", help="flag Computers with no rows received for this long, e.g. 15m, 2h "
                               "(default status.silent_after_seconds)")] = None,
    since: Annotated[str | None, typer.Option(
        "--since", help="read the summaries of this past period, e.g. 24h, 30d "
                        "(default status.lookback_seconds)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    fail_on_silent: Annotated[bool, typer.Option(
        "--fail-on-silent", help="exit 1 when a Computer is silent (for cron jobs and alerts)")] = False,
) -> None:
    """Per Computer: last event time, last data received in the workspace, events per minute, lag; silent hosts."""
    from confluent_kafka import KafkaException

    from secstream.offsets import PositionError

    settings = clikit.settings(ctx)
    try:
        silent_seconds = parse_duration(silent_after) if silent_after else None
        lookback_seconds = parse_duration(since) if since else None
    except ValueError as exc:
        clikit.fail_config(str(exc))
    try:
        report = build_report(settings, silent_after_seconds=silent_seconds, lookback_seconds=lookback_seconds)
    except PositionError:
        clikit.fail(f"topic {settings.topics.status} does not exist: run `secstream topics create`, then let the "
                    "sinks deliver for a while")
    except KafkaException as exc:
        clikit.fail(f"Kafka at {settings.kafka.bootstrap_servers}: {exc.args[0].str() if exc.args else exc}")
    if as_json:
        typer.echo(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        render(report)
    if fail_on_silent and report.silent:
        raise typer.Exit(1)


def render(report: StatusReport) -> None:
    now = report.generated_at.timestamp()
    window_minutes = report.rate_window_seconds / 60
    computers = Table("Computer", "Destination", "Last event (TimeGenerated)", "Last received",
                      f"Events/min ({window_minutes:g}m)", "Lag stream / sink", "Status",
                      title="Computers", title_justify="left")
    for c in report.computers:
        last_event = "-" if c.last_time_generated is None else c.last_time_generated.strftime("%Y-%m-%d %H:%M:%S")
        received = f"{c.last_received.strftime('%Y-%m-%d %H:%M:%S')} ({ago(now - c.last_received.timestamp())})"
        lag = f"{'-' if c.stream_lag is None else c.stream_lag} / {'-' if c.sink_lag is None else c.sink_lag}"
        state = "[bold red]SILENT[/]" if c.silent else "[green]OK[/]"
        computers.add_row(c.computer, c.destination, last_event, received, f"{c.events_per_minute:,.1f}", lag, state)
    if not report.computers:
        computers.caption = "no summaries yet: the sinks write them after delivering rows"
    clikit.console.print(computers)
    stages = Table("Stage", "Consumer group", "Topic", "Lag (records)", "Per partition committed/end",
                   title="Stages", title_justify="left")
    for s in report.stages:
        if s.error is not None:
            stages.add_row(s.stage, s.group, s.topic, "?", f"[red]{s.error}[/]")
            continue
        detail = "  ".join(f"p{p}:{'-' if c is None else c}/{e}" for p, (c, e) in sorted(s.partitions.items()))
        stages.add_row(s.stage, s.group, s.topic, f"{s.total:,}", detail)
    clikit.console.print(stages)
    silent = report.silent
    threshold = f"{report.silent_after_seconds / 60:g} min"
    if silent:
        clikit.console.print(f"[bold red]{len(silent)} silent[/] (nothing received for more than {threshold}): "
                             + ", ".join(sorted({c.computer for c in silent})))
    else:
        clikit.console.print(f"{len({c.computer for c in report.computers})} Computers, none silent "
                             f"for more than {threshold}")
