"""The Helm chart, rendered by a real helm: lint, Kubernetes and KEDA schemas, partition bounds, shared config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from secstream.config import load_settings
from tests.helm.chart import (
    CHART,
    CI_VALUES,
    KUBE_VERSION,
    Helm,
    HelmError,
    by_kind,
    crd_errors,
    one,
    pod_spec,
    values_of,
    workloads,
)

CI_IDS = [p.name.removesuffix("-values.yaml") for p in CI_VALUES]
MINIMAL = CHART / "ci" / "minimal-values.yaml"
FULL = CHART / "ci" / "full-values.yaml"
EVENTHUBS = CHART / "ci" / "eventhubs-values.yaml"
KEDA_OFF = CHART / "ci" / "keda-off-values.yaml"
CONFIG_MOUNT = "/etc/secstream/config.yaml"


@pytest.fixture(scope="module")
def rendered(helm: Helm) -> dict[str, list[dict[str, Any]]]:
    """Every CI values file, rendered once for the module."""
    return {p.name: helm.template([p]) for p in CI_VALUES}


def test_ci_matrix_is_complete() -> None:
    assert set(CI_IDS) >= {"minimal", "full", "eventhubs", "keda-off"}


@pytest.mark.parametrize("values", CI_VALUES, ids=CI_IDS)
def test_lint_strict(helm: Helm, values: Path) -> None:
    out = helm.lint(values)
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize(
    ("sets", "complaint"),
    [
        ({"topics.raw.partitions": "0"}, "topics.raw.partitions"),
        ({"stream.lagThreshold": "lots"}, "stream.lagThreshold"),
        ({"stream.replicaz": "3"}, "replicaz"),
        ({"autoscaling.mode": "vpa"}, "autoscaling.mode"),
        ({"image.tag": "latest"}, "image.tag"),
        ({"destinations[0].dcr_immutable_ids[0]": "dcr-XYZ"}, "destinations.0.dcr_immutable_ids.0"),
        ({"destinations[0].credential.client_secret": "hunter2"}, "client_secret"),
        ({"kafka.securityProtocol": "SASL_SSL", "existingSecret": "s"}, "kafka.sasl.mechanism"),
    ],
    ids=["zero-partitions", "lag-not-int", "typo", "bad-mode", "latest-tag", "bad-dcr", "secret-in-values",
         "sasl-without-mechanism"],
)
def test_lint_rejects_bad_values(helm: Helm, sets: dict[str, str], complaint: str) -> None:
    with pytest.raises(HelmError) as err:
        helm.lint(MINIMAL, sets)
    # Helm 4 names the field as a JSON pointer (/a/b), Helm 3 with dots (a.b).
    assert complaint in err.value.stderr.replace("/", ".")


@pytest.mark.parametrize("kube_version", ["1.25.0", KUBE_VERSION, "1.33.0"])
@pytest.mark.parametrize("values", CI_VALUES, ids=CI_IDS)
def test_every_object_passes_its_schema(
    rendered: dict[str, list[dict[str, Any]]], values: Path, kube_version: str
) -> None:
    """Core kinds against Kubernetes (strict: unknown fields fail) from the chart's kubeVersion floor (1.25) on;
    KEDA kinds against the KEDA CRDs."""
    docs = rendered[values.name]
    problems: list[str] = []
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].startswith("keda.sh/"):
            problems += [f"{name}: {e}" for e in crd_errors(doc)]
        elif doc["apiVersion"].startswith("monitoring.coreos.com/"):
            # No CRD for the Prometheus operator is at hand: check the fields the chart relies on.
            assert doc["kind"] == "ServiceMonitor" and doc["spec"]["endpoints"][0]["port"] == "metrics", name
        else:
            try:
                kubernetes_validate.validate(doc, kube_version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{name}: {exc.message} at {'.'.join(str(p) for p in exc.path)}")
    assert problems == []
    assert len(docs) > 5


def test_crd_validation_catches_mistakes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The KEDA check is strict: a misspelled field, an integer lagThreshold and a zero polling interval fail."""
    scaled = by_kind(rendered[MINIMAL.name], "ScaledObject")[0]
    broken = yaml.safe_load(yaml.safe_dump(scaled))
    broken["spec"]["maxReplicaCont"] = 3
    broken["spec"]["pollingInterval"] = 0
    broken["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 1000
    errors = "\n".join(crd_errors(broken))
    assert "maxReplicaCont" in errors
    assert "pollingInterval" in errors
    assert "lagThreshold" in errors


def _consumer_bounds(docs: list[dict[str, Any]], values: dict[str, Any]) -> dict[str, tuple[int, int | None]]:
    """Deployment name -> (partitions of its topic, the most replicas anything in the render allows)."""
    topics = values["topics"]
    partitions = {topics["raw"]["name"]: topics["raw"]["partitions"],
                  topics["normalized"]["name"]: topics["normalized"]["partitions"]}
    out: dict[str, tuple[int, int | None]] = {}
    for so in by_kind(docs, "ScaledObject"):
        trigger = so["spec"]["triggers"][0]["metadata"]
        out[so["spec"]["scaleTargetRef"]["name"]] = (partitions[trigger["topic"]], so["spec"]["maxReplicaCount"])
    for hpa in by_kind(docs, "HorizontalPodAutoscaler"):
        metric = hpa["spec"]["metrics"][0]
        if metric["type"] == "External":
            topic = metric["external"]["metric"]["selector"]["matchLabels"]["topic"]
            out[hpa["spec"]["scaleTargetRef"]["name"]] = (partitions[topic], hpa["spec"]["maxReplicas"])
    return out


@pytest.mark.parametrize("values", CI_VALUES, ids=CI_IDS)
def test_consumers_never_exceed_partitions(rendered: dict[str, list[dict[str, Any]]], values: Path) -> None:
    docs, vals = rendered[values.name], values_of(values)
    raw, normalized = vals["topics"]["raw"]["partitions"], vals["topics"]["normalized"]["partitions"]
    consumers = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")
                 if d["metadata"]["labels"]["app.kubernetes.io/component"] != "collector"}
    assert consumers, "no consumer Deployments rendered"
    for name, deployment in consumers.items():
        args = pod_spec(deployment)["containers"][0]["args"]
        limit = raw if "stream" in args else normalized
        assert deployment["spec"].get("replicas", 1) <= limit, name
        for so in by_kind(docs, "ScaledObject"):
            if so["spec"]["scaleTargetRef"]["name"] == name:
                assert so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"] <= limit, name
        for hpa in by_kind(docs, "HorizontalPodAutoscaler"):
            if hpa["spec"]["scaleTargetRef"]["name"] == name:
                assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] <= limit, name
    if vals["autoscaling"]["mode"] == "keda":
        assert set(_consumer_bounds(docs, vals)) == set(consumers), "every consumer Deployment has a ScaledObject"


