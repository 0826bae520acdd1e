"""The collector gateway and the agent mode, against the real broker: auth, limits, malformed lines, failover."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import ssl
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from producers.adapters.sources import discover
from producers.agent import CollectorAuthError, CollectorSink
from producers.collector import Collector, build_collector, serve, tls_context
from producers.stage import ProducerStage
from secstream.config import Settings
from secstream.lifecycle import run_stage
from secstream.topics import delete_topics, ensure_topics
from tests.conftest import CORPUS, free_port
from tests.producers.test_producer_kafka import consume_all, expected_identities, identity

pytestmark = pytest.mark.integration

TOKEN = "agent-token-0123456789"
SECURITY_EVTX = CORPUS / "omerbenamram__evtx/samples/security.evtx"
SMALL_EVTX = CORPUS / "mdecrevoisier__EVTX-to-MITRE-Attack"


class RunningCollector:
    """A collector serving on its own thread and event loop."""

    def __init__(self, collector: Collector, context: ssl.SSLContext | None = None) -> None:
        self.collector = collector
        self.port = free_port()
        self.context = context
        self.url = f"{'https' if context else 'http'}://127.0.0.1:{self.port}"
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await serve(self.collector, "127.0.0.1", self.port, self.context, self._ready, self._stop)

        asyncio.run(main())

    def __enter__(self) -> RunningCollector:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)


class SlowCollector(Collector):
    """Writes to Kafka, then answers late: the agent's timeout fires after the batch is already stored."""

    delay = 2.0

    async def handle(self, request: Any) -> Any:
        response = await super().handle(request)
        await asyncio.sleep(self.delay)
        return response


