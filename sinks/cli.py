"""``secstream sink``: deliver the normalized topic to the configured destinations."""

from __future__ import annotations

import logging
import threading
from typing import Annotated

import typer

from secstream import clikit

EXIT_FATAL = 3


def sink(
    ctx: typer.Context,
    destination: Annotated[list[str], typer.Option(
        "--destination", "-d", help="destination name (repeatable); default: every configured destination")] = [],  # noqa: B006
    until_idle: Annotated[float | None, typer.Option(
        "--until-idle", help="stop after this many seconds with nothing to consume or upload")] = None,
) -> None:
    """Deliver SecurityEvent rows to the workspace(s), one consumer group per destination."""
    from secstream.health import start_health_server
    from secstream.telemetry import setup_telemetry, shutdown_telemetry
    from sinks.retry import FatalSinkError
    from sinks.runner import SinkStage, run_sinks, select_destinations

    settings = clikit.settings(ctx)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("azure").setLevel(logging.WARNING)  # the SDK logs every request and response at INFO
    try:
        chosen = select_destinations(settings, destination)
    except ValueError as exc:
        clikit.fail_config(str(exc))
    setup_telemetry(settings.telemetry, "secstream-sink")
    stages = [SinkStage(settings, d, idle_exit_seconds=until_idle) for d in chosen]
    health = start_health_server(settings, [s.state for s in stages])
    try:
        run_sinks(settings, stages, threading.Event())
    except FatalSinkError as exc:
        clikit.fail(str(exc), EXIT_FATAL)
    finally:
        if health is not None:
            health.stop()
        shutdown_telemetry()
    for stage in stages:
        t = stage.totals
        clikit.console.print(
            f"{stage.destination.name}: {t['messages']:,} messages, {t['rows_accepted']:,} rows accepted, "
            f"{t['rows_dead_lettered']:,} dead-lettered, {t['requests']:,} requests, "
            f"{t['reemissions_skipped']:,} stream re-emissions skipped", highlight=False)
