"""Topic provisioning against the real broker."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from secstream.config import Settings
from secstream.topics import delete_topics, ensure_topics, planned_topics

pytestmark = pytest.mark.integration


def test_create_is_idempotent_and_grows_partitions(settings: Settings) -> None:
    names = [s.name for s in planned_topics(settings)]
    try:
        first = ensure_topics(settings)
        assert [r.action for r in first] == ["created"] * len(names)
        second = ensure_topics(settings)
        assert [r.action for r in second] == ["exists"] * len(names)

        admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
        topics = admin.list_topics(timeout=10).topics
        assert len(topics[settings.topics.raw].partitions) == 3
        assert len(topics[settings.topics.dead_letter].partitions) == 1

        cfg = admin.describe_configs([ConfigResource("topic", settings.topics.raw)])
        described = next(iter(cfg.values())).result()
        assert described["retention.ms"].value == str(settings.topics.retention_ms)

        settings.topics.raw_partitions = 5
        third = ensure_topics(settings)
        grown = next(r for r in third if r.spec.name == settings.topics.raw)
        assert grown.action == "partitions-added" and grown.detail == "3 -> 5"
        assert len(admin.list_topics(timeout=10).topics[settings.topics.raw].partitions) == 5
    finally:
        delete_topics(settings, names)
