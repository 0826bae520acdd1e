"""The chaos run: the whole pipeline as ``secstream`` processes, faults injected while data flows, then the workspace
checked against ground truth computed from the source files alone.

Topology (all on loopback, every stage its own process, see ``secstream.pipeline``):

    producer (Kafka mode) ─────────────────────────────┐
    producer (agent mode) ─▶ collector-a / collector-b ─┴─▶ raw ─▶ stream ─▶ normalized ─▶ sink ─▶ workspace

The input is split into waves; each wave starts both producers on its files and then applies one fault while the
wave is in flight: SIGKILL of a stage (then the same command again), a broker stop/start, 429 / 5xx storms from the
workspace. The emulator caps request bodies below the sink's request size, so 413s (and the sink's split) happen
throughout. Rejected inputs are planted on purpose (malformed event XML, a non-batch POST to a collector, a garbage
raw message) and must appear in the dead-letter topic with their reason.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import secrets
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import evtx
from confluent_kafka import Consumer, Producer, TopicPartition

from schemas.codec import decode_security_batch
from secstream.broker import EmbeddedBroker
from secstream.offsets import Position, partitions_of, plan_ranges, resolve
from secstream.pipeline import StageProcess, create_topics, write_config
from secstream.replay.reading import read_ranges
from secstream.source_position import SourcePosition, parse_source
from sinks.row_progress import SavedProgress, decode_progress
from tests.conftest import CORPUS, SEEDS, free_port
from workspace.testing import WorkspaceEmulator

# The channels an event set covers (Microsoft's connector: "All Windows security and AppLocker events").
EVENT_SET_CHANNELS = frozenset({"Security", "Microsoft-Windows-AppLocker/EXE and DLL",
                                "Microsoft-Windows-AppLocker/MSI and Script"})
XML_HOST = "chaos-xml-host.example"
NORMALIZED = "secstream.normalized"
SINK_GROUP = "secstream-sink-chaos"

# (Computer, Channel, EventRecordID, EventID)
Identity = tuple[str, str, int, int]


def seed_event_set(name: str) -> frozenset[int]:
    """The event IDs of an event set, read from Microsoft's connector page in the seeds (not from our catalog)."""
    for page in sorted(SEEDS.glob("*.txt")):
        match = re.search(rf"\|\s*\*\*{name}\*\*\s*\|([\d,\s]+)\|", page.read_text(encoding="utf-8", errors="replace"))
        if match:
            return frozenset(int(x) for x in match.group(1).replace(" ", "").split(",") if x)
    raise LookupError(f"event set {name} not found in {SEEDS}")


def damaged_files() -> set[Path]:
    """Files SOURCES.md marks DAMAGED (their recoverable part is the producers' tests' business)."""
    rows = (CORPUS / "SOURCES.md").read_text(encoding="utf-8").splitlines()
    return {CORPUS / r.split("`")[1] for r in rows if r.startswith("| `") and "DAMAGED" in r}


def evtx_files() -> list[Path]:
    """The undamaged EVTX files of the dev corpus, smallest first."""
    damaged = damaged_files()
    files = (p for p in CORPUS.rglob("*.evtx") if p.stat().st_size > 0 and p not in damaged)
    return sorted(files, key=lambda p: (p.stat().st_size, str(p)))


def evtx_identities(path: Path) -> list[tuple[Identity, str]]:
    """(identity, SystemTime) of every record, parsed with the Rust parser directly: the ground truth does not go
    through any of our readers."""
    out = []
    for record in evtx.PyEvtxParser(str(path)).records_json():
        system = json.loads(str(cast(dict[str, Any], record)["data"]))["Event"]["System"]
        event_id = system["EventID"]
        if isinstance(event_id, dict):
            event_id = event_id["#text"]
        identity = (str(system["Computer"]), str(system["Channel"]), int(system["EventRecordID"]), int(event_id))
        out.append((identity, str(system["TimeCreated"]["#attributes"]["SystemTime"])))
    return out


def expected_rows(files: Iterable[Path], event_ids: frozenset[int]) -> Counter[Identity]:
    """One row per distinct event the rules keep, however many files or paths carry it. A record id can come back
    with another TimeCreated after the log was cleared: that is another event, so it counts twice."""
    kept = {(i, t) for path in files for i, t in evtx_identities(path)
            if i[1] in EVENT_SET_CHANNELS and i[3] in event_ids}
    return Counter(i for i, _ in kept)


