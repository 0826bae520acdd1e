"""The Logs Ingestion API emulator: ``POST /dataCollectionRules/{immutableId}/streams/{stream}``.

The handler only routes: auth (workspace.auth), limits (workspace.limits), faults (workspace.faults), body
decoding (workspace.body), the DCR's data flows (workspace.shaping) and storage (workspace.store) each do one
job. Decoding, shaping and SQLite writes run on one committer thread (workspace.committer), which writes the
requests that queued up meanwhile in one transaction, so the event loop keeps reading requests while batches
are shaped and written.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from opentelemetry import metrics, trace
from pydantic import BaseModel, ValidationError

from secstream.config import WorkspaceEmulatorSettings, WorkspaceFaultSettings
from workspace.auth import TokenVerifier, signing_secret
from workspace.body import decode_body
from workspace.committer import GroupCommitter
from workspace.dcr import DEFAULT_DCR_DIR, Dcr, load_dcrs
from workspace.errors import ApiError, content_too_large, dcr_not_found
from workspace.faults import FaultInjector
from workspace.limits import DcrLimiter, Limits
from workspace.paths import SERVER_INFO
from workspace.shaping import FlowShaper, ShapedBatch, describe_drops, format_datetime
from workspace.store import ErrorRecord, RequestOutcome, Store
from workspace.tls import ensure_tls

log = logging.getLogger("secstream.workspace")
API_VERSIONS = ("2023-01-01", "2021-11-01-preview")
INGEST_PATH = "/dataCollectionRules/{dcr}/streams/{stream}"
_DRAIN_LIMIT = 256 * 1_048_576  # read (and discard) at most this much of an oversized body


_meter = metrics.get_meter("secstream.workspace")
_tracer = trace.get_tracer("secstream.workspace")
# One add per request (never per row); attributes: dcr, stream, and status for requests.
_COUNTERS = {
    "requests": _meter.create_counter("secstream.workspace.requests", description="ingestion requests by status"),
    "rows_received": _meter.create_counter("secstream.workspace.rows_received", description="records received"),
    "rows_dropped": _meter.create_counter("secstream.workspace.rows_dropped", description="records dropped"),
    "columns_dropped": _meter.create_counter("secstream.workspace.columns_dropped",
                                             description="values dropped: undeclared column or wrong type"),
    "bytes_received": _meter.create_counter("secstream.workspace.bytes_received", unit="By",
                                            description="request bytes as received"),
}


def _count(outcome: RequestOutcome) -> None:
    attributes = {"dcr": outcome.dcr, "stream": outcome.stream}
    _COUNTERS["requests"].add(1, attributes | {"status": outcome.status})
    for name, value in outcome.metrics().items():
        counter = _COUNTERS.get(name)
        if counter is not None and name != "requests":
            counter.add(value, attributes)


class LimitsUpdate(BaseModel):
    requests_per_minute: float | None = None
    bytes_per_minute: float | None = None
    burst_seconds: float | None = None


@dataclass
class _Request:
    """What the worker thread needs from one HTTP request."""

    dcr: str
    stream: str
    request_id: str
    body: bytes
    content_encoding: str
    received: datetime


class Emulator:
    def __init__(self, settings: WorkspaceEmulatorSettings) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir
        self.dcrs: dict[str, Dcr] = load_dcrs(settings.dcr_dir or DEFAULT_DCR_DIR)
        self.store = Store(self.state_dir)
        self.shapers: dict[tuple[str, str], list[FlowShaper]] = {}
        for dcr in self.dcrs.values():
            for flow in dcr.flows:
                self.store.ensure_table(flow.table)
                shaper = FlowShaper(flow, dcr.streams[flow.stream], settings.max_field_bytes, settings.resource_id)
                self.shapers.setdefault((dcr.immutable_id, flow.stream), []).append(shaper)
        self.verifier = TokenVerifier(signing_secret(self.state_dir), accept_any=settings.accept_any_token)
        self.limiter = DcrLimiter(Limits(settings.requests_per_minute, settings.bytes_per_minute,
                                         settings.burst_seconds))
        self.faults = FaultInjector(settings.faults)
        self.committer = GroupCommitter(self.store)

    # -- the ingestion endpoint ------------------------------------------------------------------------------

    async def ingest(self, request: web.Request) -> web.StreamResponse:
        dcr_id, stream = request.match_info["dcr"], request.match_info["stream"]
        request_id = request.headers.get("x-ms-client-request-id", "")
        try:
            self._check_api_version(request.query.get("api-version"))
            self.verifier.check(request.headers.get("Authorization"))
            if dcr_id not in self.dcrs:
                raise dcr_not_found(dcr_id)
            if (dcr_id, stream) not in self.shapers:
                raise ApiError(400, "InvalidStream", f"Stream '{stream}' is not declared in a data flow of the data "
                                                     f"collection rule with immutable Id '{dcr_id}'.")
            fault = self.faults.decide()
            if fault == "drop":
                return await self._drop_connection(request)
            if fault == "slow":
                await asyncio.sleep(self.faults.settings.slow_seconds)
            injected = self.faults.error_for(fault)
            if injected is not None:
                await _drain(request)
                raise injected
            body = await _read_body(request, self.settings.max_body_bytes)
            self.limiter.admit(dcr_id, len(body))
        except ApiError as err:
            if dcr_id in self.dcrs and err.status != 404:
                await self._write(self._rejection(dcr_id, stream, request_id, err))
            return _error_response(err)
        job = _Request(dcr_id, stream, request_id, body, request.headers.get("Content-Encoding", ""),
                       datetime.now(UTC))

        def prepare() -> RequestOutcome:
            try:
                return self._shape_body(job)
            except ApiError as err:
                return self._rejection(dcr_id, stream, request_id, err, job.received)

        outcome = await self._store(prepare)  # committed before the 204: accepted rows survive a crash
        if outcome.rejected is not None:
            return _error_response(outcome.rejected)
        return web.Response(status=204)

    def _check_api_version(self, version: str | None) -> None:
        if not version:
            raise ApiError(400, "MissingApiVersionParameter",
                           "The api-version query parameter (?api-version=) is required for all requests.")
        if version not in API_VERSIONS:
            raise ApiError(400, "InvalidApiVersionParameter",
                           f"The api-version '{version}' is invalid. The supported versions are "
                           f"'{', '.join(API_VERSIONS)}'.")

    async def _write(self, outcome: RequestOutcome) -> None:
        await self._store(lambda: outcome)

    async def _store(self, prepare: Callable[[], RequestOutcome]) -> RequestOutcome:
        """``prepare`` (on the committer thread), then its outcome committed; counted once committed."""
        with _tracer.start_as_current_span("workspace.write") as span:
            outcome = await self.committer.submit(lambda: _with_reply(prepare()))
            span.set_attributes({"dcr": outcome.dcr, "stream": outcome.stream, "status": outcome.status,
                                 "rows": sum(b.rows for b in outcome.batches)})
        _count(outcome)
        return outcome

    def _shape_body(self, job: _Request) -> RequestOutcome:
        """Committer thread: decode the body and apply every data flow of the stream."""
        value = decode_body(job.body, job.content_encoding, self.settings.max_uncompressed_bytes)
        outcome = RequestOutcome(dcr=job.dcr, stream=job.stream, time=format_datetime(job.received), status=204,
                                 bytes_received=len(job.body))
        if not isinstance(value, list):
            # The service answers 204 to a bare object and ingests nothing.
            kind = "object" if isinstance(value, dict) else type(value).__name__
            outcome.errors.append(ErrorRecord(job.dcr, job.stream, "Ingestion", 204, "InvalidPayload",
                                              f"The request body is a JSON {kind}, not an array of records: "
                                              "nothing was ingested.", job.request_id))
            outcome.records_received = 1
            outcome.batches.append(ShapedBatch(table="", rows_dropped=1))
            return outcome
        outcome.records_received = len(value)
        for shaper in self.shapers[(job.dcr, job.stream)]:
            batch = shaper.shape(value, job.received, job.request_id)
            outcome.batches.append(batch)
            if batch.columns_dropped or batch.rows_dropped:
                outcome.errors.append(ErrorRecord(job.dcr, job.stream, "Transformation", 204, "DataDropped",
                                                  describe_drops(batch), job.request_id))
        return outcome

    @staticmethod
    def _rejection(dcr: str, stream: str, request_id: str, err: ApiError,
                   received: datetime | None = None) -> RequestOutcome:
        outcome = RequestOutcome(dcr=dcr, stream=stream, time=format_datetime(received or datetime.now(UTC)),
                                 status=err.status, rejected=err)
        outcome.errors.append(ErrorRecord(dcr, stream, "Ingestion", err.status, err.code, err.message, request_id))
        return outcome

    async def _drop_connection(self, request: web.Request) -> web.StreamResponse:
        await _drain(request)
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # nothing is written back: the client sees the connection drop

    # -- admin endpoints (loopback only) ----------------------------------------------------------------------

    @web.middleware
    async def loopback_only(self, request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if request.path.startswith("/_emulator/"):
            remote = request.remote or ""
            try:
                if not ipaddress.ip_address(remote).is_loopback:
                    raise web.HTTPForbidden(text="admin endpoints answer loopback clients only")
            except ValueError:
                raise web.HTTPForbidden(text="admin endpoints answer loopback clients only") from None
        return await handler(request)

    async def health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok", "pid": os.getpid(), "dcrs": self.describe(),
                      "commits": {"transactions": self.committer.transactions,
                                  "requests": self.committer.requests}})

    async def get_faults(self, request: web.Request) -> web.Response:
        return _json(self.faults.settings.model_dump(mode="json") | {"pending_schedule": list(self.faults.schedule)})

    async def put_faults(self, request: web.Request) -> web.Response:
        try:
            settings = WorkspaceFaultSettings.model_validate(orjson.loads(await request.read() or b"{}"))
        except (ValidationError, orjson.JSONDecodeError) as exc:
            return _json({"error": {"code": "InvalidFaults", "message": str(exc)}}, status=400)
        self.faults.configure(settings)
        return await self.get_faults(request)

    async def get_limits(self, request: web.Request) -> web.Response:
        lim = self.limiter.limits
        return _json({"requests_per_minute": lim.requests_per_minute, "bytes_per_minute": lim.bytes_per_minute,
                      "burst_seconds": lim.burst_seconds})

    async def put_limits(self, request: web.Request) -> web.Response:
        try:
            update = LimitsUpdate.model_validate(orjson.loads(await request.read() or b"{}"))
        except (ValidationError, orjson.JSONDecodeError) as exc:
            return _json({"error": {"code": "InvalidLimits", "message": str(exc)}}, status=400)
        s = self.settings
        self.limiter.configure(Limits(update.requests_per_minute or s.requests_per_minute,
                                      update.bytes_per_minute or s.bytes_per_minute,
                                      update.burst_seconds or s.burst_seconds))
        return await self.get_limits(request)

    async def reset(self, request: web.Request) -> web.Response:
        tables = sorted({s.table for shapers in self.shapers.values() for s in shapers})
        await self.committer.exclusive(lambda: self.store.delete_all(tables))
        self.limiter.configure(self.limiter.limits)
        return _json({"deleted": tables})

    def describe(self) -> list[dict[str, Any]]:
        return [{"immutable_id": d.immutable_id, "name": d.name, "file": str(d.source),
                 "streams": sorted(d.streams), "tables": sorted({f.table.name for f in d.flows})}
                for d in self.dcrs.values()]

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.loopback_only], client_max_size=_DRAIN_LIMIT)
        app.router.add_post(INGEST_PATH, self.ingest)
        app.router.add_get("/_emulator/health", self.health)
        app.router.add_get("/_emulator/faults", self.get_faults)
        app.router.add_put("/_emulator/faults", self.put_faults)
        app.router.add_get("/_emulator/limits", self.get_limits)
        app.router.add_put("/_emulator/limits", self.put_limits)
        app.router.add_post("/_emulator/reset", self.reset)
        return app

    def close(self) -> None:
        self.committer.close()
        self.store.close()


def _with_reply(outcome: RequestOutcome) -> tuple[RequestOutcome, RequestOutcome]:
    return outcome, outcome


def _error_response(err: ApiError) -> web.Response:
    return web.Response(status=err.status, body=err.body(), content_type="application/json", headers=err.headers())


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(value), content_type="application/json")


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, or 413 once it passes ``limit`` bytes (the rest is drained so the client reads the 413)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        await _drain(request)
        raise content_too_large(declared, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            size += await _drain(request)
            raise content_too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _drain(request: web.Request) -> int:
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > _DRAIN_LIMIT:
            break
    return size


# -- running it ---------------------------------------------------------------------------------------------------


async def serve(settings: WorkspaceEmulatorSettings, announce: Callable[[dict[str, Any]], None] | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM (or ``stop`` is set). Writes ``server.json`` into the state dir once listening."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    emulator = Emulator(settings)
    tls = ensure_tls(settings.state_dir, [settings.host]) if settings.tls else None
    runner = web.AppRunner(emulator.app(), access_log=log if log.isEnabledFor(logging.DEBUG) else None,
                           handle_signals=False, auto_decompress=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=tls.server_context() if tls else None,
                       backlog=512)
    await site.start()
    # Everything alive now lives as long as the process: keep it out of the collector's full passes, which
    # otherwise walk every imported module's objects again and again while requests allocate rows.
    gc.freeze()
    port = _bound_port(runner, settings.port)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    info = {
        "endpoint": f"{'https' if tls else 'http'}://{host}:{port}",
        "port": port,
        "pid": os.getpid(),
        "ca_path": str(tls.ca.resolve()) if tls else None,
        "state_dir": str(settings.state_dir.resolve()),
        "database": str(emulator.store.path.resolve()),
        "dcrs": emulator.describe(),
    }
    info_path = settings.state_dir / SERVER_INFO
    tmp = info_path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(info, option=orjson.OPT_INDENT_2))
    tmp.replace(info_path)
    if announce:
        announce(info)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        info_path.unlink(missing_ok=True)
        await runner.cleanup()
        emulator.close()


def _bound_port(runner: web.AppRunner, configured: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return configured


def run(settings: WorkspaceEmulatorSettings, announce: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Blocking entry point (uvloop when available)."""
    try:
        import uvloop
    except ImportError:  # Windows
        asyncio.run(serve(settings, announce))
        return
    uvloop.run(serve(settings, announce))
