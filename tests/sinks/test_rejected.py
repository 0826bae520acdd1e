"""A permanent 4xx: the refused request's rows and the response go to the dead-letter topic; the rest arrives.

The workspace emulator cannot be made to refuse a well-formed payload for good, so this test puts a minimal
HTTP endpoint behind the real SDK that answers the service's 400 error shape to the first request.
"""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from secstream.config import Settings
from secstream.lifecycle import run_stage
from sinks.runner import SinkStage
from tests.sinks.helpers import origin_ids, produce_rows, read_topic

pytestmark = pytest.mark.integration

ERROR = {"error": {"code": "InvalidPayload", "message": "Records time range is more than 30 minutes."}}


class RefuseFirst(BaseHTTPRequestHandler):
    accepted: ClassVar[list[dict]] = []
    refused = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = gzip.decompress(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            refuse = RefuseFirst.refused == 0
            if refuse:
                RefuseFirst.refused += 1
            else:
                RefuseFirst.accepted.extend(json.loads(body))
        if refuse:
            payload = json.dumps(ERROR).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("x-ms-error-code", ERROR["error"]["code"])
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        else:
            self.send_response(204)
            self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_endpoint() -> Iterator[str]:
    RefuseFirst.accepted, RefuseFirst.refused = [], 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), RefuseFirst)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_refused_request_is_dead_lettered_with_the_response_and_nothing_else_is_lost(
        sink_settings: Settings, refusing_endpoint: str) -> None:
    destination = {"name": "primary", "endpoint": refusing_endpoint, "dcr_immutable_ids": ["dcr-" + "a" * 32],
                   "credential": {"mode": "emulator", "token": "local"}}
    s = Settings(**{**sink_settings.model_dump(mode="python", exclude={"destinations", "sink"}),
                    "destinations": [destination],
                    "sink": {**sink_settings.sink.model_dump(), "max_request_bytes": 50_000, "max_in_flight": 1}})
    batches = produce_rows(s, 600, 60)
    stage = SinkStage(s, s.destinations[0], idle_exit_seconds=1.5)
    run_stage(stage, checkpoint_seconds=0.5)

    (record,) = read_topic(s, s.topics.dead_letter)
    headers = dict(record.headers() or [])
    assert headers["secstream.reason"] == b"rejected"
    assert headers["secstream.http.status"] == b"400"
    assert headers["secstream.error.code"] == b"InvalidPayload"
    assert headers["secstream.error"] == ERROR["error"]["message"].encode()
    assert headers["secstream.dcr"] == b"dcr-" + b"a" * 32
    assert headers["secstream.request.id"]
    refused = json.loads(gzip.decompress(record.value() or b""))
    sources = headers["secstream.source"].decode().split(",")  # type: ignore[union-attr]
    assert sum(int(src.rsplit(":", 1)[1]) for src in sources) == len(refused)

    # every row is either in the workspace or in the dead letter, exactly once
    arrived = [r["EventOriginId"] for r in RefuseFirst.accepted] + [r["EventOriginId"] for r in refused]
    assert sorted(arrived) == sorted(origin_ids(batches))
    assert stage.totals["rows_dead_lettered"] == len(refused) > 0
    assert stage.totals["rows_accepted"] == 600 - len(refused)
