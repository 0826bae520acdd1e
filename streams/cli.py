"""``secstream stream``: run the stream worker (Faust's own worker loop) until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import cast

import typer
from confluent_kafka import KafkaException

from secstream import clikit
from secstream.config import Settings
from secstream.kafka import client_config
from secstream.topics import TopicSpec, ensure_topics, planned_topics

log = logging.getLogger(__name__)


def stage_topics(settings: Settings) -> list[TopicSpec]:
    """Topics the worker reads and writes, and the dedup changelog (partitions matching the raw topic)."""
    from streams.app import changelog_topic_name

    t = settings.topics
    mine = {t.raw, t.normalized, t.dead_letter}
    return [spec for spec in planned_topics(settings) if spec.name in mine] + [
        TopicSpec(changelog_topic_name(settings), t.raw_partitions, "dedup state of the stream stage",
                  {"cleanup.policy": "compact", "retention.ms": "-1"}),
    ]


def stream(
    ctx: typer.Context,
    create_topics: bool = typer.Option(True, help="create missing topics (and the dedup changelog) first"),
) -> None:
    """Filter, deduplicate and normalise raw event batches into SecurityEvent batches (a Faust worker)."""
    settings = clikit.settings(ctx)
    from streams.filtering import RuleError, RuleLike, RuleSet

    try:
        rules = RuleSet.compile(cast(Sequence[RuleLike], settings.rules))
    except RuleError as exc:
        clikit.fail_config(str(exc))
    if settings.topics.normalized_partitions != settings.topics.raw_partitions:
        log.warning("topics.normalized_partitions (%d) differs from topics.raw_partitions (%d): rows go to "
                    "partition (raw partition mod normalized partitions)",
                    settings.topics.normalized_partitions, settings.topics.raw_partitions)
    if not wait_for_kafka(settings):
        clikit.fail(f"Kafka at {settings.kafka.bootstrap_servers} was not reachable within "
                    f"stream.broker_wait_seconds ({settings.stream.broker_wait_seconds:.0f} s); check "
                    "kafka.bootstrap_servers and the TLS/SASL settings")
    if create_topics:
        errors = [r for r in ensure_topics(settings, stage_topics(settings)) if r.action == "error"]
        if errors:
            clikit.fail("; ".join(f"topic {r.spec.name}: {r.detail}" for r in errors))
    run_worker(settings, rules)


def wait_for_kafka(settings: Settings, log_every: float = 10.0) -> bool:
    """Until a metadata request succeeds (True) or ``stream.broker_wait_seconds`` pass (False).

    A worker started while the broker is down (a restart, a rolling upgrade) waits instead of exiting: the Faust
    worker itself gives up on its first connection error.
    """
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({**client_config(settings.kafka), "log_level": 0})
    started = time.monotonic()
    last_log = started - log_every
    while True:
        try:
            admin.list_topics(timeout=5)
            if time.monotonic() - started > 1.0:
                log.info("Kafka at %s is reachable; starting", settings.kafka.bootstrap_servers)
            return True
        except KafkaException as exc:
            waited = time.monotonic() - started
            if waited >= settings.stream.broker_wait_seconds:
                return False
            if time.monotonic() - last_log >= log_every:
                last_log = time.monotonic()
                log.warning("Kafka at %s is not reachable yet (%s); retrying (waited %.0f s of %.0f s)",
                            settings.kafka.bootstrap_servers, exc.args[0].str() if exc.args else exc, waited,
                            settings.stream.broker_wait_seconds)
            time.sleep(1.0)


def run_worker(settings: Settings, rules: object) -> None:
    s = settings.stream
    if s.uvloop:
        try:
            import mode.loop

            mode.loop.use("uvloop")
        except ImportError:
            log.info("uvloop is not installed; using asyncio's default loop")
    import faust

    from secstream.health import start_health_server
    from secstream.telemetry import setup_telemetry
    from streams.app import build_app
    from streams.filtering import RuleSet

    setup_telemetry(settings.telemetry, "secstream-stream")
    app, stage = build_app(settings, rules if isinstance(rules, RuleSet) else None)
    health = start_health_server(settings, [stage.state])
    worker = faust.Worker(app, loglevel=s.log_level, quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        if exc.code and _lost_kafka(exc):
            if health is not None:
                health.stop()
            _start_again(settings, stage.assigned_once)
        raise
    finally:
        stage.state.ready = False
        if health is not None:
            health.stop()
        if not stage.state.live:
            log.error("the stream worker stopped: %s", stage.state.detail)
            raise SystemExit(1)


_WAITING_SINCE = "SECSTREAM_STREAM_WAITING_FOR_KAFKA_SINCE"


def _lost_kafka(exc: BaseException) -> bool:
    """Whether the worker stopped because it could not reach Kafka (Faust gives up on its first try)."""
    from aiokafka.errors import KafkaConnectionError

    seen: BaseException | None = exc
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:  # mode re-raises a crash "from" itself: a cycle
        if isinstance(seen, KafkaConnectionError):
            return True
        visited.add(id(seen))
        seen = seen.__cause__ or seen.__context__
    return False


def _start_again(settings: Settings, was_running: bool) -> None:
    """Wait for Kafka and replace this process with a fresh worker (same command line and process id), within
    ``stream.broker_wait_seconds`` of the first failure since the worker last ran; past it, return (the caller
    exits non-zero)."""
    inherited = None if was_running else os.environ.get(_WAITING_SINCE)
    since = float(inherited or time.time())
    left = settings.stream.broker_wait_seconds - (time.time() - since)
    if left <= 0:
        log.error("Kafka at %s has not been usable for stream.broker_wait_seconds (%.0f s); giving up",
                  settings.kafka.bootstrap_servers, settings.stream.broker_wait_seconds)
        return
    log.warning("the worker lost Kafka at %s while starting; waiting for it, then starting again",
                settings.kafka.bootstrap_servers)
    if not wait_for_kafka(settings.model_copy(update={
            "stream": settings.stream.model_copy(update={"broker_wait_seconds": left})})):
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, _WAITING_SINCE: str(since)})

