"""/readyz of a real sink stage (run under ``observed_stage``) flips when its broker goes away and comes back."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from secstream.broker import EmbeddedBroker
from secstream.config import Settings
from secstream.health import observed_stage
from secstream.lifecycle import run_stage
from secstream.topics import ensure_topics
from sinks.runner import SinkStage
from tests.conftest import free_port
from tests.telemetry.test_health import _get as probe
from tests.telemetry.test_health import _wait_for as eventually
from workspace.testing import WorkspaceEmulator

pytestmark = pytest.mark.integration


def test_sink_readiness_follows_the_broker(tmp_path: Path, workspace_emulator: WorkspaceEmulator) -> None:
    own_broker = EmbeddedBroker(data_dir=tmp_path / "broker", port=free_port())
    own_broker.start()
    port = free_port()
    settings = Settings(kafka={"bootstrap_servers": own_broker.bootstrap},
                        topics={"raw_partitions": 1, "normalized_partitions": 1},
                        destinations=[workspace_emulator.destination("health")],
                        telemetry={"health_port": port, "health_host": "127.0.0.1"})
    ensure_topics(settings)
    stage, stop = SinkStage(settings, settings.destinations[0]), threading.Event()
    ready, health = f"http://127.0.0.1:{port}/readyz", f"http://127.0.0.1:{port}/healthz"
    try:
        with observed_stage(settings, "sink", [stage.state]):
            runner = threading.Thread(target=run_stage, args=(stage, stop), daemon=True)
            runner.start()
            try:
                assert eventually(lambda: probe(ready)[0] == 200, 30), probe(ready)
                body = probe(ready)[1]
                assert body["stages"][0]["name"] == "sink-health" and body["checks"]["kafka"]["ok"] is True

                own_broker.kill()
                assert eventually(lambda: probe(ready)[0] == 503, 20), probe(ready)
                assert "unreachable" in probe(ready)[1]["checks"]["kafka"]["detail"]
                assert probe(health)[0] == 200  # an outage makes the pod unready, never restarts it
                assert runner.is_alive()

                own_broker.start()
                assert eventually(lambda: probe(ready)[0] == 200, 40), probe(ready)
            finally:
                stop.set()
                runner.join(30)
        assert not runner.is_alive()
        assert stage.state.ready is False
    finally:
        own_broker.stop()
