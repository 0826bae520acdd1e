"""Run `secstream stream` workers as subprocesses against the test broker; feed raw batches; read the output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from schemas.codec import decode_security_batch, encode_raw_batch
from secstream.config import Settings
from secstream.kafka import client_config, producer_config
from tests.conftest import REPO, free_port

SECSTREAM = str(Path(sys.executable).parent / "secstream")


def make_batches(events: Sequence[dict[str, Any]], size: int, collector: str, reverse: bool = False) -> list[dict]:
    """Group events by host into RawEventBatches, as one collector would send them."""
    by_host: dict[str, list[dict[str, Any]]] = {}
    for ev in reversed(events) if reverse else events:
        by_host.setdefault(ev["computer"], []).append(ev)
    batches = []
    for host, evs in by_host.items():
        for n, start in enumerate(range(0, len(evs), size)):
            chunk = [{**e, "provenance": {**e["provenance"], "collector_id": collector}}
                     for e in evs[start:start + size]]
            batches.append({"host": host, "batch_id": str(uuid.uuid4()), "sequence": n, "agent_id": collector,
                            "send_time_us": int(time.time() * 1e6), "events": chunk})
    return batches


def produce(settings: Settings, batches: Iterable[dict], extra: Iterable[tuple[bytes | None, bytes]] = ()) -> int:
    producer = Producer(producer_config(settings.kafka))
    n = 0
    for batch in batches:
        producer.produce(settings.topics.raw, key=batch["host"].encode(), value=encode_raw_batch(batch))
        n += 1
    for key, value in extra:
        producer.produce(settings.topics.raw, key=key, value=value)
        n += 1
    assert producer.flush(30) == 0
    return n


class Worker:
    """One `secstream stream` process with its own health port."""

    def __init__(self, settings: Settings, tmp: Path, name: str, data_dir: str | None = None) -> None:
        self.port = free_port()
        config = settings.model_dump(mode="json", exclude_none=True)
        config["telemetry"] = {**config.get("telemetry", {}), "health_port": self.port, "health_host": "127.0.0.1"}
        config["stream"] = {**config.get("stream", {}), "data_dir": str(tmp / f"faust-{data_dir or name}")}
        self.config_path = tmp / f"stream-{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = tmp / f"stream-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("SECSTREAM_CONFIG", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([SECSTREAM, "--config", str(self.config_path), "stream"],
                                         stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, f"worker exited:\n{self.log()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"worker not ready in {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    consumer = Consumer({**client_config(settings.kafka), "group.id": f"probe-{uuid.uuid4().hex}"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in meta.partitions}
    finally:
        consumer.close()


def wait_caught_up(settings: Settings, timeout: float = 120.0) -> None:
    """Until the worker group has committed every raw offset (so everything sent so far was processed)."""
    admin = AdminClient(client_config(settings.kafka))
    group = settings.stream.app_id
    target = end_offsets(settings, settings.topics.raw)
    deadline = time.monotonic() + timeout
    committed: dict[int, int] = {}
    while time.monotonic() < deadline:
        fut = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
        try:
            res = fut.result(10)
            committed = {tp.partition: tp.offset for tp in res.topic_partitions or []
                         if tp.topic == settings.topics.raw}
        except Exception:
            committed = {}
        if all(committed.get(p, -1) >= end for p, end in target.items()):
            return
        time.sleep(0.3)
    raise AssertionError(f"worker did not catch up: committed {committed}, end {target}")


class OutputReader:
    """Reads the normalized topic incrementally (read_committed), decoding every batch."""

    def __init__(self, settings: Settings, topic: str | None = None) -> None:
        self.topic = topic or settings.topics.normalized
        self.consumer = Consumer({**client_config(settings.kafka), "group.id": f"reader-{uuid.uuid4().hex}",
                                  "enable.auto.commit": False, "isolation.level": "read_committed",
                                  "receive.message.max.bytes": 200_000_000})
        parts = self.consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions
        self.consumer.assign([TopicPartition(self.topic, p, 0) for p in parts])
        self.rows: list[dict[str, Any]] = []
        self.messages: list[Any] = []

    def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for msg in self.consumer.consume(500, timeout=0.2):
                if msg.error():
                    continue
                self.messages.append(msg)
                value = msg.value()
                if self.topic.startswith("dlq") or value is None:
                    continue
                self.rows.extend(decode_security_batch(value)["rows"])

    def wait_rows(self, count: int, timeout: float = 60.0, settle: float = 1.5) -> None:
        deadline = time.monotonic() + timeout
        while len(self.rows) < count and time.monotonic() < deadline:
            self.poll(0.5)
        self.poll(settle)  # anything beyond the expected count shows up here

    def close(self) -> None:
        self.consumer.close()


def counts_by_event_id(rows: Iterable[dict[str, Any]]) -> Counter[int]:
    return Counter(int(r["EventID"]) for r in rows)
