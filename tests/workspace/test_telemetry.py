"""The emulator's own telemetry: one counter add per request through the OpenTelemetry API."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from secstream.config import WorkspaceEmulatorSettings
from secstream.telemetry import InMemoryMetrics
from workspace.auth import issue_token, signing_secret
from workspace.server import Emulator

DCR = "dcr-5ec57ea3000000000000000000000001"


def test_requests_rows_and_drops_are_counted(tmp_path: Path) -> None:
    emulator = Emulator(WorkspaceEmulatorSettings(state_dir=tmp_path))
    token = issue_token(signing_secret(tmp_path))[0]
    rows = [{"TimeGenerated": "2026-01-01T00:00:00Z", "Computer": "h", "Bogus": 1}] * 3

    async def scenario() -> list[int]:
        server = TestServer(emulator.app())
        await server.start_server(auto_decompress=False)  # as serve() runs it: gzip is the emulator's job
        async with TestClient(server) as client:
            statuses = []
            for auth in (f"Bearer {token}", "Bearer nope"):
                reply = await client.post(f"/dataCollectionRules/{DCR}/streams/Custom-SecurityEvent",
                                          params={"api-version": "2023-01-01"}, data=gzip.compress(
                                              json.dumps(rows).encode()),
                                          headers={"Authorization": auth, "Content-Encoding": "gzip",
                                                   "Content-Type": "application/json"})
                statuses.append(reply.status)
            return statuses

    with InMemoryMetrics() as recorded:
        try:
            assert asyncio.run(scenario()) == [204, 401]
        finally:
            emulator.close()
        assert recorded.value("secstream.workspace.requests", dcr=DCR, status=204) == 1
        assert recorded.value("secstream.workspace.requests", dcr=DCR, status=401) == 1
        assert recorded.value("secstream.workspace.rows_received", dcr=DCR) == 3
        assert recorded.value("secstream.workspace.columns_dropped", dcr=DCR) == 3
