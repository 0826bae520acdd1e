"""Run the emulator as a real subprocess for tests, benchmarks and the demo.

    with WorkspaceEmulator(tmp_path) as ws:
        client = LogsIngestionClient(ws.endpoint, ws.credential(), connection_verify=ws.ca_path)
        client.upload(ws.dcr_immutable_id, ws.stream_name, rows)
        assert ws.count(where="Computer = ?", params=("host-1",)) == len(rows)
        with ws.faults(schedule=["429", "429"]):
            ...

The process is ``python -m workspace --config <state>/emulator.yaml serve`` on a free loopback
port; it is reached only through HTTP and its SQLite file, exactly as a user would reach it.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from workspace.paths import SERVER_INFO

if TYPE_CHECKING:
    from workspace.credential import StaticTokenCredential

DEFAULT_STREAM = "Custom-SecurityEvent"
DEFAULT_TABLE = "SecurityEvent"


class EmulatorError(RuntimeError):
    pass


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


_VALID_TOKEN = object()


class WorkspaceEmulator:
    """A Logs Ingestion API emulator process with a private state dir.

    ``settings`` are extra ``workspace.*`` settings (e.g. ``{"requests_per_minute": 60}``); ``port=0`` picks a
    free port on first start, and restarts reuse it so endpoints held by clients stay valid.
    """

    def __init__(self, state_dir: Path, *, dcr_dir: Path | None = None, accept_any_token: bool = False,
                 tls: bool = True, settings: dict[str, Any] | None = None, host: str = "127.0.0.1",
                 port: int = 0, startup_timeout: float = 30.0) -> None:
        self.state_dir = Path(state_dir)
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self.workspace_settings: dict[str, Any] = {
            "host": host, "tls": tls, "accept_any_token": accept_any_token,
            "state_dir": str(self.state_dir), **(settings or {}),
        }
        if dcr_dir is not None:
            self.workspace_settings["dcr_dir"] = str(dcr_dir)
        self.process: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self._ssl: ssl.SSLContext | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> WorkspaceEmulator:
        if self.process is not None and self.process.poll() is None:
            return self
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / SERVER_INFO).unlink(missing_ok=True)
        config = self.state_dir / "emulator.yaml"
        config.write_text(yaml.safe_dump({"workspace": {**self.workspace_settings, "port": self.port}}))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SECSTREAM_")}
        log = (self.state_dir / "server.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "workspace", "--config", str(config), "serve"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        log.close()
        self._wait_until_ready()
        self.port = int(self.info["port"])
        return self

    def _wait_until_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        info_path = self.state_dir / SERVER_INFO
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmulatorError(f"emulator exited with {self.process.returncode}:\n{self.log_tail()}")
            if info_path.is_file():
                info = json.loads(info_path.read_text())
                if info.get("pid") == self.process.pid:
                    self.info = info
                    self._ssl = ssl.create_default_context(cafile=info["ca_path"]) if info["ca_path"] else None
                    with contextlib.suppress(OSError, EmulatorError):
                        self.admin("GET", "health")
                        return
            time.sleep(0.05)
        self.stop()
        raise EmulatorError(f"emulator did not answer within {self.startup_timeout:g}s:\n{self.log_tail()}")

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def restart(self) -> WorkspaceEmulator:
        self.stop()
        return self.start()

    def kill(self) -> None:
        """SIGKILL, no clean shutdown: what a crash looks like."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=5)
            self.process = None

    def __enter__(self) -> WorkspaceEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        path = self.state_dir / "server.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""

    # -- what clients need -------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return str(self.info["endpoint"])

    @property
    def ca_path(self) -> str | None:
        return self.info.get("ca_path")

    @property
    def dcr_immutable_id(self) -> str:
        return str(self.info["dcrs"][0]["immutable_id"])

    @property
    def stream_name(self) -> str:
        streams = self.info["dcrs"][0]["streams"]
        return DEFAULT_STREAM if DEFAULT_STREAM in streams else str(streams[0])

    @property
    def database(self) -> Path:
        return Path(self.info["database"])

    def token(self, ttl: int = 3600, audience: str = "https://monitor.azure.com") -> str:
        from workspace.auth import issue_token, signing_secret

        return issue_token(signing_secret(self.state_dir), ttl, audience)[0]

    def credential(self) -> StaticTokenCredential:
        """A TokenCredential handing out a valid emulator token (what the SDK client needs)."""
        from workspace.credential import StaticTokenCredential

        return StaticTokenCredential(self.token(), int(time.time()) + 3600)

    def client(self, **kwargs: Any) -> Any:
        """An unmodified ``azure.monitor.ingestion.LogsIngestionClient`` pointed at this emulator."""
        from azure.monitor.ingestion import LogsIngestionClient

        kwargs.setdefault("connection_verify", self.ca_path or True)
        return LogsIngestionClient(self.endpoint, self.credential(), **kwargs)

    def destination(self, name: str = "emulator") -> dict[str, Any]:
        """A ``destinations[]`` entry of secstream Settings that targets this emulator."""
        return {
            "name": name,
            "endpoint": self.endpoint,
            "dcr_immutable_ids": [self.dcr_immutable_id],
            "stream_name": self.stream_name,
            "credential": {"mode": "emulator", "token": self.token(ttl=24 * 3600)},
            "ca_bundle": self.ca_path,
        }

    def post(self, dcr: str, stream: str, body: bytes, *, gzip_body: bool = False,
             content_encoding: str | None = None, token: object = _VALID_TOKEN,
             api_version: str | None = "2023-01-01", request_id: str | None = None) -> Reply:
        """A raw ingestion request (no SDK in between), for malformed bodies and exact reply checks."""
        url = f"{self.endpoint}/dataCollectionRules/{dcr}/streams/{stream}"
        if api_version is not None:
            url += f"?api-version={api_version}"
        headers = {"Content-Type": "application/json"}
        if gzip_body:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        if content_encoding is not None:
            headers["Content-Encoding"] = content_encoding
        if token is _VALID_TOKEN:
            token = self.token()
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if request_id is not None:
            headers["x-ms-client-request-id"] = request_id
        request = urllib.request.Request(url, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30, context=self._ssl) as response:
                return Reply(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, dict(exc.headers), exc.read())

    # -- reading the workspace ---------------------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        from workspace.store import open_reader, run_query

        db = open_reader(self.state_dir)
        try:
            columns, rows = run_query(db, sql, params)
        finally:
            db.close()
        return [dict(zip(columns, r, strict=True)) for r in rows]

    def count(self, table: str = DEFAULT_TABLE, where: str = "", params: Sequence[Any] = ()) -> int:
        sql = f'SELECT count(*) AS n FROM "{table}"' + (f" WHERE {where}" if where else "")
        return int(self.query(sql, params)[0]["n"])

    def rows(self, table: str = DEFAULT_TABLE, where: str = "", params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self.query(f'SELECT * FROM "{table}"' + (f" WHERE {where}" if where else ""), params)

    def errors(self, where: str = "", params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """DCRLogErrors rows, oldest first."""
        return self.query("SELECT * FROM DCRLogErrors" + (f" WHERE {where}" if where else "") + " ORDER BY rowid",
                          params)

    def metrics(self, dcr: str | None = None, stream: str | None = None) -> dict[str, int]:
        """Per-DCR counters: requests.<status>, rows_received, rows_dropped, columns_dropped, ..."""
        rows = self.query("SELECT Metric, Value FROM DCRMetrics WHERE DcrImmutableId = ? AND InputStreamId = ?",
                          (dcr or self.dcr_immutable_id, stream or self.stream_name))
        return {r["Metric"]: int(r["Value"]) for r in rows}

    # -- steering it at runtime (loopback admin endpoints) -----------------------------------------------------

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.endpoint}/_emulator/{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10, context=self._ssl) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise EmulatorError(f"{method} /_emulator/{path}: {exc.code} {detail}") from None

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        """Replace the fault settings (see WorkspaceFaultSettings): rate_429, schedule=["429", "drop"], ..."""
        return dict(self.admin("PUT", "faults", faults))

    def clear_faults(self) -> None:
        self.set_faults()

    def faults_pending(self) -> list[str]:
        """What is left of the fault schedule."""
        return list(self.admin("GET", "faults")["pending_schedule"])

    @contextlib.contextmanager
    def faults(self, **faults: Any) -> Iterator[WorkspaceEmulator]:
        self.set_faults(**faults)
        try:
            yield self
        finally:
            self.clear_faults()

    def set_limits(self, requests_per_minute: float | None = None, bytes_per_minute: float | None = None,
                   burst_seconds: float | None = None) -> dict[str, Any]:
        """Change the per-DCR limits (buckets start full); no arguments restores the configured ones."""
        return dict(self.admin("PUT", "limits", {"requests_per_minute": requests_per_minute,
                                                 "bytes_per_minute": bytes_per_minute,
                                                 "burst_seconds": burst_seconds}))

    @contextlib.contextmanager
    def limits(self, **limits: float) -> Iterator[WorkspaceEmulator]:
        self.set_limits(**limits)
        try:
            yield self
        finally:
            self.set_limits()

    def reset(self) -> None:
        """Delete every stored row, error and metric."""
        self.admin("POST", "reset")
