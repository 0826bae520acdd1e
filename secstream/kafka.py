"""Kafka client settings, built once from the typed settings for every client kind we use.

librdkafka (confluent-kafka) gets a property dict; Faust/aiokafka gets its own credentials object. Both come from
the same ``KafkaSettings`` so TLS + SASL (Strimzi, Confluent, Event Hubs' Kafka endpoint) works the same everywhere.
"""

from __future__ import annotations

import ssl
from typing import Any

from secstream.config import KafkaSettings

# Producer defaults for every stage: no loss, no reordering within a partition, no duplicates from retries.
SAFE_PRODUCER = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "batch.size": 1_000_000,
    "compression.type": "lz4",
}


def client_config(kafka: KafkaSettings) -> dict[str, Any]:
    """librdkafka properties common to producers, consumers and admin clients."""
    conf: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "security.protocol": kafka.security_protocol,
        "client.id": kafka.client_id,
    }
    if kafka.security_protocol.startswith("SASL"):
        conf["sasl.mechanism"] = kafka.sasl_mechanism
        if kafka.sasl_username is not None:
            conf["sasl.username"] = kafka.sasl_username
        if kafka.sasl_password is not None:
            conf["sasl.password"] = kafka.sasl_password.get_secret_value()
    if kafka.security_protocol.endswith("SSL"):
        if kafka.ssl_ca_location:
            conf["ssl.ca.location"] = str(kafka.ssl_ca_location)
        if kafka.ssl_certificate_location:
            conf["ssl.certificate.location"] = str(kafka.ssl_certificate_location)
        if kafka.ssl_key_location:
            conf["ssl.key.location"] = str(kafka.ssl_key_location)
        if kafka.ssl_key_password is not None:
            conf["ssl.key.password"] = kafka.ssl_key_password.get_secret_value()
    conf.update(kafka.extra)
    return conf


def producer_config(kafka: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    return {**client_config(kafka), **SAFE_PRODUCER, **overrides}


def consumer_config(kafka: KafkaSettings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """Offsets are stored and committed by the stage itself, after its work is durable."""
    return {
        **client_config(kafka),
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        **overrides,
    }


def redacted(conf: dict[str, Any]) -> dict[str, Any]:
    """A copy safe to log: every secret-bearing property masked."""
    return {k: ("***" if any(s in k for s in ("password", "secret", "jaas")) else v) for k, v in conf.items()}


def faust_broker_options(kafka: KafkaSettings) -> dict[str, Any]:
    """``broker`` and ``broker_credentials`` for a faust.App, from the same settings."""
    import faust  # faust is heavy: import only where a Faust app is built

    servers = ";".join(f"kafka://{s.strip()}" for s in kafka.bootstrap_servers.split(","))
    context: ssl.SSLContext | None = None
    if kafka.security_protocol.endswith("SSL"):
        context = ssl.create_default_context(cafile=str(kafka.ssl_ca_location) if kafka.ssl_ca_location else None)
        if kafka.ssl_certificate_location:
            context.load_cert_chain(
                str(kafka.ssl_certificate_location),
                str(kafka.ssl_key_location) if kafka.ssl_key_location else None,
                kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password else None,
            )
    credentials: Any = None
    if kafka.security_protocol.startswith("SASL"):
        password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else ""
        mechanism = kafka.sasl_mechanism or "PLAIN"
        if mechanism == "OAUTHBEARER":
            raise ValueError("SASL mechanism OAUTHBEARER is not supported by the Faust stage")
        credentials = faust.SASLCredentials(
            username=kafka.sasl_username, password=password, ssl_context=context, mechanism=mechanism
        )
    elif context is not None:
        credentials = faust.SSLCredentials(context)
    return {"broker": servers, "broker_credentials": credentials}
