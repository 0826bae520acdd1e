"""The topics hook Job creates every topic the stages use, as named in values; the Windows producer DaemonSet's
command line is one `secstream produce` accepts, reading the configured live channels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from secstream.config import Settings, TopicSettings, load_settings
from secstream.topics import planned_topics
from tests.helm.chart import CHART, Helm, HelmError, one, pod_spec, values_of
from tests.helm.test_helm_cli_contract import parse

MINIMAL = CHART / "ci" / "minimal-values.yaml"
FULL = CHART / "ci" / "full-values.yaml"
# settings field (TopicSettings) -> values key (topics.<key>)
CHART_TOPICS = {"raw": "raw", "normalized": "normalized", "dead_letter": "deadLetter",
                "delivery_log": "deliveryLog", "status": "status"}


def topics_job_settings(docs: list[dict[str, Any]], tmp_path: Path) -> Settings:
    """The settings the topics hook Job runs `secstream topics create` with (its own hook ConfigMap)."""
    job = one(docs, "Job", "r1-secstream-topics")
    volumes = {v["name"]: v for v in pod_spec(job)["volumes"]}
    assert any(v.get("configMap", {}).get("name") == "r1-secstream-topics-config" for v in volumes.values())
    config = tmp_path / "config.yaml"
    config.write_text(one(docs, "ConfigMap", "r1-secstream-topics-config")["data"]["config.yaml"])
    return load_settings(config)


def test_every_topic_of_the_settings_has_a_chart_value() -> None:
    names = {name for name, field in TopicSettings.model_fields.items() if field.annotation is str}
    assert names == set(CHART_TOPICS)
    assert set(values_of(MINIMAL)["topics"]) >= set(CHART_TOPICS.values())


def test_the_topics_job_creates_every_topic_as_named_in_values(helm: Helm, tmp_path: Path) -> None:
    sets = {"topics.status.name": "soc.status", "topics.status.partitions": "3",
            "topics.deliveryLog.name": "soc.delivery-log"}
    settings = topics_job_settings(helm.template([MINIMAL], sets), tmp_path)
    planned = {spec.name: spec for spec in planned_topics(settings)}
    values = values_of(MINIMAL)["topics"]
    expected = {key: values[key]["name"] for key in CHART_TOPICS.values()}
    expected.update(status="soc.status", deliveryLog="soc.delivery-log")
    assert set(planned) == set(expected.values())
    for field, key in CHART_TOPICS.items():
        assert getattr(settings.topics, field) == expected[key]
    assert planned["soc.status"].partitions == 3
    assert planned["soc.status"].config["cleanup.policy"] == "compact"


def test_a_bad_status_topic_value_is_refused(helm: Helm) -> None:
    with pytest.raises(HelmError, match="status"):
        helm.template([MINIMAL], {"topics.status.partitions": "0"})


def producer_command(helm: Helm, sets: dict[str, str] | None = None) -> Any:
    ds = one(helm.template([FULL], sets), "DaemonSet", "r1-secstream-producer")
    container = pod_spec(ds)["containers"][0]
    assert container["command"] == ["secstream"]
    return parse(container["args"])


def test_the_windows_producer_reads_the_security_channel_live_by_default(helm: Helm) -> None:
    ctx = producer_command(helm)
    assert ctx.info_name == "produce"
    assert ctx.params["channel"] == ["Security"]
    assert ctx.params["follow"] is True
    assert not ctx.params["paths"]


def test_the_windows_producer_reads_every_configured_channel(helm: Helm) -> None:
    channels = ["Security", "Microsoft-Windows-AppLocker/EXE and DLL"]
    ctx = producer_command(helm, {"producer.channels": "{" + ",".join(channels) + "}"})
    assert ctx.params["channel"] == channels
    assert not ctx.params["paths"]


def test_a_producer_with_nothing_to_read_is_refused(helm: Helm) -> None:
    with pytest.raises(HelmError, match=r"producer\.channels"):
        helm.template([FULL], {"producer.channels": "null", "producer.args": "{--follow}"})
    ctx = producer_command(helm, {"producer.channels": "null", "producer.args": "{--follow,C:/ProgramData/logs}"})
    assert [str(p) for p in ctx.params["paths"]] == ["C:/ProgramData/logs"] and not ctx.params["channel"]
