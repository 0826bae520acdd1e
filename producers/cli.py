"""``secstream produce`` (files, folders, archives -> Kafka or collectors) and ``secstream collect`` (the gateway)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from producers.adapters.sources import FORMATS, SourceError, discover
from producers.adapters.wineventlog import LiveEventLogSource
from producers.batching import OutgoingBatch
from producers.stage import BatchSink, EventSource, ProducerStage, SinkFactory
from secstream import clikit
from secstream.config import Settings
from secstream.lifecycle import run_stage
from secstream.telemetry import setup_telemetry

log = logging.getLogger(__name__)


def kafka_sink_factory(settings: Settings) -> SinkFactory:
    from producers.kafka_sink import KafkaBatchSink

    def build(agent_id: str, on_delivered: Callable[[OutgoingBatch], None]) -> BatchSink:
        p = settings.producer
        return KafkaBatchSink(settings, agent_id, on_delivered, p.max_in_flight_bytes, p.compression)

    return build


def collector_sink_factory(settings: Settings, stop: threading.Event) -> SinkFactory:
    from producers.agent import CollectorSink

    def build(agent_id: str, on_delivered: Callable[[OutgoingBatch], None]) -> BatchSink:
        return CollectorSink.from_settings(settings, agent_id, on_delivered, stop)

    return build


def produce(
    ctx: typer.Context,
    paths: Annotated[list[Path] | None, typer.Argument(help="EVTX/XML/JSON files, folders, .zip/.tar.gz "
                                                      "archives")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help=f"input format: {', '.join(FORMATS)}")] = "auto",
    follow: Annotated[bool, typer.Option("--follow", help="keep reading what is appended to the files")] = False,
    collector: Annotated[list[str], typer.Option("--collector", help="send to this collector URL instead of "
                                                 "Kafka (repeat for failover)")] = [],  # noqa: B006
    state_file: Annotated[Path | None, typer.Option("--state-file", help="checkpoint file "
                                                    "(default producer.state_file)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    channel: Annotated[list[str], typer.Option("--channel", help="read this channel of the live Windows Event "
                                               "Log (Windows only; repeatable), e.g. Security")] = [],  # noqa: B006
) -> None:
    """Read Windows events and send them, batched per host, to Kafka (or to collectors)."""
    settings = clikit.settings(ctx)
    try:
        if state_file is not None:
            settings.producer.state_file = state_file
        if collector:
            settings.producer.collector_urls = list(collector)
    except ValueError as exc:
        clikit.fail_config(str(exc))
    if channel and sys.platform != "win32":
        clikit.fail_config("--channel reads the live Windows Event Log and needs Windows")
    try:
        sources: list[EventSource] = list(discover(list(paths or []), fmt))
    except SourceError as exc:
        clikit.fail_config(str(exc))
    sources.extend(LiveEventLogSource(name) for name in channel)
    if not sources:
        clikit.fail_config("no input: give files or folders, or --channel on Windows")
    stop = threading.Event()
    if settings.producer.collector_urls:
        factory = collector_sink_factory(settings, stop)
    else:
        factory = kafka_sink_factory(settings)
    from secstream.health import start_health_server
    from secstream.telemetry import setup_telemetry, shutdown_telemetry

    stage = ProducerStage(settings, sources, factory, follow=follow, stop=stop)
    setup_telemetry(settings.telemetry, "secstream-producer")
    health = start_health_server(settings, [stage.state], check_kafka=not settings.producer.collector_urls)
    with Progress(
        SpinnerColumn(), TextColumn("[bold]producing"), BarColumn(), MofNCompleteColumn(),
        TextColumn("sources  {task.fields[read]:,} read  {task.fields[delivered]:,} delivered  {task.fields[detail]}"),
        TimeElapsedColumn(), console=clikit.err_console, disable=quiet, transient=False,
    ) as progress:
        task = progress.add_task("produce", total=len(sources), read=0, delivered=0, detail="")

        def update() -> None:
            progress.update(task, completed=stage.sources_done, read=stage.events_read,
                            delivered=stage.events_delivered, detail=stage.state.detail)

        try:
            run_stage(stage, stop=stop, checkpoint_seconds=0.5, on_checkpoint=update)
        except ValueError as exc:  # a damaged state file, a bad rule
            clikit.fail_config(str(exc))
        except RuntimeError as exc:  # refused agent token, fatal Kafka error
            clikit.fail(str(exc))
        finally:
            if health is not None:
                health.stop()
            shutdown_telemetry()
        update()
    clikit.console.print(
        f"read {stage.events_read:,} events from {len(sources)} sources, delivered {stage.events_delivered:,}"
        + (f", {stage.issues} read problems (logged; in the dead-letter topic unless in agent mode)"
           if stage.issues else ""),
        highlight=False,
    )
    if stage.events_delivered < stage.events_sent:
        clikit.fail(f"{stage.events_sent - stage.events_delivered:,} events not acknowledged yet; "
                    "run again to resume from the last delivered position")



def collect(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option("--host", help="listen address (default collector.host)")] = None,
    port: Annotated[int | None, typer.Option("--port", help="listen port (default collector.port)")] = None,
) -> None:
    """Run the HTTPS collector gateway: agents POST batches, answered 200 once Kafka has them."""
    import asyncio

    from producers.collector import build_collector, serve, tls_context

    settings = clikit.settings(ctx)
    cfg = settings.collector
    setup_telemetry(settings.telemetry, "secstream-collector")  # the gateway serves its own /healthz
    try:
        collector = build_collector(settings)
        context = tls_context(cfg)
    except (ValueError, OSError) as exc:
        clikit.fail_config(str(exc))
    if context is None:
        log.warning("collector.tls_cert_file is not set: serving plain HTTP (only for tests and local use)")
    listen_host, listen_port = host or cfg.host, cfg.port if port is None else port
    clikit.err_console.print(
        f"collector {collector.collector_id} listening on {'https' if context else 'http'}://{listen_host}:"
        f"{listen_port}/v1/batches -> topic {settings.topics.raw}", highlight=False)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(collector, listen_host, listen_port, context, stop=stop)

    asyncio.run(main())
