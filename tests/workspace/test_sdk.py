"""The emulator as the unmodified azure-monitor-ingestion SDK sees it: the real client, a token credential,
``connection_verify`` with the emulator's CA, and a real HTTPS server process."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.monitor.ingestion import LogsIngestionClient

from tests.conftest import GOLDEN
from workspace.credential import StaticTokenCredential
from workspace.shaping import format_datetime
from workspace.testing import WorkspaceEmulator

pytestmark = pytest.mark.integration


def now() -> str:
    return format_datetime(datetime.now(UTC))


def host() -> str:
    return f"host-{uuid.uuid4().hex[:10]}"


def golden_rows() -> list[dict[str, Any]]:
    """Real agent-written rows, annotation keys removed, re-stamped to now (the service replaces old times)."""
    rows = []
    for name in ("azure-sentinel/asim_userManagement_subset.jsonl",
                 "otrf/Log4Shell_securityauditing_java_serialized_object.jsonl"):
        for line in (GOLDEN / name).read_text().splitlines():
            row = {k: v for k, v in json.loads(line).items() if not k.startswith("_")}
            row["TimeGenerated"] = now()
            rows.append(row)
    return rows


def in_threads(count: int, target: Callable[[int], object]) -> None:
    """target(0) .. target(count - 1), each on its own thread, all at once; re-raises the first failure."""
    with ThreadPoolExecutor(count) as pool:
        for future in [pool.submit(target, i) for i in range(count)]:
            future.result()


def failure(err: HttpResponseError) -> tuple[int | None, str, str, Any]:
    """(status, error.code, error.message, response headers) as the SDK exposes them."""
    response: Any = err.response
    assert err.error is not None and response is not None
    return err.status_code, str(err.error.code), str(err.error.message), response.headers


@pytest.fixture
def ws(workspace_emulator: WorkspaceEmulator) -> Iterator[WorkspaceEmulator]:
    yield workspace_emulator
    workspace_emulator.clear_faults()


def test_upload_round_trip_exact_count_and_values(ws: WorkspaceEmulator) -> None:
    golden = golden_rows()
    computer = host()
    rows = [dict(golden[i % len(golden)], Computer=computer, EventOriginId=str(uuid.uuid4())) for i in range(3000)]
    before = ws.metrics()
    ws.client().upload(ws.dcr_immutable_id, ws.stream_name, rows)
    assert ws.count(where="Computer = ?", params=(computer,)) == 3000
    stored = {r["EventOriginId"]: r for r in ws.rows(where="Computer = ?", params=(computer,))}
    for sent in rows[:len(golden)]:
        got = stored[sent["EventOriginId"]]
        for column in ("EventID", "Activity", "Channel", "EventData", "Task", "Level", "MG", "SourceComputerId"):
            if column in sent:
                assert got[column] == sent[column], column
        assert got["TimeGenerated"] == sent["TimeGenerated"]
        assert got["Type"] == "SecurityEvent" and got["SourceSystem"] == "RestAPI"
        assert got["SubjectUserName"] == sent.get("SubjectUserName", "")  # absent strings read as ''
    after = ws.metrics()
    assert after["rows_received"] - before.get("rows_received", 0) == 3000
    assert after["rows_stored.SecurityEvent"] - before.get("rows_stored.SecurityEvent", 0) == 3000
    assert after["requests.204"] - before.get("requests.204", 0) >= 2  # the SDK split ~1 MiB chunks


def test_client_request_id_is_recorded(ws: WorkspaceEmulator) -> None:
    request_id = str(uuid.uuid4())
    computer = host()
    ws.client().upload(ws.dcr_immutable_id, ws.stream_name, [{"TimeGenerated": now(), "Computer": computer}],
                       headers={"x-ms-client-request-id": request_id})
    (row,) = ws.rows(where="Computer = ?", params=(computer,))
    assert row["_RequestId"] == request_id and row["_TimeReceived"]


def test_both_api_versions_are_served(ws: WorkspaceEmulator) -> None:
    computer = host()
    for version in ("2023-01-01", "2021-11-01-preview"):
        client = LogsIngestionClient(ws.endpoint, ws.credential(), connection_verify=ws.ca_path, api_version=version)
        client.upload(ws.dcr_immutable_id, ws.stream_name, [{"TimeGenerated": now(), "Computer": computer}])
    assert ws.count(where="Computer = ?", params=(computer,)) == 2


def test_payload_over_1_mib_on_the_wire_is_413(ws: WorkspaceEmulator) -> None:
    # Random bytes don't compress: one record whose gzip body is still over 1,048,576 bytes.
    record = {"TimeGenerated": now(), "Computer": host(), "EventData": base64.b64encode(os.urandom(1_100_000)).decode()}
    with pytest.raises(HttpResponseError) as err:
        ws.client().upload(ws.dcr_immutable_id, ws.stream_name, [record])
    status, code, message, headers = failure(err.value)
    assert (status, code) == (413, "ContentLengthLimitExceeded")
    assert message.startswith("Maximum allowed content length: 1048576 bytes (1 MB). Provided content length: ")
    assert int(message.rsplit(": ", 1)[1].split()[0]) > 1_048_576
    assert headers["x-ms-error-code"] == "ContentLengthLimitExceeded" and "Retry-After" not in headers
    assert ws.count(where="Computer = ?", params=(record["Computer"],)) == 0


def test_sdk_chunks_of_exactly_the_limit_are_accepted(ws: WorkspaceEmulator) -> None:
    """The SDK's chunks are slightly over 1 MiB before compression: the limit is on the wire, so they pass."""
    computer = host()
    rows = [{"TimeGenerated": now(), "Computer": computer, "EventData": "x" * 1000} for _ in range(2000)]
    ws.client().upload(ws.dcr_immutable_id, ws.stream_name, rows)
    assert ws.count(where="Computer = ?", params=(computer,)) == 2000


