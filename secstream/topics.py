"""Topic provisioning: the same plan for the demo, the tests and the Helm Job. Idempotent."""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

from secstream.config import Settings
from secstream.kafka import client_config


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    purpose: str
    config: dict[str, str] = field(default_factory=dict)


@dataclass
class TopicResult:
    spec: TopicSpec
    action: str  # created | exists | partitions-added | error
    detail: str = ""


def planned_topics(settings: Settings) -> list[TopicSpec]:
    t = settings.topics
    retention = {"retention.ms": str(t.retention_ms)}
    return [
        TopicSpec(t.raw, t.raw_partitions, "raw event batches from producers and collectors", retention),
        TopicSpec(t.normalized, t.normalized_partitions, "SecurityEvent row batches, input of the sinks", retention),
        TopicSpec(t.dead_letter, t.dead_letter_partitions, "events and rows that could not be processed", retention),
        # The sink records what each destination has accepted; replay reads it to skip delivered ranges.
        TopicSpec(t.delivery_log, t.delivery_log_partitions, "per-destination delivered offset ranges",
                  {"retention.ms": "-1", "cleanup.policy": "compact,delete"}),
        # Latest summary per (destination, partition, Computer) kept for good; the last hour stays uncompacted so
        # `secstream status` can sum recent rows into events per minute.
        TopicSpec(t.status, t.status_partitions, "per-Computer delivery summaries for `secstream status`",
                  {"cleanup.policy": "compact", "retention.ms": "-1", "min.compaction.lag.ms": "3600000"}),
    ]


def ensure_topics(settings: Settings, specs: list[TopicSpec] | None = None, timeout: float = 30.0) -> list[TopicResult]:
    """Create what is missing, grow partition counts that are too small, leave the rest alone."""
    specs = planned_topics(settings) if specs is None else specs
    admin = AdminClient(client_config(settings.kafka))
    existing = admin.list_topics(timeout=timeout).topics
    results: list[TopicResult] = []
    to_create = [s for s in specs if s.name not in existing]
    if to_create:
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, settings.topics.replication_factor, config=s.config) for s in to_create],
            request_timeout=timeout,
        )
        for s in to_create:
            try:
                futures[s.name].result(timeout)
                results.append(TopicResult(s, "created"))
            except KafkaException as exc:
                err = exc.args[0]
                if err.name() == "TOPIC_ALREADY_EXISTS":
                    results.append(TopicResult(s, "exists"))
                else:
                    results.append(TopicResult(s, "error", err.str()))
    for s in specs:
        if s.name not in existing:
            continue
        have = len(existing[s.name].partitions)
        if have < s.partitions:
            fut = admin.create_partitions([NewPartitions(s.name, s.partitions)])[s.name]
            try:
                fut.result(timeout)
                results.append(TopicResult(s, "partitions-added", f"{have} -> {s.partitions}"))
            except KafkaException as exc:
                results.append(TopicResult(s, "error", exc.args[0].str()))
        else:
            detail = f"has {have} partitions"
            if have > s.partitions:
                detail += f" (more than the {s.partitions} planned)"
            results.append(TopicResult(s, "exists", detail))
    order = {s.name: i for i, s in enumerate(specs)}
    return sorted(results, key=lambda r: order[r.spec.name])


def delete_topics(settings: Settings, names: list[str], timeout: float = 30.0) -> None:
    admin = AdminClient(client_config(settings.kafka))
    for fut in admin.delete_topics(names, operation_timeout=timeout).values():
        try:
            fut.result(timeout)
        except KafkaException as exc:
            if exc.args[0].name() != "UNKNOWN_TOPIC_OR_PART":
                raise
