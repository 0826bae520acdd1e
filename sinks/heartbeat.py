"""Heartbeat-style rows in the workspace (off by default): one row per Computer that received rows, per summary.

The built-in ``Heartbeat`` table does not take the Logs Ingestion API, so the rows go to a custom stream of a DCR
(``status.heartbeat_stream``, e.g. ``Custom-SecstreamHeartbeat`` → table ``SecstreamHeartbeat_CL``) with the
Heartbeat columns a connector query uses (TimeGenerated, Computer, Category, Version, ComputerEnvironment; the
platform fills SourceSystem) plus what the sink knows (Destination, LastEventTime, RowsSinceLastHeartbeat). They
are written whenever the sink writes its per-Computer summaries (``secstream.status.StatusRecorder``), on a
background thread: a slow workspace delays heartbeats, never delivery.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import MutableMapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from azure.monitor.ingestion import LogsIngestionClient

from secstream.config import DestinationSettings, Settings
from secstream.status import iso_time
from sinks.service import build_credential

log = logging.getLogger(__name__)

CATEGORY = "secstream"


def _version() -> str:
    try:
        return version("secstream")
    except PackageNotFoundError:
        return "unknown"


def heartbeat_row(summary: dict[str, Any], now: float, software_version: str) -> dict[str, Any]:
    return {
        "TimeGenerated": iso_time(now),
        "Computer": summary["computer"],
        "Category": CATEGORY,
        "Version": software_version,
        "ComputerEnvironment": "Non-Azure",
        "Destination": summary["destination"],
        "LastEventTime": summary["last_time_generated"],
        "RowsSinceLastHeartbeat": summary["rows"],
    }


class HeartbeatWriter:
    """``StatusRecorder(..., on_emit=HeartbeatWriter(settings, destination))``; None when heartbeats are off."""

    def __init__(self, settings: Settings, destination: DestinationSettings) -> None:
        stream = settings.status.heartbeat_stream
        assert stream is not None
        self.stream = stream
        self.dcr = settings.status.heartbeat_dcr or destination.dcr_immutable_ids[0]
        self.version = _version()
        options: dict[str, Any] = {"retry_total": 2, "read_timeout": min(30.0, settings.sink.request_timeout_seconds)}
        if destination.ca_bundle is not None:
            options["connection_verify"] = str(destination.ca_bundle)
        # Plain http only for a local workspace: azure-core refuses bearer tokens over it otherwise.
        self._upload_options: dict[str, Any] = {}
        if destination.endpoint.startswith("http://"):
            self._upload_options["enforce_https"] = False
        self.client = LogsIngestionClient(destination.endpoint, build_credential(destination.credential), **options)
        self._busy = threading.Lock()
        self.rows_written = 0

    @classmethod
    def for_destination(cls, settings: Settings, destination: DestinationSettings) -> HeartbeatWriter | None:
        return cls(settings, destination) if settings.status.heartbeat_stream else None

    def __call__(self, summaries: list[dict[str, Any]]) -> None:
        if not summaries:
            return
        if not self._busy.acquire(blocking=False):
            log.debug("previous heartbeats still uploading; skipping %d", len(summaries))
            return
        rows: list[MutableMapping[str, Any]] = [heartbeat_row(s, time.time(), self.version) for s in summaries]
        threading.Thread(target=self._upload, args=(rows,), name="heartbeat", daemon=True).start()

    def _upload(self, rows: list[MutableMapping[str, Any]]) -> None:
        try:
            self.client.upload(rule_id=self.dcr, stream_name=self.stream, logs=rows, **self._upload_options)
            self.rows_written += len(rows)
        except Exception as exc:  # heartbeats are best effort
            log.warning("heartbeat rows to %s (%s) not written: %s", self.stream, self.dcr, exc.__class__.__name__)
        finally:
            self._busy.release()

    def wait(self, timeout: float = 30.0) -> bool:
        """Until the upload under way (if any) is done; True when none is left."""
        if self._busy.acquire(timeout=timeout):
            self._busy.release()
            return True
        return False
