"""/healthz and /readyz follow the stages' state and the readiness checks, including a broker that goes away."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from secstream.broker import EmbeddedBroker
from secstream.config import ConfigError, Settings
from secstream.health import HealthServer, KafkaReachable, observed_stage, start_health_server
from secstream.lifecycle import StageState, run_stage

from ..conftest import free_port


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_endpoints_follow_stage_state() -> None:
    state = StageState("sink")
    with HealthServer(port=0, host="127.0.0.1", states=[state]) as health:
        assert health.port != 0
        assert _get(f"{health.url}/healthz")[0] == 200
        status, body = _get(f"{health.url}/readyz")
        assert status == 503 and body["stages"][0]["detail"] == "starting"

        state.ready, state.detail = True, "running"
        status, body = _get(f"{health.url}/readyz")
        assert (status, body["status"], body["stages"][0]["ready"]) == (200, "ready", True)

        state.live, state.detail = False, "failed: TimeoutError"
        status, body = _get(f"{health.url}/healthz")
        assert status == 503 and body["status"] == "failing"
        assert (body["stages"][0]["live"], body["stages"][0]["detail"]) == (False, "failed: TimeoutError")
        assert _get(f"{health.url}/readyz")[0] == 503  # a dead stage is never ready
        assert _get(f"{health.url}/nothing")[0] == 404


def test_no_stage_means_not_ready_and_every_stage_counts() -> None:
    with HealthServer(port=0, host="127.0.0.1") as health:
        status, body = _get(f"{health.url}/readyz")
        assert status == 503 and body["detail"] == "no stage registered yet"
        first, second = StageState("stream", ready=True), StageState("sink", ready=False)
        health.add_state(first)
        health.add_state(second)
        assert _get(f"{health.url}/readyz")[0] == 503
        second.ready = True
        assert _get(f"{health.url}/readyz")[0] == 200


def test_a_failing_or_raising_check_makes_the_process_unready() -> None:
    outcome: dict[str, object] = {"ok": True}

    def flaky() -> tuple[bool, str]:
        if isinstance(outcome["ok"], Exception):
            raise outcome["ok"]
        return bool(outcome["ok"]), "dependency answers" if outcome["ok"] else "dependency down"

    health = HealthServer(port=0, host="127.0.0.1", states=[StageState("stream", ready=True)],
                          checks={"dependency": flaky}, check_interval=0.05)
    with health:
        assert _wait_for(lambda: _get(f"{health.url}/readyz")[0] == 200, 5)
        outcome["ok"] = False
        assert _wait_for(lambda: _get(f"{health.url}/readyz")[0] == 503, 5)
        assert _get(f"{health.url}/readyz")[1]["checks"]["dependency"]["detail"] == "dependency down"
        outcome["ok"] = ConnectionRefusedError("secret-host:9093")
        assert _wait_for(lambda: "error" in _get(f"{health.url}/readyz")[1]["checks"]["dependency"]["detail"], 5)
        detail = _get(f"{health.url}/readyz")[1]["checks"]["dependency"]["detail"]
        assert detail == "error: ConnectionRefusedError"  # exception text (may hold addresses) is not echoed
        assert _get(f"{health.url}/healthz")[0] == 200  # readiness problems are not liveness problems


class _IdleStage:
    """A stage that only waits, so the test exercises run_stage's StageState handling."""

    def __init__(self) -> None:
        self.state = StageState("idle")

    def start(self) -> None:
        pass

    def run_once(self) -> bool:
        time.sleep(0.02)
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.integration
def test_readyz_flips_when_the_broker_goes_away_and_comes_back(tmp_path: Path) -> None:
    own_broker = EmbeddedBroker(data_dir=tmp_path / "broker", port=free_port())
    own_broker.start()
    settings = Settings(kafka={"bootstrap_servers": own_broker.bootstrap},
                        telemetry={"health_port": free_port(), "health_host": "127.0.0.1"})
    stage, stop = _IdleStage(), threading.Event()
    runner = threading.Thread(target=run_stage, args=(stage, stop), daemon=True)
    health = start_health_server(settings, [stage.state], check_interval=0.5)
    assert health is not None
    try:
        runner.start()
        assert _wait_for(lambda: _get(f"{health.url}/readyz")[0] == 200, 20)
        assert _get(f"{health.url}/readyz")[1]["checks"]["kafka"]["ok"] is True

        own_broker.kill()
        assert _wait_for(lambda: _get(f"{health.url}/readyz")[0] == 503, 20)
        body = _get(f"{health.url}/readyz")[1]
        assert body["checks"]["kafka"]["detail"].endswith("unreachable (KafkaException)")
        assert _get(f"{health.url}/healthz")[0] == 200

        own_broker.start()
        assert _wait_for(lambda: _get(f"{health.url}/readyz")[0] == 200, 40)
    finally:
        stop.set()
        runner.join(10)
        health.stop()
        own_broker.stop()
    assert stage.state.ready is False  # run_stage marks a stopped stage unready


def test_kafka_check_reports_an_unreachable_cluster() -> None:
    check = KafkaReachable(Settings(kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}"}).kafka, timeout=1.0)
    ok, detail = check()
    assert not ok and "unreachable" in detail


def test_health_server_is_off_when_no_port_is_configured() -> None:
    assert start_health_server(Settings(), [StageState("x")]) is None


def test_observed_stage_serves_health_around_a_bounded_stage(settings: Settings) -> None:
    port = free_port()
    configured = settings.model_copy(update={"telemetry": settings.telemetry.model_copy(
        update={"health_port": port, "health_host": "127.0.0.1"})})
    stage = _IdleStage()
    seen: list[int] = []

    def run_and_probe() -> None:
        stop = threading.Event()
        runner = threading.Thread(target=run_stage, args=(stage, stop), daemon=True)
        runner.start()
        assert _wait_for(lambda: stage.state.ready, 10)
        seen.append(_get(f"http://127.0.0.1:{port}/healthz")[0])
        stop.set()
        runner.join(10)

    with observed_stage(configured, "test", [stage.state]) as health:
        assert health is not None and health.port == port
        run_and_probe()
    assert seen == [200]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_a_port_in_use_is_a_configuration_error() -> None:
    with HealthServer(port=0, host="127.0.0.1") as taken:
        second = HealthServer(port=taken.port, host="127.0.0.1")
        with pytest.raises(ConfigError, match=f"telemetry.health_port: cannot listen on 127.0.0.1:{taken.port}"):
            second.start()
