"""kill -9 of the sink process in the middle of uploading, then a restart: nothing lost, duplicates bounded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from secstream.config import Settings
from sinks.request_builder import serialise_row
from tests.sinks.helpers import origin_ids, produce_rows, stored_counts
from workspace.testing import WorkspaceEmulator

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def sink_process(config: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECSTREAM_")}
    return subprocess.Popen([sys.executable, "-m", "secstream.cli", "--config", str(config), "sink", *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_kill_9_mid_upload_then_restart_loses_nothing(
        sink_settings: Settings, workspace_emulator: WorkspaceEmulator, tmp_path: Path) -> None:
    total, max_in_flight, request_bytes = 15_000, 4, 150_000
    config = tmp_path / "sink.yaml"
    config.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": sink_settings.kafka.bootstrap_servers},
        "topics": sink_settings.topics.model_dump(mode="json"),
        "destinations": [workspace_emulator.destination("primary")],
        # static membership: the restarted sink takes the killed one's place at once (the embedded broker never
        # expires a member that died without leaving the group)
        # row progress committed as each request finishes: only requests in flight at the kill may come twice
        "sink": {"max_in_flight": max_in_flight, "max_request_bytes": request_bytes, "checkpoint_seconds": 0.5,
                 "progress_commit_interval_ms": 0,
                 "group_instance_id": "sink-0", "group_prefix": sink_settings.sink.group_prefix},
    }))
    batches = produce_rows(sink_settings, total, 200)
    expected = origin_ids(batches)

    # slow answers keep requests in flight, so the kill lands in the middle of uploads
    with workspace_emulator.faults(rate_slow=0.5, slow_seconds=0.4, seed=7):
        first = sink_process(config)
        deadline = time.monotonic() + 90
        stored = 0
        while time.monotonic() < deadline and stored < total // 3:
            assert first.poll() is None, first.stdout.read().decode() if first.stdout else ""
            time.sleep(0.1)
            stored = sum(stored_counts(workspace_emulator, batches).values())
        assert total // 3 <= stored < total, "the sink finished (or stalled) before it could be killed mid-upload"
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)

    second = sink_process(config, "--until-idle", "2")
    output, _ = second.communicate(timeout=180)
    assert second.returncode == 0, output.decode()

    counts = stored_counts(workspace_emulator, batches)
    assert len(set(counts)) == len(expected), f"{len(expected) - len(set(counts))} rows missing"
    assert set(counts) == expected  # every row present; nothing unknown
    duplicates = sum(counts.values()) - total
    # only what was in flight at the kill may arrive twice (same EventOriginId): the requests being uploaded, plus
    # at most one that had finished while its commit was still on the wire
    smallest_row = min(len(serialise_row(r)[0]) for b in batches for r in b["rows"])
    most_rows_per_request = request_bytes // (smallest_row + 1)
    assert duplicates <= (max_in_flight + 1) * most_rows_per_request, duplicates
    print(f"kill -9 at {stored} of {total} rows stored; {duplicates} rows sent twice after restart")
    assert all(n >= 1 for n in counts.values())
