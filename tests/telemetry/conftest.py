"""Fixtures for the telemetry tests: a throw-away topic on the session broker, a child-process runner."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from secstream.config import Settings
from secstream.topics import TopicSpec, delete_topics, ensure_topics

CHILD = Path(__file__).with_name("exporter_child.py")


@pytest.fixture
def topics(settings: Settings) -> Iterator[tuple[str, str]]:
    """``settings.topics.raw`` and ``.normalized``, created with 3 partitions and deleted afterwards."""
    names = [settings.topics.raw, settings.topics.normalized]
    results = ensure_topics(settings, [TopicSpec(name, 3, "telemetry test") for name in names])
    assert all(r.action in ("created", "exists") for r in results), results
    yield names[0], names[1]
    delete_topics(settings, names)


@pytest.fixture
def topic(topics: tuple[str, str]) -> str:
    return topics[0]


def run_child(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run the exporter child script in a fresh interpreter (the OpenTelemetry providers are set once per
    process, so each exporter is checked where it is the first and only one)."""
    return subprocess.run([sys.executable, str(CHILD), *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