def test_429_storm_is_ridden_out_by_honouring_retry_after(ws: WorkspaceEmulator) -> None:
    computer = host()
    request_id = str(uuid.uuid4())
    before = ws.metrics().get("requests.429", 0)
    with ws.faults(schedule=["429", "429", "429"], retry_after=1):
        started = time.monotonic()
        ws.client().upload(ws.dcr_immutable_id, ws.stream_name, [{"TimeGenerated": now(), "Computer": computer}],
                           headers={"x-ms-client-request-id": request_id})
        elapsed = time.monotonic() - started
    assert elapsed >= 2.9  # three waits of Retry-After: 1
    assert ws.count(where="Computer = ?", params=(computer,)) == 1
    assert ws.metrics()["requests.429"] - before == 3
    throttled = ws.errors(where="ClientRequestId = ?", params=(request_id,))
    assert [(e["StatusCode"], e["Code"]) for e in throttled] == [(429, "TooManyRequests")] * 3


def test_real_limiter_throttles_and_concurrent_sdk_clients_ride_it_out(ws: WorkspaceEmulator) -> None:
    computer = host()
    before = ws.metrics().get("requests.429", 0)
    with ws.limits(requests_per_minute=120, burst_seconds=1):  # 2 requests/s
        in_threads(5, lambda i: ws.client().upload(ws.dcr_immutable_id, ws.stream_name,
                                                   [{"TimeGenerated": now(), "Computer": computer, "EventID": i}]))
    assert ws.count(where="Computer = ?", params=(computer,)) == 5
    assert ws.metrics()["requests.429"] - before >= 2


def test_429_exhausting_the_sdk_retries_surfaces_with_retry_after(ws: WorkspaceEmulator) -> None:
    # Retry-After: 0 counts as absent for azure-core, which then backs off: keep that short.
    with ws.faults(schedule=["429"] * 4, retry_after=0), pytest.raises(HttpResponseError) as err:
        ws.client(retry_backoff_factor=0.01).upload(ws.dcr_immutable_id, ws.stream_name,
                                                    [{"TimeGenerated": now(), "Computer": host()}])
    status, code, _, headers = failure(err.value)
    assert (status, code, headers["Retry-After"]) == (429, "TooManyRequests", "0")
    assert ws.faults_pending() == []