@pytest.mark.parametrize("partitions", [1, 6, 24])
def test_max_replicas_default_to_partition_count(helm: Helm, partitions: int) -> None:
    docs = helm.template([MINIMAL], {"topics.raw.partitions": str(partitions),
                                     "topics.normalized.partitions": str(partitions + 1)})
    stream = one(docs, "ScaledObject", "r1-secstream-stream")
    sink = one(docs, "ScaledObject", "r1-secstream-sink-main")
    assert stream["spec"]["maxReplicaCount"] == partitions
    assert sink["spec"]["maxReplicaCount"] == partitions + 1


@pytest.mark.parametrize(
    "sets",
    [
        {"stream.maxReplicas": "7"},
        {"autoscaling.mode": "none", "stream.replicas": "7"},
        {"autoscaling.mode": "hpa", "sink.maxReplicas": "9"},
        {"sink.perDestination.main.maxReplicas": "7"},
        {"stream.minReplicas": "4", "topics.raw.partitions": "3"},
    ],
    ids=["keda-max", "fixed-replicas", "hpa-max", "per-destination", "min-above-partitions"],
)
def test_more_replicas_than_partitions_fail(helm: Helm, sets: dict[str, str]) -> None:
    with pytest.raises(HelmError) as err:
        helm.template([MINIMAL], {"topics.raw.partitions": "6", "topics.normalized.partitions": "6", **sets})
    assert "partitions" in err.value.stderr


