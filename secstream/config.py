"""One typed settings model for every stage.

Sources, highest precedence first: CLI flags (passed in as overrides), ``SECSTREAM_*`` environment
variables (nested with ``__``, e.g. ``SECSTREAM_KAFKA__BOOTSTRAP_SERVERS``), the YAML file, defaults.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

CONFIG_ENV = "SECSTREAM_CONFIG"
EVENT_SETS = ("All", "Common", "Minimal", "None")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: Path | None = None
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None
    ssl_key_password: SecretStr | None = None
    client_id: str = "secstream"
    # Anything librdkafka accepts, for settings this model does not name (e.g. "socket.keepalive.enable").
    extra: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256",
                                                                                 "SCRAM-SHA-512", None):
            if self.sasl_mechanism is None:
                raise ValueError("security_protocol SASL_* needs kafka.sasl_mechanism")
            if not self.sasl_username or self.sasl_password is None:
                raise ValueError("SASL PLAIN/SCRAM needs kafka.sasl_username and kafka.sasl_password")
        return self


class TopicSettings(_Section):
    raw: str = "secstream.raw"
    normalized: str = "secstream.normalized"
    dead_letter: str = "secstream.deadletter"
    delivery_log: str = "secstream.delivery-log"
    raw_partitions: int = Field(6, ge=1, le=10_000)
    normalized_partitions: int = Field(6, ge=1, le=10_000)
    dead_letter_partitions: int = Field(1, ge=1, le=10_000)
    delivery_log_partitions: int = Field(1, ge=1, le=10_000)
    replication_factor: int = Field(1, ge=1, le=10)
    # Kafka message timestamps are send times, so time retention measures time in the buffer.
    retention_ms: int = Field(7 * 24 * 3600 * 1000, ge=-1)


class RuleSettings(_Section):
    """One machine group: which computers, and which events of theirs to collect."""

    name: str
    computers: list[str] = Field(default_factory=lambda: ["*"], description="glob patterns on Computer")
    event_set: Literal["All", "Common", "Minimal", "None"] | None = None
    xpath: list[str] = Field(
        default_factory=list, description="AMA-style queries, e.g. Security!*[System[(EventID=4624)]]"
    )

    @model_validator(mode="after")
    def _set_or_xpath(self) -> RuleSettings:
        if self.event_set is None and not self.xpath:
            raise ValueError(f"rule {self.name!r} needs event_set or xpath")
        return self


class CredentialSettings(_Section):
    mode: Literal["default", "client_secret", "certificate", "workload_identity", "managed_identity", "emulator"] = (
        "default"
    )
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    certificate_path: Path | None = None
    # The emulator's bearer token (`secstream workspace token`).
    token: SecretStr | None = None

    @model_validator(mode="after")
    def _mode_needs(self) -> CredentialSettings:
        needs = {
            "client_secret": ("tenant_id", "client_id", "client_secret"),
            "certificate": ("tenant_id", "client_id", "certificate_path"),
            "emulator": ("token",),
        }.get(self.mode, ())
        missing = [n for n in needs if getattr(self, n) in (None, "")]
        if missing:
            raise ValueError(f"credential mode {self.mode!r} needs {', '.join(missing)}")
        return self


class DestinationSettings(_Section):
    """A workspace reached through one DCR, or several DCRs (shards) for more than one DCR's ceiling."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$")
    endpoint: str = Field(description="DCE or DCR logs-ingestion endpoint, https://...")
    dcr_immutable_ids: list[str] = Field(min_length=1)
    stream_name: str = "Custom-SecurityEvent"
    credential: CredentialSettings = Field(default_factory=CredentialSettings)
    # CA bundle for TLS to the endpoint (the emulator's self-signed CA); None = system trust store.
    ca_bundle: Path | None = None

    @field_validator("dcr_immutable_ids")
    @classmethod
    def _immutable_id_shape(cls, ids: list[str]) -> list[str]:
        for dcr in ids:
            if not re.fullmatch(r"dcr-[0-9a-f]{32}", dcr):
                raise ValueError(f"{dcr!r} is not a DCR immutable id (dcr- followed by 32 lowercase hex digits)")
        return ids

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")


class BrokerSettings(_Section):
    """The embedded single-node broker for laptops, demos and tests."""

    host: str = "127.0.0.1"
    port: int = Field(19092, ge=1, le=65535)
    data_dir: Path = Path(".state/broker")


class WorkspaceEmulatorSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(18443, ge=1, le=65535)
    state_dir: Path = Path(".state/workspace")


class TelemetrySettings(_Section):
    exporter: Literal["none", "console", "otlp-grpc", "otlp-http", "prometheus"] = "none"
    otlp_endpoint: str | None = None
    prometheus_port: int = Field(9464, ge=1, le=65535)
    health_port: int = Field(0, ge=0, le=65535, description="0 = no health server")
    # 0.0.0.0 so Kubernetes probes and Prometheus can reach a pod; use 127.0.0.1 on a shared host.
    prometheus_host: str = "0.0.0.0"
    health_host: str = "0.0.0.0"
    export_interval_seconds: float = Field(15.0, gt=0, description="push interval of console/OTLP metrics")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SECSTREAM_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    rules: list[RuleSettings] = Field(default_factory=lambda: [RuleSettings(name="default", event_set="Common")])
    destinations: list[DestinationSettings] = Field(default_factory=list)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    workspace: WorkspaceEmulatorSettings = Field(default_factory=WorkspaceEmulatorSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init = CLI overrides; the YAML file comes in through _yaml_layer, below the environment.
        return init_settings, env_settings, _YamlLayer(settings_cls)

    @field_validator("rules")
    @classmethod
    def _unique_rule_names(cls, rules: list[RuleSettings]) -> list[RuleSettings]:
        names = [r.name for r in rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(dupes)}")
        return rules


class _YamlLayer(InitSettingsSource):
    """The YAML file named by SECSTREAM_CONFIG (set from ``--config``), lowest precedence above defaults."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls, init_kwargs=_read_yaml(os.environ.get(CONFIG_ENV)))


class ConfigError(Exception):
    """A configuration problem, worded for the operator. Never contains secret values."""


def _read_yaml(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path}: not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping")
    return data


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``--set kafka.bootstrap_servers=host:9092`` pairs into a nested dict (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected key.path=value")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {pair!r}: {part} is already a value")
        node[leaf] = yaml.safe_load(raw) if raw else ""
    return out


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming the field. Input values are left out: they may be secrets."""
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "settings"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(config_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Load and validate; raises ConfigError with an operator-facing message."""
    previous = os.environ.get(CONFIG_ENV)
    if config_path is not None:
        os.environ[CONFIG_ENV] = str(config_path)
    try:
        return Settings(**(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    finally:
        if config_path is not None:
            if previous is None:
                os.environ.pop(CONFIG_ENV, None)
            else:
                os.environ[CONFIG_ENV] = previous