def test_missing_or_invalid_token_is_401_client_authentication_error(ws: WorkspaceEmulator) -> None:
    for credential, code in ((StaticTokenCredential("not-a-jwt"), "InvalidAuthenticationToken"),
                             (StaticTokenCredential(ws.token(audience="https://management.azure.com")),
                              "InvalidAudience")):
        client = LogsIngestionClient(ws.endpoint, credential, connection_verify=ws.ca_path)
        with pytest.raises(ClientAuthenticationError) as err:
            client.upload(ws.dcr_immutable_id, ws.stream_name, [{"TimeGenerated": now()}])
        assert err.value.status_code == 401 and err.value.error is not None and err.value.error.code == code
        assert credential.scopes_seen == [("https://monitor.azure.com/.default",)]
    raw = ws.post(ws.dcr_immutable_id, ws.stream_name, b"[]", token=None)
    assert raw.status == 401 and json.loads(raw.body) == {"error": {
        "code": "AuthenticationFailed", "message": "Authentication failed. The 'Authorization' header is missing."}}
    assert raw.headers["x-ms-error-code"] == "AuthenticationFailed" and "Retry-After" not in raw.headers


def test_unknown_dcr_is_404_resource_not_found(ws: WorkspaceEmulator) -> None:
    unknown = "dcr-" + "f" * 32
    with pytest.raises(ResourceNotFoundError) as err:
        ws.client().upload(unknown, ws.stream_name, [{"TimeGenerated": now()}])
    assert err.value.status_code == 404 and err.value.error is not None
    assert (err.value.error.code, err.value.error.message) == (
        "NotFound", f"Data collection rule with immutable Id '{unknown}' not found.")


def test_unknown_stream_is_400_invalid_stream(ws: WorkspaceEmulator) -> None:
    with pytest.raises(HttpResponseError) as err:
        ws.client().upload(ws.dcr_immutable_id, "Custom-Nope", [{"TimeGenerated": now()}])
    status, code, message, _ = failure(err.value)
    assert (status, code) == (400, "InvalidStream") and "Custom-Nope" in message


def test_missing_or_unknown_api_version_is_400(ws: WorkspaceEmulator) -> None:
    assert ws.post(ws.dcr_immutable_id, ws.stream_name, b"[]", api_version=None).status == 400
    reply = ws.post(ws.dcr_immutable_id, ws.stream_name, b"[]", api_version="2020-01-01")
    assert reply.status == 400 and json.loads(reply.body)["error"]["code"] == "InvalidApiVersionParameter"


def test_bare_object_is_204_and_dropped(ws: WorkspaceEmulator) -> None:
    computer = host()
    request_id = str(uuid.uuid4())
    reply = ws.post(ws.dcr_immutable_id, ws.stream_name, json.dumps({"TimeGenerated": now(), "Computer": computer}
                                                                    ).encode(), gzip_body=True, request_id=request_id)
    assert (reply.status, reply.body) == (204, b"")
    assert ws.count(where="Computer = ?", params=(computer,)) == 0
    (error,) = ws.errors(where="ClientRequestId = ?", params=(request_id,))
    assert error["StatusCode"] == 204 and "not an array" in error["Message"]
    assert ws.post(ws.dcr_immutable_id, ws.stream_name, b'"just text"').status == 204  # any non-array alike
    with pytest.raises(ValueError):  # the SDK itself refuses a dict since 1.0.3
        ws.client().upload(ws.dcr_immutable_id, ws.stream_name, {"TimeGenerated": now()})


@pytest.mark.parametrize(("body", "gzip_body", "fragment"), [
    (b"\x1f\x8b\x08\x00garbage", False, "not valid gzip"),
    (b'[{"Computer": ', True, "not valid JSON"),
    (b'[{"Computer": ', False, "not valid JSON"),
])
def test_broken_gzip_or_json_is_400_and_the_server_keeps_serving(ws: WorkspaceEmulator, body: bytes,
                                                                 gzip_body: bool, fragment: str) -> None:
    reply = ws.post(ws.dcr_immutable_id, ws.stream_name, body, gzip_body=gzip_body,
                    content_encoding="gzip" if not gzip_body and body.startswith(b"\x1f") else None)
    assert reply.status == 400 and "Retry-After" not in reply.headers
    error = json.loads(reply.body)["error"]
    assert error["code"] == "InvalidPayload" and fragment in error["message"]
    computer = host()
    ws.client().upload(ws.dcr_immutable_id, ws.stream_name, [{"TimeGenerated": now(), "Computer": computer}])
    assert ws.count(where="Computer = ?", params=(computer,)) == 1