@pytest.fixture
def collector_settings(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# agent tokens\nagent-1 {TOKEN}\nagent-2:other-token-xyz\n")
    s = settings.model_copy(update={"collector": settings.collector.model_copy(update={
        "tokens_file": tokens, "collector_id": "collector-a", "max_body_bytes": 256 * 1024,
        "max_decompressed_bytes": 1024 * 1024, "ack_timeout_seconds": 20.0})})
    ensure_topics(s)
    yield s
    delete_topics(s, [s.topics.raw, s.topics.dead_letter])


def post(url: str, body: bytes, token: str | None = TOKEN, content_type: str = "application/x-ndjson",
         gzip_body: bool = False, context: ssl.SSLContext | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if gzip_body:
        headers["Content-Encoding"] = "gzip"
    request = urllib.request.Request(url + "/v1/batches", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read() or b"{}")


def corpus_events(path: Path, limit: int) -> list[dict[str, Any]]:
    (source,) = discover([path])
    return [event for (event, _position), _ in zip(source.read(None), range(limit), strict=False)]


def dead_letters(s: Settings) -> list[tuple[bytes, dict[str, bytes]]]:
    consumer = Consumer({"bootstrap.servers": s.kafka.bootstrap_servers, "group.id": "dlq-check",
                         "auto.offset.reset": "earliest"})
    try:
        parts = consumer.list_topics(s.topics.dead_letter, timeout=10).topics[s.topics.dead_letter].partitions
        consumer.assign([TopicPartition(s.topics.dead_letter, p, 0) for p in parts])
        out: list[tuple[bytes, dict[str, bytes]]] = []
        idle = 0
        while idle < 3:
            msg = consumer.poll(1.0)
            if msg is None:
                idle += 1
                continue
            if not msg.error():
                raw_headers = msg.headers() or []
                pairs = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
                headers = {k: v for k, v in pairs if isinstance(v, bytes)}
                out.append((msg.value() or b"", headers))
        return out
    finally:
        consumer.close()


def test_bad_or_missing_token_is_401(collector_settings: Settings) -> None:
    with RunningCollector(build_collector(collector_settings)) as c:
        body = b"\n".join(orjson.dumps(e) for e in corpus_events(SECURITY_EVTX, 3))
        assert post(c.url, body, token="wrong")[0] == 401
        assert post(c.url, body, token=None)[0] == 401
        status, answer = post(c.url, body)
        assert status == 200 and answer["accepted_events"] == 3
    batches, _ = consume_all(collector_settings.kafka.bootstrap_servers, collector_settings.topics.raw)
    assert sum(len(b["events"]) for b in batches) == 3  # only the authorised request got through


def test_tokens_from_a_mounted_secret_dir(collector_settings: Settings, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "agent-9").write_text("token-from-k8s-secret\n")
    s = collector_settings.model_copy(update={"collector": collector_settings.collector.model_copy(
        update={"tokens_file": None, "tokens_dir": secret})})
    with RunningCollector(build_collector(s)) as c:
        body = orjson.dumps(corpus_events(SECURITY_EVTX, 1)[0])
        assert post(c.url, body, token=TOKEN)[0] == 401
        status, answer = post(c.url, body, token="token-from-k8s-secret")
        assert status == 200 and answer["accepted_events"] == 1


def test_oversize_body_and_gzip_bomb_are_413(collector_settings: Settings) -> None:
    with RunningCollector(build_collector(collector_settings)) as c:
        events = corpus_events(SECURITY_EVTX, 400)
        big = b"\n".join(orjson.dumps(e) for e in events)
        assert len(big) > 256 * 1024
        assert post(c.url, big)[0] == 413
        bomb = gzip.compress(b"{" * (8 * 1024 * 1024))
        assert len(bomb) < 256 * 1024
        status, answer = post(c.url, bomb, gzip_body=True)
        assert status == 413 and "decompressed" in answer["error"]
        assert post(c.url, gzip.compress(big), gzip_body=True)[0] == 200  # the same events, compressed, fit


def test_too_many_bytes_waiting_is_429(collector_settings: Settings) -> None:
    s = collector_settings.model_copy(update={"collector": collector_settings.collector.model_copy(update={
        "max_body_bytes": 4 * 1024 * 1024, "max_decompressed_bytes": 4 * 1024 * 1024,
        "max_in_flight_bytes": 1024 * 1024})})
    events = corpus_events(SECURITY_EVTX, 2261)
    body = b"\n".join(orjson.dumps(e) for e in events)
    assert 1024 * 1024 < len(body) < 4 * 1024 * 1024
    with RunningCollector(build_collector(s)) as c:
        request = urllib.request.Request(c.url + "/v1/batches", data=body, method="POST", headers={
            "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 429 and refused.value.headers["Retry-After"] == "1"
        assert post(c.url, b"\n".join(orjson.dumps(e) for e in events[:500]))[0] == 200


def test_malformed_lines_are_reported_and_dead_lettered_rest_delivered(collector_settings: Settings) -> None:
    events = corpus_events(SECURITY_EVTX, 30)
    lines = [orjson.dumps(e) for e in events]
    missing_id = {k: v for k, v in events[0].items() if k != "event_id"}
    bad = [b"{not json", orjson.dumps(missing_id), orjson.dumps({**events[1], "event_id": "4624"})]
    body = b"\n".join(lines[:10] + bad[:1] + lines[10:20] + bad[1:] + lines[20:])
    with RunningCollector(build_collector(collector_settings)) as c:
        status, answer = post(c.url, gzip.compress(body), gzip_body=True)
    assert status == 200
    assert answer["accepted_events"] == 30 and answer["rejected_lines"] == 3
    assert [e["line"] for e in answer["errors"]] == [11, 22, 23]
    batches, _ = consume_all(collector_settings.kafka.bootstrap_servers, collector_settings.topics.raw)
    delivered = [e for b in batches for e in b["events"]]
    assert Counter(identity(e) for e in delivered) == Counter(identity(e) for e in events)
    assert all(e["provenance"]["collector_id"] == "collector-a" for e in delivered)
    assert all(e["event_data"] == src["event_data"] for e, src in zip(delivered, events, strict=True))
    dead = dead_letters(collector_settings)
    assert sorted(v for v, _ in dead) == sorted(bad)
    reasons = [h["secstream.reason"].decode() for _, h in dead]
    assert all(h["secstream.stage"] == b"collector" and h["secstream.collector_id"] == b"collector-a" for _, h in dead)
    assert all(r.startswith("line ") for r in reasons) and any("event_id" in r for r in reasons)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def _agent_stage(s: Settings, urls: list[str], inputs: list[Path], tmp_path: Path, timeout: float,
                 context: ssl.SSLContext | None = None) -> ProducerStage:
    s = s.model_copy(update={"producer": s.producer.model_copy(update={
        "state_file": tmp_path / "agent-state.json", "batch_max_events": 25})})
    stop = threading.Event()

    def factory(agent_id: str, on_delivered: Any) -> CollectorSink:
        return CollectorSink(urls, TOKEN, agent_id, on_delivered, stop, timeout=timeout, retry_max=1.0,
                             context=context)

    return ProducerStage(s, discover(inputs), factory, stop=stop)


def test_agent_over_https_fails_over_to_the_second_collector(collector_settings: Settings, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    s = collector_settings.model_copy(update={"collector": collector_settings.collector.model_copy(
        update={"tls_cert_file": cert, "tls_key_file": key})})
    client_context = ssl.create_default_context(cafile=str(cert))
    down = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    with RunningCollector(build_collector(s), tls_context(s.collector)) as c:
        stage = _agent_stage(s, [down, c.url], [SECURITY_EVTX], tmp_path, timeout=5.0, context=client_context)
        run_stage(stage)
    assert stage.events_delivered == 2261
    batches, _ = consume_all(s.kafka.bootstrap_servers, s.topics.raw)
    assert Counter(identity(e) for b in batches for e in b["events"]) == expected_identities([SECURITY_EVTX])
    assert {b["agent_id"] for b in batches} == {"agent-1"}  # the token's agent, whatever the body says
    assert {e["provenance"]["agent_id"] for b in batches for e in b["events"]} == {stage.agent_id}


def test_timeout_then_retry_elsewhere_duplicates_with_the_same_batch_id(
        collector_settings: Settings, tmp_path: Path) -> None:
    """The real duplicate pattern: a collector stores the batch but answers after the agent gave up."""
    regular = build_collector(collector_settings)
    slow = SlowCollector(collector_settings, regular.tokens, regular.writer)
    with RunningCollector(slow) as a, RunningCollector(build_collector(collector_settings)) as b:
        stage = _agent_stage(collector_settings, [a.url, b.url], [SMALL_EVTX], tmp_path, timeout=1.0)
        run_stage(stage)
    batches, _ = consume_all(collector_settings.kafka.bootstrap_servers, collector_settings.topics.raw)
    ids = Counter(b["batch_id"] for b in batches)
    # The first batch went to the slow collector, timed out, and was sent to the second one, which the agent
    # then keeps using: that batch is on the topic twice under one id, every other batch once.
    twice = {batch_id for batch_id, n in ids.items() if n == 2}
    assert len(twice) == 1 and set(ids.values()) <= {1, 2}
    repeated = [b for b in batches if b["batch_id"] in twice]
    assert repeated[0]["events"] == repeated[1]["events"]
    on_topic = Counter(identity(e) for b in batches for e in b["events"])
    expected = expected_identities([SMALL_EVTX])
    assert set(on_topic) == set(expected)
    assert sum(on_topic.values()) == sum(expected.values()) + len(repeated[0]["events"])


def test_agent_with_a_refused_token_stops_with_a_clear_error(collector_settings: Settings, tmp_path: Path) -> None:
    with RunningCollector(build_collector(collector_settings)) as c:
        stage = _agent_stage(collector_settings, [c.url], [SMALL_EVTX], tmp_path, timeout=5.0)
        stage.settings.producer.collector_token = None
        sink_token = "not-a-valid-token"
        stage._sink_factory = lambda agent_id, cb: CollectorSink(
            [c.url], sink_token, agent_id, cb, stage.stop)
        with pytest.raises(CollectorAuthError, match="refused the agent token"):
            run_stage(stage)
