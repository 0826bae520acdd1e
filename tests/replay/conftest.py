"""Replay fixtures: the sink's per-test topics and destination on the session workspace emulator."""

from tests.sinks.conftest import sink_settings

__all__ = ["sink_settings"]
