"""Hostile input and secrets, through the real ``secstream`` processes.

Unit-level checks live with their areas and are not repeated here: DOCTYPE / entity rejection of the XML adapter
(``tests/producers/test_event_xml.py::test_dtd_and_entities_rejected``), collector 401 / 413 / gzip bombs
(``tests/producers/test_collector.py::test_bad_or_missing_token_is_401``,
``::test_oversize_body_and_gzip_bomb_are_413``). This module checks the same promises end to end: what reaches
Kafka, what lands in the dead-letter topic, and what the processes print.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from secstream.broker import EmbeddedBroker
from secstream.config import Settings
from secstream.pipeline import StageProcess, write_config
from streams.xpath import XPathError, compile_queries
from tests.conftest import free_port
from tests.reliability.chaos import read_topic

EVENT = (
    '<Event xmlns="http://schemas.microsoft.com/win/2004/08/events/event"><System>'
    '<Provider Name="Microsoft-Windows-Security-Auditing"/><EventID>4624</EventID>'
    '<TimeCreated SystemTime="2024-03-01T10:00:00.1234567Z"/><EventRecordID>{record}</EventRecordID>'
    "<Channel>Security</Channel><Computer>{host}</Computer></System>"
    '<EventData><Data Name="TargetUserName">{value}</Data></EventData></Event>'
)
BOMB_DTD = ('<!DOCTYPE Event [<!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">'
            + "".join(f'<!ENTITY {n} "{("&" + p + ";") * 10}">' for p, n in zip("abcdefgh", "bcdefghi", strict=True))
            + "]>")


def base_config(settings: Settings, tmp_path: Path) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": settings.kafka.bootstrap_servers},
        "topics": settings.topics.model_dump(mode="json"),
        "producer": {"state_file": str(tmp_path / "state.json")},
    }


@pytest.mark.integration
def test_external_entities_and_entity_bombs_never_reach_kafka(settings: Settings, tmp_path: Path) -> None:
    marker = f"XXE-{uuid.uuid4().hex}"
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(marker)
    host = f"sec-{uuid.uuid4().hex[:8]}"
    xxe = tmp_path / "xxe.xml"
    xxe.write_text(f'<?xml version="1.0"?><!DOCTYPE Event [<!ENTITY x SYSTEM "file://{secret_file}">]>'
                   + EVENT.format(record=1, host=host, value="&x;"))
    bomb = tmp_path / "bomb.xml"
    bomb.write_text(BOMB_DTD + EVENT.format(record=2, host=host, value="&i;"))
    good = tmp_path / "good.xml"
    good.write_text(EVENT.format(record=3, host=host, value="alice"))
    config = write_config(tmp_path / "config.yaml", base_config(settings, tmp_path))

    started = time.monotonic()
    producer = StageProcess("producer", ["produce", "--quiet", str(xxe), str(bomb), str(good)], config, tmp_path)
    assert producer.process is not None
    assert producer.process.wait(120) == 0, producer.tail()
    assert time.monotonic() - started < 60  # 10^8 expansions never happened
    assert producer.peak_rss_bytes() == 0 or producer.peak_rss_bytes() < 1 << 30

    raw = read_topic(settings.kafka.bootstrap_servers, settings.topics.raw)
    assert raw, "the good event was not delivered"
    assert all(marker.encode() not in value and b"aaaaaaaaaa" * 10 not in value for value, _ in raw)
    assert sum(value.count(host.encode()) for value, _ in raw) >= 1
    dead = read_topic(settings.kafka.bootstrap_servers, settings.topics.dead_letter)
    reasons = {h.get("secstream.source", ""): h.get("secstream.reason", "") for _, h in dead}
    assert all(h.get("secstream.stage") == "producer" for _, h in dead)
    for path in (xxe, bomb):
        assert "DOCTYPE" in reasons.get(str(path), ""), reasons
    assert all(marker.encode() not in value for value, _ in dead)
    assert marker not in producer.log_text()


def test_query_list_rules_refuse_entities(tmp_path: Path) -> None:
    marker = f"XXE-{uuid.uuid4().hex}"
    (tmp_path / "secret.txt").write_text(marker)
    query_list = (f'<!DOCTYPE QueryList [<!ENTITY x SYSTEM "file://{tmp_path / "secret.txt"}">]>'
                  '<QueryList><Query Id="0"><Select Path="Security">*[System[(EventID=&x;)]]</Select></Query>'
                  "</QueryList>")
    with pytest.raises(XPathError) as refused:
        compile_queries(query_list)
    assert marker not in str(refused.value)
    with pytest.raises(XPathError):
        compile_queries(BOMB_DTD.replace("Event", "QueryList")
                        + '<QueryList><Query Id="0"><Select Path="Security">*[System[Computer=\'&i;\']]</Select>'
                          "</Query></QueryList>")


@pytest.mark.integration
def test_no_secret_in_any_log_even_at_debug_level(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """Every stage started with secrets in its config (SASL password, emulator token, collector token, Entra
    client secret), at debug level, against endpoints that refuse it: nothing it prints may contain them."""
    secrets = {name: f"{name}-{uuid.uuid4().hex}" for name in ("sasl", "emulator", "collector", "client")}
    tokens = tmp_path / "tokens"
    tokens.write_text(f"agent-1 {secrets['collector']}\n")
    good = tmp_path / "good.xml"
    good.write_text(EVENT.format(record=1, host="secret-scan-host", value="alice"))
    run = uuid.uuid4().hex[:8]
    config = write_config(tmp_path / "config.yaml", {
        "kafka": {"bootstrap_servers": broker.bootstrap, "security_protocol": "SASL_PLAINTEXT",
                  "sasl_mechanism": "PLAIN", "sasl_username": "scan", "sasl_password": secrets["sasl"]},
        "topics": {"raw": f"raw-{run}", "normalized": f"norm-{run}", "dead_letter": f"dlq-{run}",
                   "delivery_log": f"dl-{run}", "status": f"st-{run}"},
        "stream": {"data_dir": str(tmp_path / "stream"), "app_id": f"scan-{run}"},
        "producer": {"state_file": str(tmp_path / "state.json"), "collector_token": secrets["collector"],
                     "collector_retry_max_seconds": 1.0},
        "collector": {"tokens_file": str(tokens)},
        "destinations": [
            {"name": "emulated", "endpoint": f"https://127.0.0.1:{free_port()}",
             "dcr_immutable_ids": ["dcr-00000000000000000000000000000001"],
             "credential": {"mode": "emulator", "token": secrets["emulator"]}},
            {"name": "entra", "endpoint": f"https://127.0.0.1:{free_port()}",
             "dcr_immutable_ids": ["dcr-00000000000000000000000000000002"],
             "credential": {"mode": "client_secret", "tenant_id": "00000000-0000-0000-0000-000000000000",
                            "client_id": "00000000-0000-0000-0000-000000000001",
                            "client_secret": secrets["client"]}},
        ],
    })
    collector_port = free_port()
    commands = {
        "config": ["config"],
        "producer": ["produce", "--quiet", str(good)],
        "agent": ["produce", "--quiet", "--state-file", str(tmp_path / "agent.json"),
                  "--collector", f"http://127.0.0.1:{collector_port}", str(good)],
        "collector": ["collect", "--port", str(collector_port)],
        "stream": ["stream"],
        "sink": ["sink", "--until-idle", "5"],
        "status": ["status"],
    }
    stages = [StageProcess(name, args, config, tmp_path / "logs", log_level="debug") for name, args in commands.items()]
    try:
        time.sleep(20)
    finally:
        for stage in stages:
            stage.stop(timeout=10)
    assert "scan" in stages[0].log_text(), "config printed nothing"
    for stage in stages:
        text = stage.log_text()
        for name, secret in secrets.items():
            assert secret not in text, f"the {name} secret appears in the output of `secstream {stage.name}`"
