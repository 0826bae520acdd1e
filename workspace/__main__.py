"""``python -m workspace [--config F] [--set k=v] serve|query|stats|token``: the ``secstream workspace`` commands
without loading every other stage's command (starts faster; used by ``workspace.testing``)."""

from __future__ import annotations

from typing import Annotated

import typer

from secstream import clikit
from workspace.cli import workspace_app

main = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                   context_settings={"help_option_names": ["-h", "--help"]})


@main.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[str | None, typer.Option("--config", "-c", envvar="SECSTREAM_CONFIG",
                                               help="YAML settings file")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="override a setting: key.path=value")] = [],  # noqa: B006
    log_level: Annotated[str, typer.Option("--log-level")] = "warning",
) -> None:
    clikit.setup_logging(log_level)
    ctx.obj = clikit.build_state(config, set_, None)


main.add_typer(workspace_app)

if __name__ == "__main__":
    main(prog_name="python -m workspace")
