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
# Kafka batch compression of every stage's output (librdkafka and aiokafka names).
Compression = Literal["zstd", "lz4", "gzip", "snappy", "none"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _read_secret_files(data: Any, pairs: dict[str, str]) -> Any:
    """Fill secret fields from files (Kubernetes mounts Secrets as files), e.g. ``client_secret_file``.

    A value given directly wins over its file. Only the path appears in errors, never the content.
    """
    if not isinstance(data, dict):
        return data
    for field_name, file_field in pairs.items():
        path = data.get(file_field)
        if path and data.get(field_name) in (None, ""):
            try:
                data[field_name] = Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"{file_field} {path}: cannot be read ({exc.strerror})") from None
    return data


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None
    ssl_ca_location: Path | None = None
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None
    ssl_key_password: SecretStr | None = None
    client_id: str = "secstream"
    # Anything librdkafka accepts, for settings this model does not name (e.g. "socket.keepalive.enable").
    extra: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        return _read_secret_files(data, {"sasl_password": "sasl_password_file"})

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
    # Per-Computer delivery summaries written by the sinks, read by `secstream status` (compacted).
    status: str = "secstream.status"
    status_partitions: int = Field(1, ge=1, le=10_000)
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
    client_secret_file: Path | None = None
    certificate_path: Path | None = None
    # The emulator's bearer token (`secstream workspace token`).
    token: SecretStr | None = None
    token_file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        return _read_secret_files(data, {"client_secret": "client_secret_file", "token": "token_file"})

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
    # How requests are spread over several DCRs: in turn, or by Computer (a host's rows always use one DCR).
    sharding: Literal["round_robin", "computer"] = "round_robin"

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


class SinkSettings(_Section):
    """Tuning of `secstream sink`, the same for every destination (each runs in its own consumer group)."""

    group_prefix: str = "secstream-sink-"
    max_in_flight: int = Field(4, ge=1, le=64, description="concurrent upload requests per destination and worker")
    max_request_bytes: int = Field(1_048_576, ge=1024, le=1_048_576, description="per request, gzip and raw JSON")
    max_field_bytes: int = Field(65_536, ge=256, le=65_536, description="longer values are truncated")
    gzip_level: int = Field(1, ge=1, le=9)
    checkpoint_seconds: float = Field(1.0, gt=0, description="sync commit interval; longest wait of a partial request")
    # After each accepted request the rows done of partly delivered messages go into the commit metadata, so a
    # restarted sink resends only the requests that were in flight; at most this often (0 = after every request).
    progress_commit_interval_ms: int = Field(100, ge=0, le=60_000, description="row-progress commit rate limit")
    # Off: only whole messages count (for a broker that drops commit metadata, the rows are then simply resent).
    row_progress: bool = Field(True, description="record delivered rows of partly delivered messages")
    poll_batch: int = Field(500, ge=1, le=100_000, description="Kafka messages per poll")
    request_timeout_seconds: float = Field(60.0, gt=0)
    retry_backoff_seconds: float = Field(0.5, gt=0, description="first retry delay for 5xx and connection errors")
    retry_backoff_max_seconds: float = Field(60.0, gt=0)
    # A sink stuck in retries does not poll Kafka; the group keeps it as a member this long.
    max_poll_interval_ms: int = Field(900_000, ge=10_000)
    # Static group membership (e.g. the StatefulSet pod name): a restarted sink takes its partitions back at
    # once instead of waiting for its old session to expire. Unique per running sink.
    group_instance_id: str | None = None
    # A normalized message whose raw position is not above the highest already read from that raw partition is the
    # stream stage writing its output again after a crash: skipped. The mark counts for this long (Kafka message
    # time); it must cover the stream's commit interval plus its restart time. 0 turns the skip off.
    reemission_window_seconds: float = Field(
        600.0, ge=0, description="skip stream re-emissions within this much message time of the original")


class ReplaySettings(_Section):
    """`secstream replay`: re-read a bounded range of raw or normalized offsets (backfill)."""

    group_prefix: str = Field("secstream-replay-", description="a replay commits its progress only to <prefix><name>")
    overlap_slack_seconds: float = Field(
        3600.0, ge=0, description="raw replay: normalized messages this much before/after the window are checked "
                                  "for rows the destination already holds")
    stall_timeout_seconds: float = Field(60.0, gt=0, description="give up when a range yields nothing this long")


