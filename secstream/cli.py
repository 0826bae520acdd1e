"""The ``secstream`` command: one entry point for every stage."""

from __future__ import annotations

from typing import Annotated

import typer

from producers.cli import collect, produce
from schemas.cli import schemas_app
from secstream import clikit
from secstream.broker_cli import broker_app
from secstream.groups_cli import groups_app
from secstream.replay.cli import replay
from secstream.status_cli import status
from secstream.topics_cli import topics_app
from sinks.cli import sink
from streams.cli import stream
from workspace.cli import workspace_app

app = typer.Typer(
    name="secstream",
    help="Carry Windows security events through Kafka into the Sentinel SecurityEvent table.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[str | None, typer.Option("--config", "-c", envvar="SECSTREAM_CONFIG",
                                               help="YAML settings file")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="override a setting: key.path=value (repeatable)")] = [],  # noqa: B006
    bootstrap_servers: Annotated[str | None, typer.Option("--bootstrap-servers", "-b",
                                                          help="Kafka bootstrap servers")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning, error")] = "warning",
) -> None:
    clikit.setup_logging(log_level)
    ctx.obj = clikit.build_state(config, set_, bootstrap_servers)


app.add_typer(broker_app, name="broker")
app.add_typer(topics_app, name="topics")
app.add_typer(workspace_app, name="workspace")
app.add_typer(groups_app, name="groups")
app.add_typer(schemas_app, name="schemas")
app.command("stream")(stream)
app.command("sink")(sink)
app.command("produce")(produce)
app.command("collect")(collect)
app.command("status")(status)
app.command("replay")(replay)


@app.command("config")
def show_config(ctx: typer.Context) -> None:
    """Print the effective settings (secrets masked)."""
    import yaml

    s = clikit.settings(ctx)
    clikit.console.print(yaml.safe_dump(s.model_dump(mode="json"), sort_keys=False), highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