def test_time_generated_window_truncation_and_drops_through_the_wire(ws: WorkspaceEmulator) -> None:
    computer = host()
    request_id = str(uuid.uuid4())
    received_before = datetime.now(UTC)
    old = format_datetime(received_before - timedelta(days=3))
    future = format_datetime(received_before + timedelta(days=2))
    fresh = now()
    rows = [
        {"TimeGenerated": old, "Computer": computer, "EventID": 1},
        {"TimeGenerated": future, "Computer": computer, "EventID": 2},
        {"TimeGenerated": fresh, "Computer": computer, "EventID": 3, "EventData": "é" * 40_000,
         "NotAColumn": "x", "LogonType": "3", "TenantId": "spoofed"},
    ]
    before = ws.metrics()
    ws.client().upload(ws.dcr_immutable_id, ws.stream_name, rows, headers={"x-ms-client-request-id": request_id})
    got = {r["EventID"]: r for r in ws.rows(where="Computer = ?", params=(computer,))}
    for event_id, original in ((1, old), (2, future)):
        assert got[event_id]["TimeGenerated"] == got[event_id]["_TimeReceived"]
        assert got[event_id]["_OriginalTimeGenerated"] == original
    assert got[3]["TimeGenerated"] == fresh and got[3]["_OriginalTimeGenerated"] is None
    assert len(got[3]["EventData"].encode()) == 65_536
    assert got[3]["LogonType"] is None and got[3]["TenantId"] != "spoofed"
    after = ws.metrics()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert delta["time_generated_replaced"] == 2 and delta["values_truncated"] == 1
    assert delta["columns_dropped"] == 2 and delta.get("rows_dropped", 0) == 0
    (error,) = ws.errors(where="ClientRequestId = ?", params=(request_id,))
    assert error["OperationName"] == "Transformation"
    assert "NotAColumn (not declared in the stream)" in error["Message"]
    assert "LogonType (not an int)" in error["Message"]


def test_injected_500_is_retried_by_the_sdk_and_503s_surface(ws: WorkspaceEmulator) -> None:
    computer = host()
    with ws.faults(schedule=["500"]):
        ws.client().upload(ws.dcr_immutable_id, ws.stream_name, [{"TimeGenerated": now(), "Computer": computer}])
    assert ws.count(where="Computer = ?", params=(computer,)) == 1
    client = ws.client(retry_backoff_factor=0.01)
    with ws.faults(schedule=["503"] * 4), pytest.raises(HttpResponseError) as err:
        client.upload(ws.dcr_immutable_id, ws.stream_name, [{"TimeGenerated": now(), "Computer": computer}])
    status, _, _, headers = failure(err.value)
    assert status == 503 and "Retry-After" not in headers
    assert ws.count(where="Computer = ?", params=(computer,)) == 1


def test_dropped_connection_and_slow_response(ws: WorkspaceEmulator) -> None:
    computer = host()
    with ws.faults(schedule=["drop"]), pytest.raises((ServiceResponseError, ServiceRequestError)):
        ws.client().upload(ws.dcr_immutable_id, ws.stream_name, [{"TimeGenerated": now(), "Computer": computer}])
    assert ws.count(where="Computer = ?", params=(computer,)) == 0
    with ws.faults(schedule=["slow"], slow_seconds=1.0):
        started = time.monotonic()
        ws.client().upload(ws.dcr_immutable_id, ws.stream_name, [{"TimeGenerated": now(), "Computer": computer}])
        assert time.monotonic() - started >= 1.0
    assert ws.count(where="Computer = ?", params=(computer,)) == 1


def test_fault_rates_are_seeded_and_reproducible(ws: WorkspaceEmulator) -> None:
    outcomes = []
    for _ in range(2):
        with ws.faults(rate_500=0.5, seed=7):
            outcomes.append([ws.post(ws.dcr_immutable_id, ws.stream_name, b"[]").status for _ in range(12)])
    assert outcomes[0] == outcomes[1] and {204, 500} == set(outcomes[0])