@pytest.mark.parametrize("values", CI_VALUES, ids=CI_IDS)
def test_every_stage_reads_the_same_settings_file(rendered: dict[str, list[dict[str, Any]]], values: Path) -> None:
    docs = rendered[values.name]
    main = one(docs, "ConfigMap", "r1-secstream-config")
    config_maps = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    checksums = set()
    stages = list(workloads(docs))
    assert stages
    for w in stages:
        spec = pod_spec(w)
        [volume] = [v for v in spec["volumes"] if v["name"] == "config"]
        source = config_maps[volume["configMap"]["name"]]
        # The topic hook runs before the release's ConfigMap exists: its copy must be identical.
        assert source["data"] == main["data"], w["metadata"]["name"]
        for c in spec["containers"]:
            assert c["command"] == ["secstream"]
            env = {e["name"]: e for e in c["env"]}
            [mount] = [m for m in c["volumeMounts"] if m["name"] == "config"]
            if spec.get("os", {}).get("name") == "windows":
                # HostProcess containers get the ConfigMap as a directory (no subPath).
                assert env["SECSTREAM_CONFIG"]["value"] == f"{mount['mountPath']}/config.yaml"
                assert "subPath" not in mount and mount["readOnly"] is True
                continue
            assert env["SECSTREAM_CONFIG"]["value"] == CONFIG_MOUNT
            assert (mount["mountPath"], mount.get("subPath"), mount["readOnly"]) == (CONFIG_MOUNT, "config.yaml", True)
        checksums.add(w["spec"]["template"]["metadata"]["annotations"]["checksum/config"])
    assert len(checksums) == 1, "every pod rolls on the same settings checksum"


def test_settings_change_rolls_the_pods(helm: Helm) -> None:
    def checksum(docs: list[dict[str, Any]]) -> str:
        deployment = one(docs, "Deployment", "r1-secstream-stream")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    before = checksum(helm.template([MINIMAL]))
    assert checksum(helm.template([MINIMAL])) == before
    assert checksum(helm.template([MINIMAL], {"topics.retentionMs": "86400000"})) != before


