"""Run pipeline stages as ``secstream`` subprocesses, exactly as a user would: the demo, the end-to-end benchmark and
the chaos suite share this.

    with ExitStack() as stack:
        config = write_config(state / "config.yaml", {...})
        create_topics(config)
        stream = stack.enter_context(StageProcess("stream", ["stream"], config, state))
        stream.kill()      # SIGKILL: what a crash looks like
        stream.start()     # the same command again, appending to the same log

Each process has its own log file (stdout and stderr) under ``log_dir``; CPU time and peak RSS are read from
``/proc`` (Linux) for the process and its children.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import yaml

REPO = Path(__file__).resolve().parent.parent
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def secstream_command(config: Path, args: list[str], log_level: str = "info") -> list[str]:
    return [sys.executable, "-m", "secstream.cli", "--config", str(config), "--log-level", log_level, *args]


def create_topics(config: Path) -> None:
    subprocess.run(secstream_command(config, ["topics", "create"], "warning"), check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)


class StageProcess:
    """One ``secstream`` process with its log file; can be stopped, killed and started again."""

    def __init__(self, name: str, args: list[str], config: Path, log_dir: Path, *,
                 env: dict[str, str] | None = None, log_level: str = "info", start: bool = True) -> None:
        self.name = name
        self.args = args
        self.config = config
        self.log_path = log_dir / f"{name}.log"
        self.env = env or {}
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._log: IO[bytes] | None = None
        self._cpu_of_finished = 0.0  # CPU seconds of earlier incarnations (after kill/restart)
        if start:
            self.start()

    def start(self) -> StageProcess:
        if self.running():
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed in stop()/kill()
        env = {**os.environ, "SECSTREAM_CONFIG": str(self.config), **self.env}
        self.process = subprocess.Popen(secstream_command(self.config, self.args, self.log_level),
                                        stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                        start_new_session=True)
        self.starts += 1
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a clean shutdown: flush and checkpoint), SIGKILL after ``timeout``."""
        if self.running():
            assert self.process is not None
            self._cpu_of_finished += self.cpu_seconds(current_only=True)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_group()
        self._close_log()

    def kill(self) -> None:
        """SIGKILL to the whole process group, no clean shutdown."""
        if self.running():
            self._cpu_of_finished += self.cpu_seconds(current_only=True)
            self._kill_group()
        self._close_log()

    def _kill_group(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> StageProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- resources (Linux /proc) -------------------------------------------------------------------------------

    def pids(self) -> list[int]:
        """The process and its descendants."""
        if not self.running():
            return []
        assert self.process is not None
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry.name))
        out, todo = [], [self.process.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, []))
        return out

    def cpu_seconds(self, current_only: bool = False) -> float:
        """User + system CPU of the running process tree, plus that of earlier incarnations."""
        total = 0.0 if current_only else self._cpu_of_finished
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime
        return total

    def peak_rss_bytes(self) -> int:
        """Peak resident set (VmHWM) summed over the running process tree."""
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                continue
        return total
