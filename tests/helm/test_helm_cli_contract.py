"""Every command line the chart renders parses with the real `secstream` CLI: subcommands, flags, required
arguments. Parsing only (click's make_context): nothing runs."""

from __future__ import annotations

from typing import Any

import pytest
import typer

from secstream.cli import app
from tests.helm.chart import CHART, Helm, pod_spec, workloads

FULL = CHART / "ci" / "full-values.yaml"

# Stages whose command line the chart renders ahead of the CLI: strict, so this turns red once they parse and the
# mark must go.
NOT_YET: dict[str, str] = {}
COMPONENTS = ["collector", "stream", "sink-main", "sink-soc-archive", "topics", "backfill", "producer"]


class Mismatch(Exception):
    """The CLI refuses a rendered command line (unknown command or flag, missing argument)."""


def parse(argv: list[str]) -> Any:
    """Parse like `secstream argv...` would, down to the leaf subcommand, and return its context.

    Typer bundles its own copy of click, so commands and errors are recognised by shape: a group has
    ``resolve_command``, a usage error has exit code 2."""
    command: Any = typer.main.get_command(app)
    try:
        ctx = command.make_context("secstream", list(argv))
        while hasattr(command, "resolve_command"):
            # What the group left unparsed is the subcommand name followed by its own arguments.
            rest = argv[len(argv) - len(ctx.args) - 1:]
            name, sub, args = command.resolve_command(ctx, rest)
            ctx = sub.make_context(name, args, parent=ctx)
            command, argv = sub, args
    except Exception as exc:
        if getattr(exc, "exit_code", None) == 2 and hasattr(exc, "format_message"):
            raise Mismatch(exc.format_message()) from None
        raise
    return ctx


@pytest.fixture(scope="module")
def command_lines(helm: Helm) -> dict[str, list[str]]:
    docs = helm.template([FULL])
    out: dict[str, list[str]] = {}
    for w in workloads(docs):
        container: dict[str, Any] = pod_spec(w)["containers"][0]
        assert container["command"] == ["secstream"]
        out[w["metadata"]["labels"]["app.kubernetes.io/component"]] = container["args"]
    return out


def test_every_stage_is_covered(command_lines: dict[str, list[str]]) -> None:
    assert set(command_lines) == set(COMPONENTS)


@pytest.mark.parametrize(
    "component",
    [pytest.param(c, marks=pytest.mark.xfail(reason=NOT_YET[c], raises=Mismatch, strict=True))
     if c in NOT_YET else c for c in COMPONENTS],
)
def test_command_line_parses(command_lines: dict[str, list[str]], component: str) -> None:
    ctx = parse(command_lines[component])
    assert ctx.find_root().params["log_level"] == "info"


def test_a_wrong_flag_is_caught() -> None:
    with pytest.raises(Mismatch, match="--destinatio"):
        parse(["--log-level", "info", "sink", "--destinatio", "main"])
    with pytest.raises(Mismatch, match="sinks"):
        parse(["--log-level", "info", "sinks"])
    with pytest.raises(Mismatch, match="create"):
        parse(["--log-level", "info", "topics", "creat"])
