"""``secstream stream``: run the stream worker (Faust's own worker loop) until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import cast

import typer

from secstream import clikit
from secstream.config import Settings
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
    if create_topics:
        errors = [r for r in ensure_topics(settings, stage_topics(settings)) if r.action == "error"]
        if errors:
            clikit.fail("; ".join(f"topic {r.spec.name}: {r.detail}" for r in errors))
    run_worker(settings, rules)


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
    finally:
        stage.state.ready = False
        if health is not None:
            health.stop()
        if not stage.state.live:
            log.error("the stream worker stopped after a failure: %s", stage.state.detail)
            raise SystemExit(1)
