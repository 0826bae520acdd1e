"""The single entry point: help for every registered command."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from secstream.cli import app


def test_root_help_lists_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("broker", "topics", "config"):
        assert name in result.output


def test_every_command_has_help() -> None:
    runner = CliRunner()
    for group in app.registered_groups:
        assert group.name is not None
        result = runner.invoke(app, [group.name, "--help"])
        assert result.exit_code == 0, (group.name, result.output)
        assert "Usage" in result.output


def test_console_script_runs() -> None:
    proc = subprocess.run([sys.executable, "-m", "secstream.cli", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "secstream" in proc.stdout