@pytest.mark.parametrize("values", CI_VALUES, ids=CI_IDS)
def test_rendered_settings_load_in_the_settings_model(
    rendered: dict[str, list[dict[str, Any]]], values: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings file is valid for secstream/config.py, with the partition counts and ports from values."""
    docs, vals = rendered[values.name], values_of(values)
    config = tmp_path / "config.yaml"
    config.write_text(one(docs, "ConfigMap", "r1-secstream-config")["data"]["config.yaml"])
    # The SASL password reaches the pods as an environment variable, never through the file.
    stream_env = {e["name"] for e in pod_spec(workloads_named(docs, "stream"))["containers"][0]["env"]} \
        if vals["stream"]["enabled"] else set()
    if vals["kafka"]["securityProtocol"].startswith("SASL"):
        assert "SECSTREAM_KAFKA__SASL_PASSWORD" in stream_env
        monkeypatch.setenv("SECSTREAM_KAFKA__SASL_PASSWORD", "from-the-secret")
    settings = load_settings(config)
    assert settings.kafka.bootstrap_servers == vals["kafka"]["bootstrapServers"]
    assert settings.topics.raw_partitions == vals["topics"]["raw"]["partitions"]
    assert settings.topics.normalized_partitions == vals["topics"]["normalized"]["partitions"]
    assert settings.topics.raw == vals["topics"]["raw"]["name"]
    assert settings.telemetry.health_port == vals["telemetry"]["healthPort"]
    assert [d.name for d in settings.destinations] == [d["name"] for d in vals["destinations"]]
    assert [r.name for r in settings.rules] == [r["name"] for r in vals["rules"]]
    assert "password" not in config.read_text().lower()
    if vals["metrics"]["enabled"]:
        assert settings.telemetry.exporter == "prometheus"


def workloads_named(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    [w] = [w for w in workloads(docs) if w["metadata"]["labels"]["app.kubernetes.io/component"] == component]
    return w


@pytest.mark.parametrize("values", CI_VALUES, ids=CI_IDS)
def test_probes_use_the_health_port(rendered: dict[str, list[dict[str, Any]]], values: Path) -> None:
    docs, vals = rendered[values.name], values_of(values)
    long_running = [w for w in workloads(docs) if w["kind"] in ("Deployment", "DaemonSet")]
    assert long_running
    for w in long_running:
        c = pod_spec(w)["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        expected = vals["producer"]["healthPort"] if w["kind"] == "DaemonSet" else vals["telemetry"]["healthPort"]
        assert ports["health"] == expected, w["metadata"]["name"]
        if w["metadata"]["labels"]["app.kubernetes.io/component"] == "collector":
            # The gateway answers /healthz on its own listener (collector.probePort=collector).
            scheme = "HTTPS" if vals["collector"]["tlsSecret"] else "HTTP"
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                assert c[probe]["httpGet"] == {"path": "/healthz", "port": "collector", "scheme": scheme}
            assert ports["collector"] == vals["collector"]["port"]
            continue
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
        assert c["startupProbe"]["httpGet"]["port"] == "health"
        if vals["metrics"]["enabled"] and w["kind"] == "Deployment":
            assert ports["metrics"] == vals["telemetry"]["prometheusPort"]


@pytest.mark.parametrize("values", CI_VALUES, ids=CI_IDS)
def test_linux_pods_are_non_root_and_read_only(rendered: dict[str, list[dict[str, Any]]], values: Path) -> None:
    for w in workloads(rendered[values.name]):
        spec = pod_spec(w)
        if spec.get("os", {}).get("name") == "windows":
            continue
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["nodeSelector"]["kubernetes.io/os"] == "linux"
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["runAsNonRoot"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["requests"] and c["resources"]["limits"]
            writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
            assert {"/tmp", "/var/lib/secstream"} <= writable
            assert c["workingDir"] == "/var/lib/secstream"
        empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        assert {"tmp", "data"} <= empty_dirs


def test_keda_scales_each_consumer_group_on_its_topic(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs, vals = rendered[FULL.name], values_of(FULL)
    triggers = {so["spec"]["scaleTargetRef"]["name"]: so["spec"]["triggers"][0] for so in by_kind(docs, "ScaledObject")}
    stream = triggers["r1-secstream-stream"]
    assert stream["type"] == "kafka"
    assert stream["metadata"]["consumerGroup"] == vals["stream"]["appId"]
    assert stream["metadata"]["topic"] == vals["topics"]["raw"]["name"]
    assert stream["metadata"]["lagThreshold"] == "100"
    assert stream["metadata"]["allowIdleConsumers"] == "false"
    for dest in vals["destinations"]:
        sink = triggers[f"r1-secstream-sink-{dest['name']}"]
        assert sink["metadata"]["consumerGroup"] == f"secstream-sink-{dest['name']}"
        assert sink["metadata"]["topic"] == vals["topics"]["normalized"]["name"]
        assert sink["authenticationRef"]["name"] == "r1-secstream-kafka"
    # The sink's consumer group prefix is rendered into the settings so the workers and KEDA agree.
    settings = yaml.safe_load(one(docs, "ConfigMap", "r1-secstream-config")["data"]["config.yaml"])
    assert settings["sink"]["group_prefix"] == "secstream-sink-"
    assert settings["stream"]["app_id"] == vals["stream"]["appId"]
    # With autoscaling, the Deployments leave replicas to the autoscaler.
    assert all("replicas" not in d["spec"] for d in by_kind(docs, "Deployment")
               if d["metadata"]["labels"]["app.kubernetes.io/component"] != "collector")


def test_free_form_settings_merge_under_the_managed_ones(helm: Helm, tmp_path: Path) -> None:
    docs = helm.template([MINIMAL], {"config.stream.store": "rocksdb://", "config.sink.max_in_flight": "8",
                                     "config.stream.app_id": "ignored", "stream.appId": "soc-stream"})
    config = tmp_path / "config.yaml"
    config.write_text(one(docs, "ConfigMap", "r1-secstream-config")["data"]["config.yaml"])
    settings = load_settings(config)
    assert (settings.stream.store, settings.sink.max_in_flight) == ("rocksdb://", 8)
    assert settings.stream.app_id == "soc-stream"
    assert one(docs, "ScaledObject", "r1-secstream-stream")["spec"]["triggers"][0]["metadata"]["consumerGroup"] == \
        "soc-stream"


def test_event_hubs_authentication(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered[EVENTHUBS.name]
    settings = yaml.safe_load(one(docs, "ConfigMap", "r1-secstream-config")["data"]["config.yaml"])
    assert settings["kafka"] == {"bootstrap_servers": "secstream-ns.servicebus.windows.net:9093",
                                 "security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
                                 "sasl_username": "$ConnectionString", "client_id": "secstream"}
    env = {e["name"]: e for e in pod_spec(workloads_named(docs, "stream"))["containers"][0]["env"]}
    assert env["SECSTREAM_KAFKA__SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "eventhubs-connection", "key": "connection-string"}
    params = one(docs, "Secret", "r1-secstream-kafka-params")["stringData"]
    assert params == {"sasl": "plaintext", "username": "$ConnectionString", "tls": "enable"}
    refs = {r["parameter"]: (r["name"], r["key"])
            for r in one(docs, "TriggerAuthentication", "r1-secstream-kafka")["spec"]["secretTargetRef"]}
    assert refs == {"tls": ("r1-secstream-kafka-params", "tls"), "sasl": ("r1-secstream-kafka-params", "sasl"),
                    "username": ("r1-secstream-kafka-params", "username"),
                    "password": ("eventhubs-connection", "connection-string")}
    assert not by_kind(docs, "Job"), "topics are event hubs provisioned outside the chart here"


def test_strimzi_tls_and_scram(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered[FULL.name]
    settings = yaml.safe_load(one(docs, "ConfigMap", "r1-secstream-config")["data"]["config.yaml"])
    assert settings["kafka"]["ssl_ca_location"] == "/etc/secstream/kafka-ca/ca.crt"
    assert settings["kafka"]["sasl_mechanism"] == "SCRAM-SHA-512"
    spec = pod_spec(workloads_named(docs, "stream"))
    assert {"name": "kafka-ca", "mountPath": "/etc/secstream/kafka-ca", "readOnly": True} in \
        spec["containers"][0]["volumeMounts"]
    [ca] = [v for v in spec["volumes"] if v["name"] == "kafka-ca"]
    assert ca["secret"]["secretName"] == "my-cluster-cluster-ca-cert"
    refs = {r["parameter"]: (r["name"], r["key"])
            for r in one(docs, "TriggerAuthentication", "r1-secstream-kafka")["spec"]["secretTargetRef"]}
    assert refs["ca"] == ("my-cluster-cluster-ca-cert", "ca.crt")
    assert refs["password"] == ("secstream", "password")
    assert one(docs, "Secret", "r1-secstream-kafka-params")["stringData"]["sasl"] == "scram_sha512"


def test_hpa_mode_without_keda(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs, vals = rendered[KEDA_OFF.name], values_of(KEDA_OFF)
    assert not [d for d in docs if d["apiVersion"].startswith("keda.sh/")]
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in by_kind(docs, "HorizontalPodAutoscaler")}
    assert hpas["r1-secstream-stream"]["spec"]["maxReplicas"] == vals["topics"]["raw"]["partitions"]
    assert hpas["r1-secstream-sink-main"]["spec"]["maxReplicas"] == 4
    lag = hpas["r1-secstream-stream"]["spec"]["metrics"][0]["external"]
    assert lag["metric"]["selector"]["matchLabels"] == {"consumergroup": "secstream-stream", "topic": "secstream.raw"}
    assert lag["target"] == {"type": "AverageValue", "averageValue": "200"}
    assert "replicas" not in one(docs, "Deployment", "r1-secstream-stream")["spec"]


def test_fixed_replicas_without_autoscaling(helm: Helm) -> None:
    docs = helm.template([MINIMAL], {"autoscaling.mode": "none", "stream.replicas": "3"})
    assert not by_kind(docs, "HorizontalPodAutoscaler") and not by_kind(docs, "ScaledObject")
    assert one(docs, "Deployment", "r1-secstream-stream")["spec"]["replicas"] == 3


def test_one_sink_deployment_per_destination(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs, vals = rendered[FULL.name], values_of(FULL)
    sinks = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")
             if d["metadata"]["labels"]["app.kubernetes.io/component"].startswith("sink-")}
    assert set(sinks) == {f"r1-secstream-sink-{d['name']}" for d in vals["destinations"]}
    for dest in vals["destinations"]:
        c = pod_spec(sinks[f"r1-secstream-sink-{dest['name']}"])["containers"][0]
        assert c["args"][-3:] == ["sink", "--destination", dest["name"]]
    env = {e["name"]: e for e in pod_spec(sinks["r1-secstream-sink-soc-archive"])["containers"][0]["env"]}
    assert env["AZURE_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "soc-archive-sp", "key": "client-secret"}
    main_env = {e["name"] for e in pod_spec(sinks["r1-secstream-sink-main"])["containers"][0]["env"]}
    assert "AZURE_CLIENT_SECRET" not in main_env


def test_workload_identity(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered[FULL.name]
    sa = one(docs, "ServiceAccount", "r1-secstream")
    assert sa["metadata"]["annotations"]["azure.workload.identity/client-id"] == "00000000-0000-0000-0000-000000000001"
    for w in workloads(docs):
        labels = w["spec"]["template"]["metadata"]["labels"]
        if w["metadata"]["labels"]["app.kubernetes.io/component"] != "topics":
            assert labels["azure.workload.identity/use"] == "true", w["metadata"]["name"]
            assert pod_spec(w)["serviceAccountName"] == "r1-secstream"


def test_collector_service_ingress_and_secrets(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered[FULL.name]
    c = pod_spec(one(docs, "Deployment", "r1-secstream-collector"))["containers"][0]
    assert c["args"][-1] == "collect"
    assert {"name": "collector", "containerPort": 8443, "protocol": "TCP"} in c["ports"]
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/etc/secstream/collector-tls", "/etc/secstream/collector-tokens"} <= mounts
    svc = one(docs, "Service", "r1-secstream-collector")
    assert svc["spec"]["ports"][0]["targetPort"] == "collector"
    settings = yaml.safe_load(one(docs, "ConfigMap", "r1-secstream-config")["data"]["config.yaml"])
    assert settings["collector"] == {"host": "0.0.0.0", "port": 8443,
                                     "tls_cert_file": "/etc/secstream/collector-tls/tls.crt",
                                     "tls_key_file": "/etc/secstream/collector-tls/tls.key",
                                     "tokens_dir": "/etc/secstream/collector-tokens"}
    ingress = one(docs, "Ingress", "r1-secstream-collector")
    assert ingress["spec"]["tls"][0]["secretName"] == "collector-example-com-tls"
    assert one(docs, "HorizontalPodAutoscaler", "r1-secstream-collector")["spec"]["maxReplicas"] == 12


def test_collector_can_probe_the_health_server(helm: Helm) -> None:
    docs = helm.template([MINIMAL], {"collector.probePort": "health"})
    c = pod_spec(one(docs, "Deployment", "r1-secstream-collector"))["containers"][0]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}


def test_windows_producer_daemonset(rendered: dict[str, list[dict[str, Any]]]) -> None:
    ds = one(rendered[FULL.name], "DaemonSet", "r1-secstream-producer")
    spec = pod_spec(ds)
    assert spec["os"] == {"name": "windows"}
    assert spec["nodeSelector"]["kubernetes.io/os"] == "windows"
    assert spec["securityContext"]["windowsOptions"]["hostProcess"] is True
    assert spec["hostNetwork"] is True
    c = spec["containers"][0]
    assert c["args"][2:4] == ["produce", "--follow"]
    assert c["image"].startswith("ghcr.io/secstream/secstream-windows:")
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["SECSTREAM_TELEMETRY__HEALTH_PORT"] == "18080"


def test_producer_only_release(helm: Helm) -> None:
    """The Windows producer needs a privileged namespace: it can be a release of its own."""
    docs = helm.template(None, {"kafka.bootstrapServers": "kafka.kafka.svc:9092", "collector.enabled": "false",
                                "stream.enabled": "false", "sink.enabled": "false", "topicsJob.enabled": "false",
                                "producer.enabled": "true"})
    assert [w["kind"] for w in workloads(docs)] == ["DaemonSet"]
    assert not by_kind(docs, "ScaledObject") and not by_kind(docs, "TriggerAuthentication")


def test_topics_hook_job(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered[MINIMAL.name]
    job = one(docs, "Job", "r1-secstream-topics")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    hook_cm = one(docs, "ConfigMap", "r1-secstream-topics-config")
    assert int(hook_cm["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
    assert pod_spec(job)["containers"][0]["args"][-2:] == ["topics", "create"]


def test_backfill_job(rendered: dict[str, list[dict[str, Any]]], helm: Helm) -> None:
    job = one(rendered[FULL.name], "Job", "r1-secstream-backfill-1")
    spec = pod_spec(job)
    assert spec["restartPolicy"] == "Never"
    assert spec["containers"][0]["args"][2:] == [
        "replay", "--topic", "normalized", "--from", "2026-11-01T00:00:00Z", "--to", "2026-11-02T00:00:00Z",
        "--destination", "soc-archive"]
    # The destination's own credentials come with it.
    env = {e["name"] for e in spec["containers"][0]["env"]}
    assert "AZURE_CLIENT_SECRET" in env
    hooked = helm.template([FULL], {"backfill.hook": "true"})
    job = one(hooked, "Job", "r1-secstream-backfill")
    assert job["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation"
    with pytest.raises(HelmError, match="not one of destinations"):
        helm.template([FULL], {"backfill.destination": "nowhere"})


def test_pdbs_metrics_and_network_policy(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered[FULL.name]
    deployments = {d["metadata"]["name"] for d in by_kind(docs, "Deployment")}
    assert {p["metadata"]["name"] for p in by_kind(docs, "PodDisruptionBudget")} == deployments
    assert one(docs, "ServiceMonitor", "r1-secstream")["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert one(docs, "Service", "r1-secstream-metrics")["spec"]["ports"][0]["port"] == 9464
    policy = one(docs, "NetworkPolicy", "r1-secstream")
    assert {} not in policy["spec"]["egress"], "egress is restricted in the full example"
    ports = [p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]]
    assert 53 in ports and 9093 in ports and 443 in ports


def test_clear_errors_for_missing_values(helm: Helm) -> None:
    with pytest.raises(HelmError, match=r"kafka\.bootstrapServers is required"):
        helm.template(None)
    with pytest.raises(HelmError, match="needs at least one entry in destinations"):
        helm.template(None, {"kafka.bootstrapServers": "k:9092"})
    with pytest.raises(HelmError, match=r"Event Hubs needs kafka\.securityProtocol SASL_SSL"):
        helm.template([MINIMAL], {"kafka.bootstrapServers": "ns.servicebus.windows.net:9093"})
    with pytest.raises(HelmError, match="passwordSecret"):
        helm.template([MINIMAL], {"kafka.securityProtocol": "SASL_SSL", "kafka.sasl.mechanism": "PLAIN"})


def test_notes_render(helm: Helm) -> None:
    if helm.run("version", "--template", "{{.Version}}").startswith("v3."):
        pytest.skip("Helm 3's install --dry-run needs a cluster; NOTES.txt is checked with the pinned Helm 4")
    out = helm.run("install", "r1", str(CHART), "-f", str(FULL), "--dry-run=client", "--namespace", "secstream")
    assert "secstream.raw: 24 partitions -> stream workers" in out
    assert "https://collector.example.com" in out