def test_concurrent_clients_every_row_once(ws: WorkspaceEmulator) -> None:
    computer = host()

    def send(worker: int) -> None:
        client = ws.client()  # one client (connection pool) per thread, as separate processes would have
        for batch in range(4):
            client.upload(ws.dcr_immutable_id, ws.stream_name, [
                {"TimeGenerated": now(), "Computer": computer, "EventID": worker, "Task": batch * 1000 + i}
                for i in range(250)])

    in_threads(8, send)
    (row,) = ws.query("SELECT count(*) AS n, count(DISTINCT EventID * 100000 + Task) AS distinct_rows, "
                      "count(DISTINCT _RequestId) AS requests FROM SecurityEvent WHERE Computer = ?", (computer,))
    assert row == {"n": 8000, "distinct_rows": 8000, "requests": 32}


def test_rows_survive_restart_and_crash(tmp_path: Path) -> None:
    with WorkspaceEmulator(tmp_path / "state") as emulator:
        client = emulator.client()
        client.upload(emulator.dcr_immutable_id, emulator.stream_name,
                      [{"TimeGenerated": now(), "Computer": "a", "EventID": i} for i in range(500)])
        endpoint = emulator.endpoint
        emulator.restart()
        assert emulator.endpoint == endpoint and emulator.count() == 500
        emulator.client().upload(emulator.dcr_immutable_id, emulator.stream_name,
                                 [{"TimeGenerated": now(), "Computer": "b"} for _ in range(300)])
        emulator.kill()  # no clean shutdown: every 204 must already be committed
        emulator.start()
        assert emulator.count() == 800
        assert emulator.metrics()["rows_stored.SecurityEvent"] == 800
        emulator.client().upload(emulator.dcr_immutable_id, emulator.stream_name, [{"TimeGenerated": now()}])
        assert emulator.count() == 801


def test_every_204_survives_a_kill_during_concurrent_group_commits(tmp_path: Path) -> None:
    """Concurrent requests are committed in shared transactions; a SIGKILL while they are in flight must not lose
    any request that was answered 204 (requests cut off by the kill may or may not be stored, but never in part)."""
    rows_per_request = 40
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    with WorkspaceEmulator(tmp_path / "state") as emulator:
        token = emulator.token()

        def send(worker: int) -> None:
            for n in range(1000):
                if stop.is_set():
                    return
                request_id = f"w{worker}-{n}"
                body = json.dumps([{"TimeGenerated": now(), "Computer": "crash", "EventID": i}
                                   for i in range(rows_per_request)]).encode()
                try:
                    reply = emulator.post(emulator.dcr_immutable_id, emulator.stream_name, body, gzip_body=True,
                                          token=token, request_id=request_id)
                except OSError:  # the server is gone
                    return
                if reply.status == 204:
                    with lock:
                        answered.append(request_id)

        threads = [threading.Thread(target=send, args=(w,)) for w in range(6)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while len(answered) < 60 and time.monotonic() < deadline:
            time.sleep(0.01)
        emulator.kill()  # mid-flight: other requests are being shaped, written or committed right now
        stop.set()
        for t in threads:
            t.join(30)
        assert len(answered) >= 60
        emulator.start()
        stored = {r["_RequestId"]: r["n"] for r in emulator.query(
            "SELECT _RequestId, count(*) AS n FROM SecurityEvent WHERE Computer = 'crash' GROUP BY 1")}
    assert set(answered) <= set(stored)
    assert set(stored.values()) == {rows_per_request}  # every stored request is whole


def test_accept_any_token_mode_over_plain_http(tmp_path: Path) -> None:
    with WorkspaceEmulator(tmp_path / "state", accept_any_token=True, tls=False) as emulator:
        assert emulator.endpoint.startswith("http://") and emulator.ca_path is None
        client = LogsIngestionClient(emulator.endpoint, StaticTokenCredential("anything"))
        client.upload(emulator.dcr_immutable_id, emulator.stream_name, [{"TimeGenerated": now()}],
                      enforce_https=False)
        assert emulator.count() == 1
        assert emulator.post(emulator.dcr_immutable_id, emulator.stream_name, b"[]", token=None).status == 401