# -- planted bad input ----------------------------------------------------------------------------------------------

def _event_xml(event_id: str, record_id: int) -> str:
    return (
        '<Event xmlns="http://schemas.microsoft.com/win/2004/08/events/event"><System>'
        '<Provider Name="Microsoft-Windows-Security-Auditing" Guid="{54849625-5478-4994-A5BA-3E3B0328C30D}"/>'
        f"<EventID>{event_id}</EventID><Version>2</Version><Level>0</Level><Task>12544</Task><Opcode>0</Opcode>"
        "<Keywords>0x8020000000000000</Keywords>"
        f'<TimeCreated SystemTime="2024-03-01T10:00:{record_id % 60:02d}.1234567Z"/>'
        f"<EventRecordID>{record_id}</EventRecordID><Correlation/>"
        '<Execution ProcessID="716" ThreadID="800"/><Channel>Security</Channel>'
        f"<Computer>{XML_HOST}</Computer><Security/></System><EventData>"
        '<Data Name="TargetUserName">alice</Data><Data Name="LogonType">3</Data></EventData></Event>'
    )


def write_bad_xml(path: Path) -> tuple[Counter[Identity], int]:
    """Two good 4624 events and two that must be dead-lettered (no EventID, EventID not a number)."""
    good = [_event_xml("4624", 9001), _event_xml("4624", 9002)]
    no_id = _event_xml("4624", 9003).replace("<EventID>4624</EventID>", "")
    bad = [no_id, _event_xml("forty-six", 9004)]
    path.write_text("<Events>" + "".join([good[0], bad[0], good[1], bad[1]]) + "</Events>", encoding="utf-8")
    return Counter({(XML_HOST, "Security", 9001, 4624): 1, (XML_HOST, "Security", 9002, 4624): 1}), len(bad)


# -- the run --------------------------------------------------------------------------------------------------------

@dataclass
class ChaosPlan:
    waves: int = 4
    files_per_wave: int = 2
    faults: list[str] = field(default_factory=lambda: list(FAULTS))
    drain_timeout: float = 120.0
    seed: int = 7


@dataclass(frozen=True)
class NormalizedMessage:
    """One message of the normalized topic, as the stream stage wrote it."""

    partition: int
    offset: int
    timestamp_ms: int
    position: SourcePosition | None
    origin_ids: tuple[str, ...]


@dataclass(frozen=True)
class SinkKill:
    """A SIGKILL of the sink: when, and the offsets its group had committed (read while it was down), with the
    rows after them the commit metadata records as delivered (``sinks.row_progress``)."""

    at_ms: int
    committed: dict[int, int]
    progress: dict[int, SavedProgress | None] = field(default_factory=dict)

    def may_resend(self, message: NormalizedMessage, row: int) -> bool:
        """Whether the sink's successor may send this row of ``message`` again: it was in Kafka at the kill, at or
        after the committed offset, and not recorded as delivered (so it was in flight, or just finished)."""
        if message.timestamp_ms > self.at_ms or message.offset < self.committed.get(message.partition, 0):
            return False
        saved = self.progress.get(message.partition)
        if saved is None:
            return True
        return not any(a <= row < b for a, b in saved.done(message.offset, len(message.origin_ids)))


@dataclass
class ChaosResult:
    expected: Counter[Identity]
    rows: list[dict[str, Any]]
    dead_letters: list[dict[str, str]]
    planted_dead_letters: int
    faults_applied: list[str]
    secrets: list[str]
    logs: dict[str, str]
    errors: list[dict[str, Any]]
    unplanned_exits: list[str]
    normalized: list[NormalizedMessage] = field(default_factory=list)
    sink_kills: list[SinkKill] = field(default_factory=list)


