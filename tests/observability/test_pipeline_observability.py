"""One real pipeline run over corpus files with distinct Computers: producer (in process) → stream (a real
`secstream stream` worker) → sink (in process) → workspace emulator. Checks exact metric counts against the
corpus ground truth, one trace per batch across the three stages, and `secstream status` naming every Computer.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from opentelemetry.trace import format_span_id, format_trace_id

from producers.adapters.sources import discover
from producers.cli import kafka_sink_factory
from producers.stage import ProducerStage
from secstream.config import Settings
from secstream.lifecycle import run_stage
from secstream.status import build_report
from secstream.telemetry import InMemoryMetrics, InMemorySpans
from secstream.topics import delete_topics, ensure_topics
from sinks.runner import SinkStage
from streams.app import changelog_topic_name
from tests.conftest import CORPUS, REPO, free_port
from tests.streams.worker_harness import SECSTREAM, OutputReader, Worker, wait_caught_up
from workspace.testing import WorkspaceEmulator

pytestmark = pytest.mark.integration

# Small Security-channel EVTX files, each from other Computers (post-Security.evtx holds two).
FILES = [
    "mdecrevoisier__EVTX-to-MITRE-Attack/EVTX_full_APT_attack_steps/"
    "ID47x,4661-4662,5136,4688,4697-SAM the admin (CVE-2021-42287).evtx",
    "mdecrevoisier__EVTX-to-MITRE-Attack/TA0003-Persistence/T1136-Create account/ID472, 4728 Hidden user creation.evtx",
    "mdecrevoisier__EVTX-to-MITRE-Attack/TA0004-Privilege Escalation/T1134-Access Token Manipulation/"
    "ID4704-4705-User righ assigned to account.evtx",
    "mdecrevoisier__EVTX-to-MITRE-Attack/TA0004-Privilege Escalation/T1484-Domain or Tenant Policy Modification/"
    "ID 4865 4706 - trust added.evtx",
    "mdecrevoisier__EVTX-to-MITRE-Attack/TA0005-Defense Evasion/T1222.001-File and Directory Permissions Modification/"
    "ID5124-OCSP security settings changed.evtx",
    "mdecrevoisier__EVTX-to-MITRE-Attack/TA0006-Credential Access/T1110.xxx-Brut force/"
    "ID4625-OpenSSH brutforce with non existing users.evtx",
    "sans-blue-team__DeepBlueCLI/evtx/metasploit-psexec-pwshpayload.evtx",
    "sbousseaden__EVTX-ATTACK-SAMPLES/Credential Access/kerberos_pwd_spray_4771.evtx",
    "sbousseaden__EVTX-ATTACK-SAMPLES/Privilege Escalation/privexchange_dirkjan.evtx",
    "omerbenamram__evtx/samples/post-Security.evtx",
]


def ground_truth(relative: str) -> tuple[int, int]:
    """(records, Security records) of a corpus file, from the corpus's SOURCES.md."""
    for line in (CORPUS / "SOURCES.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 9 and cells[1] == f"`{relative}`":
            return int(cells[7]), int(cells[8])
    raise AssertionError(f"{relative} is not in SOURCES.md")


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A Prometheus text exposition as {(name, labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? ([-+\w.]+)$", line)
        if match is None or line.startswith("#"):
            continue
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        out[(match.group(1), labels)] = float(match.group(3))
    return out


def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and wanted <= lab)


def workspace_counts(ws: WorkspaceEmulator, computers: list[str]) -> dict[str, int]:
    marks = ",".join("?" * len(computers))
    rows = ws.query(f"SELECT Computer AS c, count(*) AS n FROM SecurityEvent WHERE Computer IN ({marks}) "
                    "GROUP BY Computer", computers)
    return {r["c"]: r["n"] for r in rows}


@pytest.fixture
def pipeline_settings(settings: Settings, workspace_emulator: WorkspaceEmulator,
                      tmp_path: Path) -> Iterator[Settings]:
    s = Settings(
        kafka=settings.kafka.model_dump(),
        topics=settings.topics.model_dump(),
        rules=[{"name": "all", "event_set": "All"}],
        destinations=[workspace_emulator.destination("obs")],
        sink={"checkpoint_seconds": 0.5, "retry_backoff_seconds": 0.05, "retry_backoff_max_seconds": 0.2},
        stream={"app_id": f"obs-stream-{tmp_path.name[-12:]}".replace("_", "-"), "commit_interval_seconds": 0.5},
        producer={"state_file": str(tmp_path / "producer-state.json"), "batch_max_age_seconds": 0.1},
        status={"interval_seconds": 0.5},
        telemetry={"exporter": "prometheus", "prometheus_port": free_port(), "prometheus_host": "127.0.0.1"},
    )
    ensure_topics(s)
    yield s
    t = s.topics
    delete_topics(s, [t.raw, t.normalized, t.dead_letter, t.delivery_log, t.status, changelog_topic_name(s)])


def test_metrics_traces_and_status_after_a_pipeline_run(
        pipeline_settings: Settings, workspace_emulator: WorkspaceEmulator, tmp_path: Path) -> None:
    s = pipeline_settings
    paths = [CORPUS / f for f in FILES]
    truth = [ground_truth(f) for f in FILES]
    records, security = sum(r for r, _ in truth), sum(sec for _, sec in truth)
    assert records == security  # Security-channel files only: the rule "All" keeps every record

    worker = Worker(s, tmp_path, "obs").start()  # its telemetry: a Prometheus endpoint on telemetry.prometheus_port
    try:
        worker.wait_ready()
        with InMemoryMetrics() as metrics, InMemorySpans() as spans:
            producer = ProducerStage(s, discover(paths), kafka_sink_factory(s))
            run_stage(producer)
            computers = sorted({e["computer"] for src in discover(paths) for e, _ in src.read(None)})
            before = workspace_counts(workspace_emulator, computers)

            wait_caught_up(s)
            reader = OutputReader(s)
            reader.wait_rows(security, timeout=30, settle=0.5)
            normalized = list(reader.messages)
            reader.close()
            with workspace_emulator.faults(schedule=["429", "500"]):
                sink = SinkStage(s, s.destinations[0], idle_exit_seconds=2.0)
                run_stage(sink, checkpoint_seconds=s.sink.checkpoint_seconds)
            after = workspace_counts(workspace_emulator, computers)

            # ---- exact counts, every stage, against SOURCES.md
            delivered = {c: after.get(c, 0) - before.get(c, 0) for c in computers}
            assert sum(delivered.values()) == security
            assert metrics.value("secstream.producer.events_read") == records
            assert metrics.value("secstream.producer.events_delivered") == records
            assert metrics.value("secstream.producer.events_filtered") == 0
            batches = metrics.value("secstream.producer.batches_delivered")
            assert batches >= len(computers)  # a batch is one host's
            assert metrics.histogram("secstream.producer.batch_events").count == batches
            assert metrics.histogram("secstream.producer.batch_events").sum == records

            attrs = {"destination": "obs"}
            assert metrics.value("secstream.sink.events_in", **attrs) == security
            assert metrics.value("secstream.sink.rows_accepted", **attrs) == security
            assert metrics.value("secstream.sink.rows_dead_lettered", **attrs) == 0
            assert metrics.value("secstream.sink.batches", **attrs) == len(normalized)
            assert metrics.histogram("secstream.sink.batch_events", **attrs).sum == security
            assert metrics.value("secstream.sink.throttled", **attrs) == 1
            assert metrics.value("secstream.sink.server_errors", **attrs) == 1
            attempts = metrics.value("secstream.sink.requests", **attrs)
            assert metrics.value("secstream.sink.requests", status="204", **attrs) == attempts - 2
            assert metrics.histogram("secstream.sink.upload_latency", **attrs).count == attempts

            # the stream worker's own figures, scraped from its Prometheus endpoint
            scraped = scrape(s.telemetry.prometheus_port)
            assert total(scraped, "secstream_stream_events_in_total") == records
            assert total(scraped, "secstream_stream_events_out_total") == security
            assert total(scraped, "secstream_stream_messages_in_total") == batches
            assert total(scraped, "secstream_stream_events_filtered_total") == 0
            assert total(scraped, "secstream_stream_events_deduplicated_total") == 0
            assert total(scraped, "secstream_stream_events_dead_lettered_total") == 0
            assert total(scraped, "secstream_stream_batch_events_count") == batches
            # consumer lag per partition (high watermark vs committed), reported every 5 s: caught up = 0
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                lag = {dict(lab)["partition"]: v for (n, lab), v in scrape(s.telemetry.prometheus_port).items()
                       if n == "secstream_kafka_consumer_lag" and dict(lab).get("stage") == "stream"}
                if len(lag) == s.topics.raw_partitions and not any(lag.values()):
                    break
                time.sleep(0.5)
            assert lag == {str(p): 0.0 for p in range(s.topics.raw_partitions)}

            # ---- one trace per batch: producer span → stream span → sink request span
            produced = {span.context.trace_id: span.context.span_id for span in spans.spans("producer.batch")}
            assert len(produced) == batches
            for msg in normalized:
                header = dict(msg.headers() or {})["traceparent"].decode()
                _, trace_id, parent_id, _ = header.split("-")
                assert int(trace_id, 16) in produced, "the stream's output carries the producer's trace"
                assert int(parent_id, 16) != produced[int(trace_id, 16)], "...as a child span of the stream's"
            stream_span_ids = {dict(m.headers() or {})["traceparent"].decode().split("-")[2] for m in normalized}
            requests = spans.spans("sink.request")
            assert requests
            for span in requests:
                assert span.context.trace_id in produced
                assert span.parent is not None and format_span_id(span.parent.span_id) in stream_span_ids
            assert {format_trace_id(r.context.trace_id) for r in requests} <= {
                format_trace_id(t) for t in produced}
    finally:
        worker.stop()

    # ---- connector health: every Computer, its rows, no lag
    report = build_report(s)
    named = {c.computer: c for c in report.computers if c.destination == "obs"}
    assert sorted(named) == computers
    assert {c: round(named[c].rows_in_window) for c in computers} == delivered
    assert all(not c.silent and c.sink_lag == 0 and c.stream_lag == 0 for c in named.values())
    assert {st.stage: st.total for st in report.stages} == {"stream": 0, "sink obs": 0}
    later = build_report(s, now=time.time() + 3600)  # an hour later nothing new arrived: all silent
    assert {c.computer for c in later.silent} == set(computers)

    config = tmp_path / "status.yaml"
    config.write_text(yaml.safe_dump(s.model_dump(mode="json", exclude_none=True)))
    env = {**os.environ, "COLUMNS": "250"}
    env.pop("SECSTREAM_CONFIG", None)
    shown = subprocess.run([SECSTREAM, "--config", str(config), "status", "--silent-after", "30m"],
                           capture_output=True, text=True, timeout=60, cwd=REPO, env=env, check=False)
    print(shown.stdout)
    assert shown.returncode == 0, shown.stderr
    for computer in computers:
        assert computer in shown.stdout
    assert "none silent for more than 30 min" in shown.stdout
    time.sleep(1.1)
    as_json = subprocess.run([SECSTREAM, "--config", str(config), "status", "--json", "--silent-after", "1s",
                              "--fail-on-silent"], capture_output=True, text=True, timeout=60, cwd=REPO, env=env,
                             check=False)
    assert as_json.returncode == 1, as_json.stderr  # every Computer has been silent for more than a second
    parsed = json.loads(as_json.stdout)
    assert sorted({c["computer"] for c in parsed["computers"]}) == computers