class StreamSettings(_Section):
    """`secstream stream`: the Faust worker that filters, deduplicates and normalises raw event batches."""

    app_id: str = Field("secstream-stream", pattern=r"^[A-Za-z0-9._-]{1,200}$",
                        description="Faust app id: consumer group, changelog topic and transactional id prefix")
    flavour: Literal["ama", "mma"] = Field("ama", description="agent flavour of the rows (mma: legacy Level values)")
    dedup_window_seconds: float = Field(24 * 3600, gt=0, description="duplicates are caught within this event time")
    store: str = Field("memory://", pattern=r"^(memory|rocksdb)://",
                       description="dedup table store: memory:// (rebuilt from the changelog) or rocksdb://")
    data_dir: Path = Field(Path(".state/stream"), description="Faust data dir (RocksDB files, when used)")
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    uvloop: bool = Field(True, description="run the worker on uvloop when installed")
    commit_interval_seconds: float = Field(2.8, gt=0)
    producer_max_batch_bytes: int = Field(1_048_576, ge=16_384)
    producer_linger_ms: float = Field(5.0, ge=0)
    producer_compression: Compression = Field(
        "zstd", description="output compression; aiokafka's lz4 is level 9 (8x slower than zstd level 3, 3x larger)")
    producer_build_thread: bool = Field(
        True, description="build and compress output batches in a thread of their own, beside the worker's event loop")
    session_timeout_seconds: float = Field(10.0, gt=0)
    rebalance_timeout_seconds: float = Field(
        60.0, gt=0, description="how long a rebalance waits for members; a killed worker holds it up this long")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="worker log level; info also keeps Faust's spinner (and its debug records) off")
    broker_wait_seconds: float = Field(
        600.0, ge=0, description="at start, wait this long for Kafka to become reachable before giving up")
    # At most Faust's fetch_max_wait_ms (1500): Kafka holds an empty fetch that long, so against Kafka the wait
    # never adds anything.
    empty_fetch_wait_ms: float = Field(
        100.0, ge=0, le=1500, description="after a fetch that brought no records and came back sooner than this, "
        "wait out the rest before fetching again (a broker that answers empty fetches at once, like the embedded "
        "one, would otherwise keep the consumer busy); 0 = off")


class ProducerSettings(_Section):
    """`secstream produce`: the host producer (files, folders, live event log) and its agent mode."""

    agent_id: str = Field("", description="names this producer in RawEventBatch.agent_id; empty = the host name")
    state_file: Path = Field(Path(".state/producer/checkpoints.json"),
                             description="delivered positions per source, written atomically after delivery")
    batch_max_events: int = Field(1000, ge=1, le=100_000)
    batch_max_bytes: int = Field(900_000, ge=1024, le=16_777_216, description="estimated raw size per batch")
    batch_max_age_seconds: float = Field(1.0, gt=0, description="a partial batch waits at most this long")
    max_in_flight_bytes: int = Field(64 * 1024 * 1024, ge=1_048_576,
                                     description="encoded bytes sent but not yet acknowledged; reading pauses above")
    compression: Compression = "zstd"
    source_filter: bool = Field(False, description="drop events no rule keeps before sending (saves bandwidth)")
    follow_interval_seconds: float = Field(1.0, gt=0, description="--follow: how often files are checked for more")
    checkpoint_interval_seconds: float = Field(
        0.25, ge=0, description="state-file writes at most this often (each costs an fsync); 0 = after every "
        "acknowledged batch. A crash resends what was unacknowledged plus what was acknowledged since the last write")
    # Agent mode: send to collectors over HTTPS instead of Kafka.
    collector_urls: list[str] = Field(default_factory=list)
    collector_token: SecretStr | None = None
    collector_ca_bundle: Path | None = Field(None, description="CA for the collectors' TLS; None = system trust")
    collector_timeout_seconds: float = Field(30.0, gt=0)
    collector_retry_max_seconds: float = Field(30.0, gt=0, description="longest backoff between rounds of retries")


class CollectorSettings(_Section):
    """`secstream collect`: the HTTPS gateway that takes batches from remote agents and writes them to Kafka."""

    host: str = "127.0.0.1"
    port: int = Field(8443, ge=0, le=65535)
    collector_id: str = Field("", description="stamped into provenance.collector_id; empty = the host name")
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tokens_file: Path | None = Field(None, description="lines 'agent_id token' (or 'agent_id:token')")
    tokens_dir: Path | None = Field(None, description="a mounted Kubernetes secret: file name = agent id, "
                                    "content = token")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="compressed request body; larger -> 413")
    max_decompressed_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="after gunzip; larger -> 413")
    max_in_flight_bytes: int = Field(128 * 1024 * 1024, ge=1_048_576,
                                     description="bytes waiting for Kafka acknowledgement; beyond -> 429")
    ack_timeout_seconds: float = Field(30.0, gt=0, description="no Kafka acknowledgement by then -> 503")
    compression: Compression = "zstd"


class BrokerSettings(_Section):
    """The embedded single-node broker for laptops, demos and tests."""

    host: str = "127.0.0.1"
    port: int = Field(19092, ge=1, le=65535)
    data_dir: Path = Path(".state/broker")


