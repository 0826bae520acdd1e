"""``/healthz`` and ``/readyz`` for Kubernetes probes, served from a daemon thread.

Liveness comes from the stages' ``StageState.live``; readiness needs every stage ready *and* every readiness check
passing (e.g. the Kafka cluster answers). Checks run on their own thread every ``check_interval`` seconds and the
handlers only read the cached results, so a probe never waits on a slow broker. The server is stdlib
``http.server``: it works the same next to a blocking stage loop or a Faust event loop.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from confluent_kafka.admin import AdminClient

from secstream.config import ConfigError, KafkaSettings, Settings
from secstream.kafka import client_config
from secstream.lifecycle import StageState
from secstream.telemetry import flush_telemetry, setup_telemetry

log = logging.getLogger(__name__)

# A readiness check returns True/False, or (ok, detail). An exception counts as failing, its type as the detail.
CheckResult = bool | tuple[bool, str]
ReadinessCheck = Callable[[], CheckResult]


@dataclass
class _CheckStatus:
    ok: bool = False
    detail: str = "not checked yet"
    checked_at: float | None = None


class HealthServer:
    """``HealthServer(port=0, host="127.0.0.1", states=[stage.state]).start()``; ``port`` is the bound port."""

    def __init__(
        self,
        port: int = 0,
        host: str = "0.0.0.0",
        states: Iterable[StageState] = (),
        checks: dict[str, ReadinessCheck] | None = None,
        check_interval: float = 5.0,
    ) -> None:
        self._requested = (host, port)
        self._states: list[StageState] = list(states)
        self._checks: dict[str, ReadinessCheck] = dict(checks or {})
        self._results: dict[str, _CheckStatus] = {name: _CheckStatus() for name in self._checks}
        self._check_interval = check_interval
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # ----------------------------------------------------------------------------------------- configuration

    def add_state(self, state: StageState) -> None:
        self._states.append(state)

    def add_check(self, name: str, check: ReadinessCheck) -> None:
        self._results[name] = _CheckStatus()
        self._checks[name] = check

    # ------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> HealthServer:
        """Bind and serve (idempotent). Raises ``ConfigError`` when the port cannot be opened."""
        if self._server is not None:
            return self
        try:
            server = ThreadingHTTPServer(self._requested, _handler_for(self))
        except OSError as exc:
            host, port = self._requested
            raise ConfigError(f"telemetry.health_port: cannot listen on {host}:{port} ({exc.strerror})") from None
        server.daemon_threads = True
        self._server = server
        self._stop.clear()
        self._threads = [
            threading.Thread(target=server.serve_forever, name="health-http", daemon=True),
            threading.Thread(target=self._run_checks, name="health-checks", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        log.info("health endpoints on http://%s:%d/healthz and /readyz", self._requested[0], self.port)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            return self._requested[1]
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self._requested[0]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}"

    # -------------------------------------------------------------------------------------------- reports

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        ok = all(s.live for s in self._states)
        return ok, {"status": "ok" if ok else "failing", "stages": [_describe(s) for s in self._states]}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        checks = dict(self._results)
        stages_ready = bool(self._states) and all(s.live and s.ready for s in self._states)
        ok = stages_ready and all(c.ok for c in checks.values())
        now = time.time()
        body = {
            "status": "ready" if ok else "not ready",
            "stages": [_describe(s) for s in self._states],
            "checks": {
                name: {
                    "ok": c.ok,
                    "detail": c.detail,
                    "seconds_since_check": None if c.checked_at is None else round(now - c.checked_at, 3),
                }
                for name, c in checks.items()
            },
        }
        if not self._states:
            body["detail"] = "no stage registered yet"
        return ok, body

    def run_checks_now(self) -> None:
        """Evaluate every readiness check once (the background thread does this every ``check_interval``)."""
        for name, check in list(self._checks.items()):
            try:
                result = check()
                ok, detail = result if isinstance(result, tuple) else (bool(result), "ok" if result else "failed")
            except Exception as exc:
                ok, detail = False, f"error: {exc.__class__.__name__}"
            previous = self._results.get(name)
            if previous is not None and previous.ok != ok:
                log.warning("readiness check %s: %s (%s)", name, "passing" if ok else "failing", detail)
            self._results[name] = _CheckStatus(ok, detail, time.time())

    def _run_checks(self) -> None:
        while not self._stop.is_set():
            self.run_checks_now()
            self._stop.wait(self._check_interval)


def _describe(state: StageState) -> dict[str, Any]:
    now = time.time()
    return {
        "name": state.name,
        "live": state.live,
        "ready": state.ready,
        "detail": state.detail,
        "uptime_seconds": round(now - state.started_at, 3),
        "seconds_since_progress": round(now - state.last_progress, 3),
    }


def _handler_for(health: HealthServer) -> type[BaseHTTPRequestHandler]:
    routes: dict[str, Callable[[], tuple[bool, dict[str, Any]]]] = {
        "/healthz": health.liveness,
        "/readyz": health.readiness,
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._respond(with_body=True)

        def do_HEAD(self) -> None:
            self._respond(with_body=False)

        def _respond(self, with_body: bool) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                status, body = 404, {"status": "not found", "endpoints": sorted(routes)}
            else:
                ok, body = route()
                status = 200 if ok else 503
            payload = json.dumps(body).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if with_body:
                self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: keep them quiet
            log.debug("health %s", format % args)

    return Handler


# ------------------------------------------------------------------------------------------- Kafka check


class KafkaReachable:
    """Readiness check: the Kafka cluster answers a metadata request (with the stage's TLS/SASL settings)."""

    def __init__(self, kafka: KafkaSettings, timeout: float = 3.0) -> None:
        # One client for the process's lifetime: librdkafka reconnects by itself when the broker comes back.
        self._admin = AdminClient({**client_config(kafka), "log_level": 0})
        self._timeout = timeout
        self._bootstrap = kafka.bootstrap_servers

    def __call__(self) -> tuple[bool, str]:
        try:
            metadata = self._admin.list_topics(timeout=self._timeout)
        except Exception as exc:
            return False, f"{self._bootstrap}: unreachable ({exc.__class__.__name__})"
        return True, f"{len(metadata.brokers)} broker(s) answer"


def start_health_server(
    settings: Settings,
    states: Iterable[StageState],
    check_kafka: bool = True,
    check_interval: float = 5.0,
) -> HealthServer | None:
    """The health server a stage process runs when ``telemetry.health_port`` is set (None when it is 0)."""
    telemetry = settings.telemetry
    if telemetry.health_port == 0:
        return None
    checks: dict[str, ReadinessCheck] = {"kafka": KafkaReachable(settings.kafka)} if check_kafka else {}
    return HealthServer(telemetry.health_port, telemetry.health_host, states, checks, check_interval).start()


@contextmanager
def observed_stage(settings: Settings, stage: str, states: Iterable[StageState],
                   check_kafka: bool = True) -> Iterator[HealthServer | None]:
    """Everything a stage process needs around ``run_stage``: exporters for ``secstream-<stage>`` and, when
    ``telemetry.health_port`` is set, the health endpoints; pending telemetry is pushed on the way out.

    ``with observed_stage(settings, "sink", [stage.state]): run_stage(stage)``. ``check_kafka=False`` for a
    process that does not talk to Kafka (a producer sending to collectors).
    """
    setup_telemetry(settings.telemetry, f"secstream-{stage}")
    health = start_health_server(settings, states, check_kafka=check_kafka)
    try:
        yield health
    finally:
        if health is not None:
            health.stop()
        flush_telemetry()
