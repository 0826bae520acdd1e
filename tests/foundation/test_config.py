"""Settings: precedence (CLI > env > YAML > defaults), validation messages, secrets kept out of output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from secstream.config import ConfigError, load_settings, parse_overrides
from secstream.kafka import client_config, redacted

SECRET = "s3cr3t-Endpoint=sb://x;SharedAccessKey=abc"


def _yaml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "secstream.yaml"
    p.write_text(text)
    return p


def test_precedence_cli_over_env_over_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _yaml(tmp_path, "kafka:\n  bootstrap_servers: yaml:9092\n  client_id: from-yaml\n"
                          "topics:\n  raw: raw-yaml\n  raw_partitions: 12\n")
    assert load_settings(cfg).kafka.bootstrap_servers == "yaml:9092"

    monkeypatch.setenv("SECSTREAM_KAFKA__BOOTSTRAP_SERVERS", "env:9092")
    monkeypatch.setenv("SECSTREAM_TOPICS__RAW", "raw-env")
    s = load_settings(cfg)
    assert s.kafka.bootstrap_servers == "env:9092"
    assert s.kafka.client_id == "from-yaml", "sections merge: env overrides one key, YAML keeps the rest"
    assert s.topics.raw == "raw-env" and s.topics.raw_partitions == 12

    s = load_settings(cfg, parse_overrides(["kafka.bootstrap_servers=cli:9092", "topics.raw_partitions=3"]))
    assert s.kafka.bootstrap_servers == "cli:9092"
    assert s.topics.raw_partitions == 3 and s.topics.raw == "raw-env"


def test_defaults_without_any_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SECSTREAM_CONFIG", raising=False)
    s = load_settings()
    assert s.kafka.security_protocol == "PLAINTEXT"
    assert [r.event_set for r in s.rules] == ["Common"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["kafka.security_protocol=TLS"], "kafka.security_protocol"),
        (["topics.raw_partitions=0"], "topics.raw_partitions"),
        (["topics.retention_ms=-5"], "topics.retention_ms"),
        (["broker.port=70000"], "broker.port"),
        (["kafka.bootstrap_server=x:1"], "kafka.bootstrap_server"),
        (["telemetry.exporter=jaeger"], "telemetry.exporter"),
    ],
)
def test_each_wrong_field_is_named(overrides: list[str], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, parse_overrides(overrides))
    assert f"\n  {field}:" in str(err.value)


def test_yaml_lists_and_models_validated(tmp_path: Path) -> None:
    cfg = _yaml(tmp_path, """
rules:
  - name: dcs
    computers: ["DC*"]
    event_set: Everything
  - name: dcs
    xpath: []
destinations:
  - name: prod
    endpoint: not-a-url
    dcr_immutable_ids: [dcr-123]
""")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    msg = str(err.value)
    assert "rules.0.event_set:" in msg
    assert "rules.1:" in msg and "needs event_set or xpath" in msg
    assert "destinations.0.endpoint: must be an http(s) URL" in msg
    assert "destinations.0.dcr_immutable_ids:" in msg and "not a DCR immutable id" in msg


def test_bad_yaml_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(_yaml(tmp_path, "kafka: [unclosed\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.yaml")


def test_secrets_never_in_errors_or_dumps(tmp_path: Path) -> None:
    cfg = _yaml(tmp_path, f"""
kafka:
  bootstrap_servers: ns.servicebus.windows.net:9093
  security_protocol: SASL_SSL
  sasl_mechanism: PLAIN
  sasl_username: $ConnectionString
  sasl_password: "{SECRET}"
  client_id: 42x
topics:
  raw_partitions: -1
""")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert SECRET not in str(err.value)

    fixed = cfg.read_text().replace("raw_partitions: -1", "raw_partitions: 4")
    cfg.write_text(fixed)
    s = load_settings(cfg)
    assert SECRET not in repr(s) and SECRET not in str(s.model_dump(mode="json"))
    conf = client_config(s.kafka)
    assert conf["sasl.password"] == SECRET, "the client itself gets the real secret"
    assert conf["sasl.username"] == "$ConnectionString"
    assert SECRET not in str(redacted(conf))


def test_sasl_without_credentials_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"sasl_username and kafka\.sasl_password"):
        load_settings(None, parse_overrides(["kafka.security_protocol=SASL_SSL", "kafka.sasl_mechanism=PLAIN"]))


def test_cli_invalid_config_exits_2_without_traceback(tmp_path: Path) -> None:
    cfg = _yaml(tmp_path, f"kafka:\n  sasl_password: '{SECRET}'\n  security_protocol: NOPE\n")
    proc = subprocess.run([sys.executable, "-m", "secstream.cli", "--config", str(cfg), "config"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "kafka.security_protocol" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert SECRET not in proc.stderr + proc.stdout


def test_cli_config_masks_secrets(tmp_path: Path) -> None:
    cfg = _yaml(tmp_path, f"kafka:\n  security_protocol: SASL_SSL\n  sasl_mechanism: PLAIN\n"
                          f"  sasl_username: u\n  sasl_password: '{SECRET}'\n")
    proc = subprocess.run([sys.executable, "-m", "secstream.cli", "--config", str(cfg), "config"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "SASL_SSL" in proc.stdout and SECRET not in proc.stdout


def test_bad_set_syntax() -> None:
    with pytest.raises(ConfigError, match=r"expected key\.path=value"):
        parse_overrides(["kafka.bootstrap_servers"])


def test_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "kafka-password").write_text(SECRET + "\n")
    (tmp_path / "client-secret").write_text("azure-secret\n")
    cfg = _yaml(tmp_path, f"""
kafka:
  security_protocol: SASL_SSL
  sasl_mechanism: PLAIN
  sasl_username: $ConnectionString
  sasl_password_file: {tmp_path / "kafka-password"}
destinations:
  - name: prod
    endpoint: https://dce.example.ingest.monitor.azure.com
    dcr_immutable_ids: [dcr-00000000000000000000000000000001]
    credential:
      mode: client_secret
      tenant_id: t
      client_id: c
      client_secret_file: {tmp_path / "client-secret"}
""")
    s = load_settings(cfg)
    assert s.kafka.sasl_password is not None and s.kafka.sasl_password.get_secret_value() == SECRET
    secret = s.destinations[0].credential.client_secret
    assert secret is not None and secret.get_secret_value() == "azure-secret"

    (tmp_path / "kafka-password").unlink()
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert "sasl_password_file" in str(err.value) and "cannot be read" in str(err.value)