class ChaosPipeline:
    def __init__(self, state: Path, plan: ChaosPlan) -> None:
        self.state = state
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.secrets = {
            "sasl": "sasl-" + secrets.token_urlsafe(18),
            "collector": "agent-" + secrets.token_urlsafe(18),
        }
        self.faults_applied: list[str] = []
        self.unplanned_exits: list[str] = []
        self.sink_kills: list[SinkKill] = []
        self.bootstrap = ""

    # ---------------------------------------------------------------- set-up

    def config(self, bootstrap: str, ws: WorkspaceEmulator) -> dict[str, Any]:
        tokens = self.state / "agent-tokens"
        tokens.write_text(f"chaos-agent {self.secrets['collector']}\n")
        destination = ws.destination("chaos")
        self.secrets["emulator"] = destination["credential"]["token"]
        return {
            # A SASL password the PLAINTEXT test broker never asks for: it must still never reach a log line.
            "kafka": {"bootstrap_servers": bootstrap, "sasl_username": "chaos", "sasl_password": self.secrets["sasl"],
                      # a SIGKILLed sink's partitions move on after 6 s instead of librdkafka's 45 s
                      "extra": {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}},
            "topics": {"raw_partitions": 2, "normalized_partitions": 2, "retention_ms": 24 * 3600 * 1000},
            "rules": [{"name": "default", "computers": ["*"], "event_set": "Common"}],
            "producer": {"agent_id": "chaos-agent", "collector_token": self.secrets["collector"],
                         "batch_max_events": 200, "collector_retry_max_seconds": 2.0,
                         "collector_timeout_seconds": 10.0},
            "collector": {"host": "127.0.0.1", "tokens_file": str(tokens), "ack_timeout_seconds": 10.0},
            # The corpus logs span years of event time; the dedup window (event time) must cover them, or a log
            # that comes twice is deduplicated only for its last day.
            "stream": {"data_dir": str(self.state / "stream"), "dedup_window_seconds": 20 * 365 * 86400,
                       "session_timeout_seconds": 6.0,
                       "rebalance_timeout_seconds": 10.0, "commit_interval_seconds": 2.8},
            "sink": {"checkpoint_seconds": 0.5, "retry_backoff_max_seconds": 2.0},
            "destinations": [destination],
            "status": {"enabled": False},
        }

    def run(self, files: list[Path]) -> ChaosResult:
        plan = self.plan
        waves = [files[i::plan.waves] for i in range(plan.waves)]
        bad_xml = self.state / "input" / "planted.xml"
        bad_xml.parent.mkdir(parents=True, exist_ok=True)
        planted_expected, planted_bad = write_bad_xml(bad_xml)
        logs = self.state / "logs"
        with ExitStack() as stack:
            broker = EmbeddedBroker(data_dir=self.state / "broker", port=free_port())
            broker.start()
            stack.callback(broker.stop)
            self.bootstrap = broker.bootstrap
            # Bodies over 256 KiB are refused with 413: the sink (1 MiB requests) must split, never drop.
            ws = stack.enter_context(WorkspaceEmulator(self.state / "workspace",
                                                       settings={"max_body_bytes": 256 * 1024}))
            ports = [free_port(), free_port()]
            data = self.config(broker.bootstrap, ws)
            config = write_config(self.state / "config.yaml", data)
            create_topics(config)
            collectors = [
                StageProcess(f"collector-{name}", ["collect", "--port", str(port)], config, logs,
                             env={"SECSTREAM_COLLECTOR__COLLECTOR_ID": f"collector-{name}"})
                for name, port in zip("ab", ports, strict=True)
            ]
            stream = StageProcess("stream", ["stream"], config, logs)
            # Static group membership, as the Helm chart's StatefulSet gives each sink pod: the embedded broker
            # never expires a SIGKILLed dynamic member (a restarted sink waited > 90 s, session.timeout.ms 6 s),
            # while a static member takes its partitions back at once.
            sink = StageProcess("sink", ["sink", "--destination", "chaos"], config, logs,
                                env={"SECSTREAM_SINK__GROUP_INSTANCE_ID": "chaos-sink-0"})
            for stage in (*collectors, stream, sink):
                stack.callback(stage.stop)
            urls = [f"http://127.0.0.1:{p}" for p in ports]
            _wait_for_http(urls)
            self._plant_collector_garbage(urls[0])
            self._plant_raw_garbage(broker.bootstrap)
            planted = planted_bad + 2  # + the collector's non-batch line and the undecodable raw message

            producers: list[StageProcess] = []
            for number, wave in enumerate(waves):
                baseline = (self._normalized_end(), ws.count())
                kafka_files = [str(p) for p in wave[::2]] + ([str(bad_xml)] if number == 0 else [])
                agent_files = [str(p) for p in wave[1::2]]
                wave_stages = []
                if kafka_files:
                    wave_stages.append(StageProcess(
                        f"producer-{number}", ["produce", "--quiet", "--state-file",
                                               str(self.state / "producer.json"), *kafka_files], config, logs))
                if agent_files:
                    wave_stages.append(StageProcess(
                        f"agent-{number}", ["produce", "--quiet", "--state-file", str(self.state / "agent.json"),
                                            *[a for u in urls for a in ("--collector", u)], *agent_files],
                        config, logs))
                producers.extend(wave_stages)
                for p in wave_stages:
                    stack.callback(p.stop)
                fault = plan.faults[number % len(plan.faults)]
                self._wait_for_flow(fault, baseline, ws)
                self._apply(fault, broker=broker, ws=ws, stream=stream, sink=sink, collectors=collectors,
                            producers=wave_stages)
                self._finish(wave_stages, stages=[stream, sink, *collectors])
            expected = expected_rows(files, seed_event_set("Common")) + planted_expected
            self._drain(ws, sum(expected.values()), [stream, sink, *collectors])
            rows = ws.query("SELECT Computer, Channel, EventRecordId, EventID, EventOriginId FROM SecurityEvent")
            errors = ws.errors()
            dead = read_dead_letters(broker.bootstrap, "secstream.deadletter")
            normalized = read_normalized(broker.bootstrap, NORMALIZED)
            for stage in (*producers, *collectors, stream, sink):
                stage.stop()
            logs_text = {p.name: p.read_text(errors="replace") for p in sorted(logs.glob("*.log"))}
            logs_text["workspace"] = ws.log_tail(100_000)
        return ChaosResult(expected, rows, dead, planted, self.faults_applied, list(self.secrets.values()),
                           logs_text, errors, self.unplanned_exits, normalized, self.sink_kills)

    # ---------------------------------------------------------------- faults

    def _normalized_end(self) -> int:
        return sum(end_offsets(self.bootstrap, NORMALIZED).values())

    def _wait_for_flow(self, fault: str, baseline: tuple[int, int], ws: WorkspaceEmulator,
                       timeout: float = 20.0) -> None:
        """Until the wave's data reaches the stage the fault hits, so it hits data in flight: the stream writing
        output (its kill then leaves output without committed input), or the sink delivering."""
        normalized, rows = baseline
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if fault in ("kill-sink", "429-storm", "5xx-storm"):
                if ws.count() > rows:
                    break
            elif fault in ("kill-stream", "restart-broker", "kill-all"):
                if self._normalized_end() > normalized:
                    break
            else:
                break
            time.sleep(0.05)
        # A stream kill right after its first output of the wave lands before the next write of its dedup state
        # (every stream.commit_interval_seconds, the default 2.8 s): the restarted worker writes that output again.
        time.sleep(self.rng.uniform(0.0, 0.2) if fault in ("kill-stream", "kill-all") else self.rng.uniform(0.0, 0.5))

    def _apply(self, fault: str, *, broker: EmbeddedBroker, ws: WorkspaceEmulator, stream: StageProcess,
               sink: StageProcess, collectors: list[StageProcess], producers: list[StageProcess]) -> None:
        if fault in ("kill-collector", "kill-producers", "none"):
            time.sleep(self.rng.uniform(0.5, 2.0))  # let the wave get going: the fault hits data in flight
        self.faults_applied.append(f"{time.strftime('%H:%M:%S')} {fault} (rows so far: {ws.count()})")
        if fault == "none":
            pass
        elif fault == "kill-stream":
            _kill_and_restart(stream, self.rng)
        elif fault == "kill-sink":
            sink.kill()
            self._record_sink_kill()
            time.sleep(self.rng.uniform(0.2, 1.5))
            sink.start()
        elif fault == "kill-producers":
            for p in producers:
                _kill_and_restart(p, self.rng)
        elif fault == "kill-collector":
            # The agent fails over to the other collector and comes back when this one restarts.
            _kill_and_restart(collectors[0], self.rng, down=4.0)
        elif fault == "restart-broker":
            broker.stop()
            time.sleep(self.rng.uniform(1.0, 3.0))
            broker.start()
        elif fault == "429-storm":
            with ws.faults(rate_429=0.8, retry_after=1):
                time.sleep(8)
        elif fault == "5xx-storm":
            with ws.faults(rate_500=0.4, rate_503=0.3, rate_drop=0.1):
                time.sleep(8)
        elif fault == "kill-all":
            for stage in (stream, sink, *collectors, *producers):
                stage.kill()
            self._record_sink_kill()
            time.sleep(1.0)
            for stage in (*collectors, stream, sink, *producers):
                stage.start()
        else:
            raise ValueError(f"unknown fault {fault}")

    def _record_sink_kill(self) -> None:
        """What the killed sink had committed: rows of messages before these offsets must never come twice."""
        killed_at = int(time.time() * 1000)
        time.sleep(0.3)  # a commit already on the wire may still land: reading later only allows more
        offsets, progress = committed_progress(self.bootstrap, SINK_GROUP, NORMALIZED)
        self.sink_kills.append(SinkKill(killed_at, offsets, progress))

    def _supervise(self, stages: list[StageProcess]) -> None:
        """What Kubernetes does: a long-running stage that exited is started again (and the exit is recorded)."""
        for stage in stages:
            if not stage.running():
                last = [line for line in stage.tail(60).splitlines() if "Error" in line or "error" in line][-3:]
                self.unplanned_exits.append(f"{stage.name} exited with {stage.returncode}: " + " | ".join(last))
                stage.start()

    def _finish(self, producers: list[StageProcess], stages: list[StageProcess], timeout: float = 180.0) -> None:
        """Wait for the wave's producers (a producer that fails is started again: it resumes from its state)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._supervise(stages)
            if all(p.returncode == 0 for p in producers):
                return
            self._supervise([p for p in producers if p.returncode not in (None, 0)])
            time.sleep(0.3)
        raise RuntimeError(f"producers did not finish: {[p.name for p in producers if p.running()]}")

    def _drain(self, ws: WorkspaceEmulator, expected: int, stages: list[StageProcess]) -> None:
        deadline = time.monotonic() + self.plan.drain_timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            self._supervise(stages)
            count = ws.count()
            if count != last:
                last, since = count, time.monotonic()
            if count >= expected and time.monotonic() - since > 5.0:
                return  # settled (5 s more catches late duplicates)
            time.sleep(0.5)

    # ---------------------------------------------------------------- planted rejects

    def _plant_collector_garbage(self, url: str) -> None:
        """One NDJSON line that is not a RawEvent: accepted request, the line dead-lettered."""
        body = b'{"not": "an event"}\n'
        request = urllib.request.Request(url + "/v1/batches", data=gzip.compress(body), method="POST", headers={
            "Authorization": f"Bearer {self.secrets['collector']}", "Content-Type": "application/x-ndjson",
            "Content-Encoding": "gzip", "X-Batch-Id": "planted-garbage"})
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                reply.read()
        except urllib.error.HTTPError as exc:  # 400 is fine too, as long as the line is dead-lettered
            exc.read()

    def _plant_raw_garbage(self, bootstrap: str) -> None:
        producer = Producer({"bootstrap.servers": bootstrap})
        producer.produce("secstream.raw", key=b"garbage-host", value=b"\x00\x00\x00\x00\x01not avro at all")
        producer.flush(30)


def _kill_and_restart(stage: StageProcess, rng: random.Random, down: float | None = None) -> None:
    stage.kill()
    time.sleep(down if down is not None else rng.uniform(0.2, 1.5))
    stage.start()


def _wait_for_http(urls: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    for url in urls:
        while True:
            try:
                urllib.request.urlopen(url + "/healthz", timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # answering at all is enough
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"collector {url} did not start") from None
                time.sleep(0.2)


def read_topic(bootstrap: str, topic: str, timeout: float = 15.0) -> list[tuple[bytes, dict[str, str]]]:
    """Every record's value and headers (decoded), read from the start until the topic is quiet for 3 s."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chaos-read-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    out: list[tuple[bytes, dict[str, str]]] = []
    deadline, idle_since = time.monotonic() + timeout, time.monotonic()
    try:
        while time.monotonic() < deadline and time.monotonic() - idle_since < 3.0:
            message = consumer.poll(0.3)
            if message is None or message.error():
                continue
            idle_since = time.monotonic()
            headers = {str(h[0]): header_text(h[1]) for h in (message.headers() or [])}
            out.append((message.value() or b"", headers))
    finally:
        consumer.close()
    return out


