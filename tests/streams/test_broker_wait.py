"""`secstream stream` started while Kafka is down waits for it (``stream.broker_wait_seconds``) instead of exiting."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from secstream.broker import EmbeddedBroker
from secstream.config import Settings
from tests.conftest import free_port
from tests.streams.worker_harness import Worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _settings_for(bootstrap: str, wait_seconds: float) -> Settings:
    return Settings(kafka={"bootstrap_servers": bootstrap}, stream={"broker_wait_seconds": wait_seconds})


def test_a_worker_gives_up_after_the_wait_with_a_clear_error(tmp_path: Path) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens there
    worker = Worker(_settings_for(bootstrap, 2.0), tmp_path, "nobroker").start()
    assert worker.proc is not None
    started = time.monotonic()
    code = worker.proc.wait(60)
    waited = time.monotonic() - started
    log = " ".join(worker.log().split())  # the error is wrapped to the terminal width
    assert code != 0, log
    assert waited >= 2.0, log
    assert f"Kafka at {bootstrap} was not reachable within stream.broker_wait_seconds (2 s)" in log, log


def test_a_worker_started_before_its_broker_waits_and_then_runs(tmp_path: Path) -> None:
    broker = EmbeddedBroker(data_dir=tmp_path / "broker", port=free_port())
    worker = Worker(_settings_for(broker.bootstrap, 120.0), tmp_path, "early").start()
    try:
        waiting = f"Kafka at {broker.bootstrap} is not reachable yet"
        deadline = time.monotonic() + 60
        while waiting not in worker.log() and time.monotonic() < deadline:
            assert worker.proc is not None and worker.proc.poll() is None, worker.log()
            time.sleep(0.5)
        assert waiting in worker.log()
        time.sleep(2.0)  # still waiting, not exited
        assert worker.proc is not None and worker.proc.poll() is None, worker.log()
        broker.start()
        worker.wait_ready(timeout=90)  # the same process: it waited instead of exiting
    finally:
        worker.stop()
        broker.stop()
