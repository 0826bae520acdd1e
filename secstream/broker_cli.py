"""``secstream broker start|stop|status``: the embedded broker for laptops, demos and tests."""

from __future__ import annotations

import typer

from secstream import clikit
from secstream.broker import BrokerError, EmbeddedBroker, is_reachable

broker_app = typer.Typer(help="Run the embedded single-node Kafka broker (noida-db).", no_args_is_help=True)


def _broker(ctx: typer.Context) -> EmbeddedBroker:
    b = clikit.settings(ctx).broker
    return EmbeddedBroker(data_dir=b.data_dir, port=b.port, host=b.host)


@broker_app.command("start")
def start(ctx: typer.Context) -> None:
    """Start the broker in the background and wait until it answers."""
    broker = _broker(ctx)
    try:
        pid = broker.start()
    except BrokerError as exc:
        clikit.fail(str(exc))
    clikit.console.print(f"broker running on [bold]{broker.bootstrap}[/] (pid {pid}, data in {broker.data_dir})")


@broker_app.command("stop")
def stop(ctx: typer.Context) -> None:
    """Stop the broker (it saves its data first)."""
    broker = _broker(ctx)
    if broker.stop():
        clikit.console.print("broker stopped")
    else:
        clikit.console.print("broker was not running")


@broker_app.command("status")
def status(ctx: typer.Context) -> None:
    """Say whether the broker runs and answers; exit 1 when it does not answer."""
    broker = _broker(ctx)
    pid = broker.pid()
    reachable = is_reachable(broker.bootstrap)
    clikit.console.print(
        f"pid: {pid if pid else 'not running'}; {broker.bootstrap}: {'reachable' if reachable else 'unreachable'}"
    )
    if not reachable:
        raise typer.Exit(1)