def read_dead_letters(bootstrap: str, topic: str) -> list[dict[str, str]]:
    return [headers for _, headers in read_topic(bootstrap, topic)]


def read_normalized(bootstrap: str, topic: str) -> list[NormalizedMessage]:
    """Every message of the normalized topic with where it sits, its raw position and its rows' EventOriginIds."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chaos-read-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "receive.message.max.bytes": 200_000_000})
    try:
        ranges = plan_ranges(consumer, topic, Position(edge="earliest"), None)
        out = []
        for m in read_ranges(consumer, topic, ranges, stall_timeout=30.0):
            rows = decode_security_batch(cast(bytes, m.value()))["rows"]
            out.append(NormalizedMessage(cast(int, m.partition()), cast(int, m.offset()), m.timestamp()[1],
                                         parse_source(m.headers()), tuple(r["EventOriginId"] for r in rows)))
        return out
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chaos-ends-{uuid.uuid4().hex}"})
    try:
        return resolve(consumer, topic, partitions_of(consumer, topic), Position(edge="latest"))
    except Exception:  # the broker is restarting: no progress seen yet
        return {}
    finally:
        consumer.close()


def committed_progress(bootstrap: str, group: str, topic: str
                       ) -> tuple[dict[int, int], dict[int, SavedProgress | None]]:
    """The group's committed offsets, and the row progress in their metadata."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        found = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return ({tp.partition: max(tp.offset, 0) for tp in found},
                {tp.partition: decode_progress(tp.metadata) for tp in found})
    finally:
        consumer.close()


