"""The upload itself: ``azure.monitor.ingestion.LogsIngestionClient`` with an azure-identity credential.

Proxy and CA-bundle settings come from the environment as requests reads them (``HTTPS_PROXY``, ``NO_PROXY``,
``REQUESTS_CA_BUNDLE``, ...), read once when the service is built rather than on every call.
Bodies are passed as an already-gzipped seekable IO, which the SDK sends as-is in one POST (it sets
``Content-Encoding: gzip`` from the magic bytes and never re-chunks), so one call = one request = known offsets.
The SDK's retries are off (``retry_total=0``); ``sinks.retry`` decides every retry. Calls run in a bounded thread
pool (``sink.max_in_flight``); the client and its connection pool are shared by those threads.
"""

from __future__ import annotations

import io
import os
import time
from itertools import count
from typing import Any

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenCredential
from azure.core.pipeline.transport import RequestsTransport
from azure.monitor.ingestion import LogsIngestionClient
from requests.utils import get_environ_proxies

from secstream.config import CredentialSettings, DestinationSettings, SinkSettings


class StaticTokenCredential:
    """The local workspace's bearer token (``secstream workspace token``) as an azure-core credential."""

    def __init__(self, token: str, lifetime_seconds: int = 3600) -> None:
        self._token = token
        self._lifetime = lifetime_seconds

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, int(time.time()) + self._lifetime)

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        return AccessTokenInfo(self._token, int(time.time()) + self._lifetime)

    def __repr__(self) -> str:  # never show the token
        return "StaticTokenCredential(token=***)"


def build_credential(cred: CredentialSettings) -> TokenCredential:
    """The azure-identity credential for ``cred.mode`` (secrets read here, never logged)."""
    from azure.identity import (
        CertificateCredential,
        ClientSecretCredential,
        DefaultAzureCredential,
        ManagedIdentityCredential,
        WorkloadIdentityCredential,
    )

    if cred.mode == "emulator":
        assert cred.token is not None  # validated by CredentialSettings
        return StaticTokenCredential(cred.token.get_secret_value())
    if cred.mode == "client_secret":
        assert cred.tenant_id and cred.client_id and cred.client_secret is not None
        return ClientSecretCredential(cred.tenant_id, cred.client_id, cred.client_secret.get_secret_value())
    if cred.mode == "certificate":
        assert cred.tenant_id and cred.client_id and cred.certificate_path is not None
        return CertificateCredential(cred.tenant_id, cred.client_id, certificate_path=str(cred.certificate_path))
    if cred.mode == "managed_identity":
        return ManagedIdentityCredential(client_id=cred.client_id)
    if cred.mode == "workload_identity":
        # tenant, client id and token file default to the AZURE_* variables the workload identity webhook sets
        return WorkloadIdentityCredential(tenant_id=cred.tenant_id, client_id=cred.client_id)
    # default: environment service principal, then workload identity, then managed identity (then developer logins)
    kwargs: dict[str, Any] = {}
    if cred.client_id:
        kwargs["managed_identity_client_id"] = cred.client_id
        kwargs["workload_identity_client_id"] = cred.client_id
    if cred.tenant_id:
        kwargs["workload_identity_tenant_id"] = cred.tenant_id
    return DefaultAzureCredential(**kwargs)


def environment_settings(endpoint: str) -> tuple[dict[str, str], str | None]:
    """What requests reads from the environment on every call when it trusts it, read once for ``endpoint``: the
    proxies to use (``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``, none when ``NO_PROXY`` covers the host) and a CA
    bundle (``REQUESTS_CA_BUNDLE``, else ``CURL_CA_BUNDLE``)."""
    proxies = {scheme: url for scheme, url in get_environ_proxies(endpoint).items() if scheme != "no"}
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None
    return proxies, bundle


class IngestionService:
    """One destination's client: ``send`` makes exactly one POST of a gzipped body to one DCR."""

    def __init__(self, destination: DestinationSettings, sink: SinkSettings,
                 credential: TokenCredential | None = None) -> None:
        self.destination = destination
        self.credential = credential if credential is not None else build_credential(destination.credential)
        proxies, env_bundle = environment_settings(destination.endpoint)
        connection: dict[str, Any] = {
            "connection_timeout": min(30.0, sink.request_timeout_seconds),
            "read_timeout": sink.request_timeout_seconds,
        }
        bundle = str(destination.ca_bundle) if destination.ca_bundle is not None else env_bundle
        if bundle is not None:
            connection["connection_verify"] = bundle
        # The environment is read here once instead of by requests on every call (trust_env costs ~0.6 ms each).
        transport = RequestsTransport(use_env_settings=False, **connection)
        self.client = LogsIngestionClient(destination.endpoint, self.credential, retry_total=0, transport=transport)
        self._call_options: dict[str, Any] = {}
        if proxies:
            self._call_options["proxies"] = proxies
        # Plain http is accepted for a local workspace only; azure-core refuses bearer tokens over it otherwise.
        if destination.endpoint.startswith("http://"):
            self._call_options["enforce_https"] = False
        self._next = count()

    def choose_dcr(self, shard: int | None) -> str:
        """The DCR for a request: the request's fixed shard, or the next one in turn."""
        dcrs = self.destination.dcr_immutable_ids
        index = shard if shard is not None else next(self._next)
        return dcrs[index % len(dcrs)]

    def send(self, dcr: str, body: bytes, request_id: str) -> None:
        self.client.upload(
            rule_id=dcr,
            stream_name=self.destination.stream_name,
            logs=io.BytesIO(body),
            headers={"x-ms-client-request-id": request_id},
            **self._call_options,
        )

    def close(self) -> None:
        self.client.close()
        close = getattr(self.credential, "close", None)
        if close is not None:
            close()
