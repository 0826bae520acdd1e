"""Credentials for every mode, built with the real azure-identity classes (no network is touched)."""

from __future__ import annotations

import pytest
from azure.identity import (
    ClientSecretCredential,
    DefaultAzureCredential,
    ManagedIdentityCredential,
    WorkloadIdentityCredential,
)
from pydantic import ValidationError

from secstream.config import CredentialSettings, DestinationSettings, SinkSettings
from sinks.service import IngestionService, StaticTokenCredential, build_credential

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "00000000-0000-0000-0000-00000000c11e"


@pytest.mark.parametrize("settings, kind", [
    ({"mode": "default"}, DefaultAzureCredential),
    ({"mode": "default", "client_id": CLIENT}, DefaultAzureCredential),
    ({"mode": "managed_identity", "client_id": CLIENT}, ManagedIdentityCredential),
    ({"mode": "client_secret", "tenant_id": TENANT, "client_id": CLIENT, "client_secret": "s3cr3t-value"},
     ClientSecretCredential),
    ({"mode": "emulator", "token": "t0ken-value"}, StaticTokenCredential),
])
def test_each_mode_builds_its_azure_identity_credential(settings: dict, kind: type) -> None:
    credential = build_credential(CredentialSettings(**settings))
    assert isinstance(credential, kind)
    assert "s3cr3t-value" not in repr(credential) and "t0ken-value" not in repr(credential)


def test_workload_identity_reads_what_the_webhook_injects(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("federated-token")
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
    monkeypatch.setenv("AZURE_CLIENT_ID", CLIENT)
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    assert isinstance(build_credential(CredentialSettings(mode="workload_identity")), WorkloadIdentityCredential)


def test_modes_missing_their_secrets_are_configuration_errors() -> None:
    with pytest.raises(ValidationError, match="client_secret"):
        CredentialSettings(mode="client_secret", tenant_id=TENANT, client_id=CLIENT)
    with pytest.raises(ValidationError, match="certificate_path"):
        CredentialSettings(mode="certificate", tenant_id=TENANT, client_id=CLIENT)


def test_the_emulator_token_is_handed_to_the_sdk_and_dcrs_rotate() -> None:
    destination = DestinationSettings(name="ws", endpoint="http://127.0.0.1:9", stream_name="Custom-SecurityEvent",
                                      dcr_immutable_ids=["dcr-" + "1" * 32, "dcr-" + "2" * 32],
                                      credential={"mode": "emulator", "token": "abc"})
    service = IngestionService(destination, SinkSettings())
    try:
        assert service.credential.get_token("https://monitor.azure.com/.default").token == "abc"
        assert [service.choose_dcr(None) for _ in range(4)] == ["dcr-" + "1" * 32, "dcr-" + "2" * 32] * 2
        assert service.choose_dcr(3) == "dcr-" + "2" * 32
    finally:
        service.close()
