"""What every subcommand shares: the loaded settings, clean configuration errors, the console."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Any, NoReturn

import typer
from rich.console import Console

from secstream.config import ConfigError, Settings, load_settings, parse_overrides

console = Console()
err_console = Console(stderr=True)

EXIT_CONFIG = 2


@dataclass
class CliState:
    config_path: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    _settings: Settings | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings(self.config_path, self.overrides)
            except ConfigError as exc:
                fail_config(str(exc))
        return self._settings


def fail_config(message: str) -> NoReturn:
    """Print a configuration problem and exit 2, without a traceback."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(EXIT_CONFIG)


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def state(ctx: typer.Context) -> CliState:
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    return root.obj


def settings(ctx: typer.Context) -> Settings:
    return state(ctx).settings()


def build_state(config: str | None, set_: list[str], bootstrap_servers: str | None) -> CliState:
    try:
        overrides = parse_overrides(set_)
    except ConfigError as exc:
        fail_config(str(exc))
    if bootstrap_servers:
        overrides.setdefault("kafka", {})["bootstrap_servers"] = bootstrap_servers
    return CliState(config_path=config, overrides=overrides)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