def header_text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value or ""


FAULTS: list[str] = ["kill-stream", "restart-broker", "kill-sink", "429-storm", "kill-collector", "5xx-storm",
          "kill-producers", "kill-all"]

Check = Callable[[ChaosResult], None]


# -- checks on the result -------------------------------------------------------------------------------------------

def reemitted_messages(messages: list[NormalizedMessage]) -> int:
    """Messages whose raw position an earlier message of the same normalized partition already carried: what the
    stream stage wrote again after a restart (and the sink must skip)."""
    seen: set[tuple[int, SourcePosition]] = set()
    again = 0
    for m in sorted(messages, key=lambda m: (m.partition, m.offset)):
        if m.position is None:
            continue
        key = (m.partition, m.position)
        again += key in seen
        seen.add(key)
    return again


def duplicate_rows(result: ChaosResult) -> tuple[dict[str, int], dict[str, int]]:
    """Extra copies per EventOriginId in the workspace, split into those a sink kill explains and the rest.

    The Logs Ingestion API has no idempotency key: rows the sink had sent but not yet recorded as delivered when it
    was killed are sent again by its successor. A copy is explained by a kill when a message carrying the row was
    already in Kafka at the kill, at or after the offset the sink's group had committed, and the row is not among
    those the commit metadata records as delivered (``SinkKill.may_resend``); each kill explains one copy.
    """
    counts = Counter(r["EventOriginId"] for r in result.rows)
    carriers: dict[str, list[NormalizedMessage]] = {}
    for m in result.normalized:
        for origin_id in m.origin_ids:
            carriers.setdefault(origin_id, []).append(m)
    explained: dict[str, int] = {}
    unexplained: dict[str, int] = {}
    for origin_id, n in counts.items():
        if n < 2:
            continue
        kills = sum(1 for k in result.sink_kills
                    if any(k.may_resend(m, m.origin_ids.index(origin_id)) for m in carriers.get(origin_id, [])))
        if n - 1 <= kills:
            explained[origin_id] = n - 1
        else:
            unexplained[origin_id] = n - 1
    return explained, unexplained
