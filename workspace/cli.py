"""``secstream workspace serve|query|stats|token``: the local Logs Ingestion API and its tables."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from secstream import clikit
from secstream.config import WorkspaceEmulatorSettings

# The emulator's modules (aiohttp, cryptography, jwt) load inside the commands: `secstream` starts fast.

workspace_app = typer.Typer(help="Local Logs Ingestion API emulator with a queryable SecurityEvent store.",
                            no_args_is_help=True)


def _settings(ctx: typer.Context, **updates: Any) -> WorkspaceEmulatorSettings:
    ws = clikit.settings(ctx).workspace
    changed = {k: v for k, v in updates.items() if v is not None}
    return WorkspaceEmulatorSettings.model_validate(ws.model_dump() | changed) if changed else ws


def _announce(info: dict[str, Any]) -> None:
    out = clikit.console
    out.print(f"Logs Ingestion API emulator listening on [bold]{info['endpoint']}[/]",
              highlight=False, soft_wrap=True)
    if info["ca_path"]:
        out.print(f"CA certificate: {info['ca_path']}  (clients: connection_verify=<this path>)",
                  highlight=False, soft_wrap=True)
    for dcr in info["dcrs"]:
        out.print(f"DCR {dcr['immutable_id']} ({dcr['name']}): streams {', '.join(dcr['streams'])} -> "
                  f"tables {', '.join(dcr['tables'])}", highlight=False, soft_wrap=True)
    out.print(f"store: {info['database']}; bearer token: secstream workspace token", highlight=False, soft_wrap=True)


@workspace_app.command("serve")
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="listen address (default from settings)")] = None,
    port: Annotated[int | None, typer.Option(help="listen port; 0 = any free port")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="where the store, CA and token key live")] = None,
    dcr_dir: Annotated[Path | None, typer.Option(help="directory of ARM DCR JSON files")] = None,
    accept_any_token: Annotated[bool, typer.Option("--accept-any-token",
                                                   help="accept any bearer token (local use only)")] = False,
) -> None:
    """Serve the ingestion endpoint until interrupted."""
    from secstream.telemetry import setup_telemetry, shutdown_telemetry
    from workspace.dcr import DcrError
    from workspace.server import run

    settings = _settings(ctx, host=host, port=port, state_dir=state_dir, dcr_dir=dcr_dir,
                         accept_any_token=accept_any_token or None)
    setup_telemetry(clikit.settings(ctx).telemetry, "secstream-workspace")
    try:
        run(settings, _announce)
    except DcrError as exc:
        clikit.fail_config(str(exc))
    except OSError as exc:
        clikit.fail(f"cannot serve on {settings.host}:{settings.port}: {exc.strerror or exc}")
    finally:
        shutdown_telemetry()


@workspace_app.command("token")
def token(
    ctx: typer.Context,
    ttl: Annotated[int | None, typer.Option(help="lifetime in seconds (default from settings)")] = None,
    audience: Annotated[str, typer.Option(help="token audience")] = "https://monitor.azure.com",
) -> None:
    """Print a bearer token the emulator accepts (signed with the state dir's key)."""
    from workspace.auth import issue_token, signing_secret

    ws = _settings(ctx)
    value, _ = issue_token(signing_secret(ws.state_dir), ttl or ws.token_ttl_seconds, audience)
    print(value)


def _reader(ctx: typer.Context) -> sqlite3.Connection:
    from workspace.store import open_reader

    try:
        return open_reader(_settings(ctx).state_dir)
    except FileNotFoundError as exc:
        clikit.fail(str(exc))


def _print_table(title: str, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    table = Table(title=title, show_lines=False)
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*("" if v is None else str(v) for v in r))
    clikit.console.print(table)


@workspace_app.command("query")
def query(
    ctx: typer.Context,
    sql: Annotated[str, typer.Argument(help='e.g. "SELECT Computer, EventID FROM SecurityEvent LIMIT 10"')],
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per row")] = False,
    limit: Annotated[int, typer.Option(help="print at most this many rows")] = 200,
) -> None:
    """Run a read-only SQL query against the emulated workspace."""
    from workspace.store import run_query

    db = _reader(ctx)
    try:
        columns, rows = run_query(db, sql)
    except sqlite3.Error as exc:
        clikit.fail(f"query failed: {exc}")
    shown = rows[:limit]
    if as_json:
        for r in shown:
            print(orjson.dumps(dict(zip(columns, r, strict=True))).decode())
        return
    _print_table(f"{len(rows)} row(s)" + (f", first {limit} shown" if len(rows) > limit else ""), columns, shown)


@workspace_app.command("stats")
def stats(ctx: typer.Context) -> None:
    """Rows per EventID, last data received per Computer, and the DCR metrics."""
    from workspace.store import run_query

    db = _reader(ctx)
    try:
        cols, rows = run_query(db, "SELECT EventID, Activity, count(*) AS Rows FROM SecurityEvent "
                                   "GROUP BY EventID ORDER BY Rows DESC")
        _print_table("SecurityEvent rows per EventID", cols, rows)
        cols, rows = run_query(db, "SELECT Computer, count(*) AS Rows, max(TimeGenerated) AS LastTimeGenerated, "
                                   "max(_TimeReceived) AS LastReceived FROM SecurityEvent GROUP BY Computer "
                                   "ORDER BY LastReceived DESC")
        _print_table("Last data received per Computer", cols, rows)
        cols, rows = run_query(db, "SELECT DcrImmutableId, InputStreamId, Metric, Value, LastUpdated FROM "
                                   "DCRMetrics ORDER BY DcrImmutableId, InputStreamId, Metric")
        _print_table("DCR metrics", cols, rows)
    except sqlite3.Error as exc:
        clikit.fail(f"stats failed: {exc}")
