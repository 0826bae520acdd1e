"""The embedded broker: lifecycle through the real binary, and a confluent-kafka round trip."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from secstream.broker import EmbeddedBroker, is_reachable
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def _round_trip(bootstrap: str, topic: str, n: int) -> list[bytes]:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    for i in range(n):
        producer.produce(topic, key=b"host-1", value=f"event-{i}".encode())
    assert producer.flush(30) == 0
    return _consume_all(bootstrap, topic, n)


def _consume_all(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    values: list[bytes] = []
    try:
        for _ in range(60):
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                assert msg.error() is None, msg.error()
                values.append(msg.value())
            if len(values) >= expected:
                break
    finally:
        consumer.close()
    return values


def test_start_round_trip_stop_restart_keeps_data(tmp_path: Path) -> None:
    broker = EmbeddedBroker(data_dir=tmp_path / "broker", port=free_port())
    pid = broker.start()
    try:
        assert broker.pid() == pid
        assert broker.start() == pid, "start is idempotent while running"
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[0].endswith(b"noida-db"), "the binary itself runs, not the Python wrapper"
        assert b"--only" in cmdline and b"kafka" in cmdline
        assert b"127.0.0.1" in cmdline

        values = _round_trip(broker.bootstrap, "lifecycle", 50)
        assert values == [f"event-{i}".encode() for i in range(50)]
    finally:
        assert broker.stop() is True
    assert broker.pid() is None
    assert not is_reachable(broker.bootstrap, timeout=1)
    assert broker.stop() is False, "stopping a stopped broker is a no-op"

    broker.start()
    try:
        assert len(_consume_all(broker.bootstrap, "lifecycle", 50)) == 50, "data survives a restart"
    finally:
        broker.stop()


def test_cli_start_status_stop(tmp_path: Path) -> None:
    port = free_port()
    base = [sys.executable, "-m", "secstream.cli", "--set", f"broker.port={port}",
            "--set", f"broker.data_dir={tmp_path}"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=60)

    down = run("broker", "status")
    assert down.returncode == 1 and "unreachable" in down.stdout
    try:
        up = run("broker", "start")
        assert up.returncode == 0, up.stderr
        status = run("broker", "status")
        assert status.returncode == 0 and "reachable" in status.stdout
    finally:
        stopped = run("broker", "stop")
    assert "broker stopped" in stopped.stdout
    assert run("broker", "status").returncode == 1
