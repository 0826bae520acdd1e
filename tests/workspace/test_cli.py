"""``secstream workspace serve|query|stats|token`` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from secstream.cli import app
from workspace.auth import TokenVerifier, signing_secret
from workspace.dcr import DEFAULT_DCR_DIR
from workspace.testing import WorkspaceEmulator

runner = CliRunner()


def run(state_dir: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["--set", f"workspace.state_dir={state_dir}", "workspace", *args])
    return result.exit_code, result.output


def unwrapped(text: str) -> str:
    """Rich wraps long lines at the terminal width."""
    return " ".join(text.split())


def test_token_is_accepted_by_the_server_key(tmp_path: Path) -> None:
    code, out = run(tmp_path, "token")
    assert code == 0
    TokenVerifier(signing_secret(tmp_path)).check(f"Bearer {out.strip()}")


def test_serve_refuses_an_unsupported_transform_with_exit_2(tmp_path: Path) -> None:
    dcr = json.loads((DEFAULT_DCR_DIR / "securityevent.json").read_text())
    dcr["properties"]["dataFlows"][0]["transformKql"] = "source | project-away EventData"
    (tmp_path / "dcrs").mkdir()
    (tmp_path / "dcrs" / "rule.json").write_text(json.dumps(dcr))
    code, out = run(tmp_path / "state", "serve", "--port", "0", "--dcr-dir", str(tmp_path / "dcrs"))
    assert code == 2
    out = unwrapped(out)
    assert "rule.json" in out and "source | project-away EventData" in out and "not supported" in out


def test_query_and_stats_on_a_store_with_data(tmp_path: Path) -> None:
    with WorkspaceEmulator(tmp_path / "state") as ws:
        assert f"CA certificate: {ws.ca_path}" in ws.log_tail()
        rows = [{"TimeGenerated": "2026-01-01T00:00:00Z", "Computer": "dc1", "EventID": 4624,
                 "Activity": "4624 - An account was successfully logged on."}] * 3
        rows += [{"Computer": "ws7", "EventID": 4688}]
        ws.client().upload(ws.dcr_immutable_id, ws.stream_name, rows)
        code, out = run(ws.state_dir, "query", "--json",
                        "SELECT Computer, EventID, count(*) AS n FROM SecurityEvent GROUP BY 1, 2 ORDER BY 1")
        assert code == 0
        assert [json.loads(line) for line in out.splitlines()] == [
            {"Computer": "dc1", "EventID": 4624, "n": 3}, {"Computer": "ws7", "EventID": 4688, "n": 1}]
        code, out = run(ws.state_dir, "query", "SELECT Computer FROM SecurityEvent WHERE EventID = 4688")
        assert code == 0 and "ws7" in out and "1 row(s)" in out
        code, out = run(ws.state_dir, "stats")
        assert code == 0
        assert "4624 - An account was successfully logged on." in out and "dc1" in out and "rows_received" in out


@pytest.mark.parametrize("sql", ["SELECT nope FROM SecurityEvent", "DELETE FROM SecurityEvent"])
def test_query_errors_and_writes_are_refused(tmp_path: Path, sql: str) -> None:
    with WorkspaceEmulator(tmp_path / "state") as ws:
        code, out = run(ws.state_dir, "query", sql)
    assert code == 1 and "query failed" in unwrapped(out)


def test_query_without_a_store_says_so(tmp_path: Path) -> None:
    code, out = run(tmp_path, "query", "SELECT 1")
    assert code == 1 and "no workspace store" in unwrapped(out)