class WorkspaceFaultSettings(_Section):
    """Injected failures for tests and chaos runs: rates per request, or a schedule for the next requests."""

    rate_429: float = Field(0.0, ge=0, le=1)
    rate_500: float = Field(0.0, ge=0, le=1)
    rate_503: float = Field(0.0, ge=0, le=1)
    rate_drop: float = Field(0.0, ge=0, le=1, description="close the connection without a response")
    rate_slow: float = Field(0.0, ge=0, le=1, description="delay the response by slow_seconds")
    slow_seconds: float = Field(2.0, ge=0, le=600)
    retry_after: int = Field(1, ge=0, le=3600, description="Retry-After of injected 429s")
    schedule: list[Literal["ok", "429", "500", "503", "drop", "slow"]] = Field(
        default_factory=list, description="outcomes of the next requests, in order, before the rates apply")
    seed: int | None = None


class WorkspaceEmulatorSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(18443, ge=0, le=65535, description="0 = any free port (written to server.json)")
    state_dir: Path = Path(".state/workspace")
    dcr_dir: Path | None = Field(None, description="ARM DCR JSON files; None = the bundled SecurityEvent DCR")
    tls: bool = Field(True, description="HTTPS with a self-signed CA made under state_dir")
    accept_any_token: bool = Field(False, description="any bearer token passes (local use only)")
    token_ttl_seconds: int = Field(24 * 3600, ge=60)
    requests_per_minute: float = Field(12_000, gt=0, description="per DCR, then 429 + Retry-After")
    bytes_per_minute: float = Field(2 * 1024**3, gt=0, description="per DCR, then 429 + Retry-After")
    burst_seconds: float = Field(60.0, gt=0, description="bucket size in seconds of allowance")
    max_body_bytes: int = Field(1_048_576, ge=1, description="on the wire; larger is 413")
    max_uncompressed_bytes: int = Field(0, ge=0, description="0 = no limit on the decompressed body")
    max_field_bytes: int = Field(65_536, ge=1, description="longer values are truncated")
    resource_id: str = Field("", description="_ResourceId stamped on every row")
    faults: WorkspaceFaultSettings = Field(default_factory=WorkspaceFaultSettings)


class TelemetrySettings(_Section):
    exporter: Literal["none", "console", "otlp-grpc", "otlp-http", "prometheus"] = "none"
    otlp_endpoint: str | None = None
    prometheus_port: int = Field(9464, ge=1, le=65535)
    health_port: int = Field(0, ge=0, le=65535, description="0 = no health server")
    # 0.0.0.0 so Kubernetes probes and Prometheus can reach a pod; use 127.0.0.1 on a shared host.
    prometheus_host: str = "0.0.0.0"
    health_host: str = "0.0.0.0"
    export_interval_seconds: float = Field(15.0, gt=0, description="push interval of console/OTLP metrics")


class StatusSettings(_Section):
    """Connector health: what the sinks record per Computer and how `secstream status` judges it."""

    enabled: bool = Field(True, description="sinks write per-Computer summaries to topics.status")
    interval_seconds: float = Field(30.0, gt=0, description="a sink writes a Computer's summary at most this often")
    silent_after_seconds: float = Field(900.0, gt=0, description="a Computer with no rows received for this long "
                                                                  "is flagged silent")
    lookback_seconds: float = Field(7 * 24 * 3600.0, gt=0, description="how far back `status` reads summaries")
    rate_window_seconds: float = Field(300.0, gt=0, description="events per minute are averaged over this window")
    heartbeat_stream: str | None = Field(None, pattern=r"^Custom-[A-Za-z0-9_]{1,100}$",
                                         description="e.g. Custom-SecstreamHeartbeat: sinks also upload Heartbeat-"
                                                     "style rows per Computer to this DCR stream; unset = off")
    heartbeat_dcr: str | None = Field(None, pattern=r"^dcr-[0-9a-f]{32}$",
                                      description="DCR of heartbeat_stream; unset = the destination's first DCR")


class SchemaRegistrySettings(_Section):
    """Optional Confluent Schema Registry; without a url, schema ids come from the versioned .avsc files."""

    url: str | None = Field(None, description="e.g. https://registry:8081; None = local schema ids")
    basic_auth_user_info: SecretStr | None = Field(None, description="user:password")
    ssl_ca_location: Path | None = None
    subject_prefix: str = ""
    auto_register: bool = Field(True, description="register missing schemas; False = look up only")


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
    sink: SinkSettings = Field(default_factory=SinkSettings)
    replay: ReplaySettings = Field(default_factory=ReplaySettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    workspace: WorkspaceEmulatorSettings = Field(default_factory=WorkspaceEmulatorSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    schema_registry: SchemaRegistrySettings = Field(default_factory=SchemaRegistrySettings)
    producer: ProducerSettings = Field(default_factory=ProducerSettings)
    collector: CollectorSettings = Field(default_factory=CollectorSettings)
    status: StatusSettings = Field(default_factory=StatusSettings)

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
