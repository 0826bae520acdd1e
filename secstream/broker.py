"""The embedded single-node broker (noida-db, a Kafka-protocol broker shipped as a binary in its wheel).

Started as the binary itself, never through its Python console script: killing the wrapper would orphan the broker.
Always ``--only kafka --host <loopback>``; without ``--only`` it starts other databases on their default ports.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import AdminClient

PID_FILE = "broker.pid"
LOG_FILE = "broker.log"


class BrokerError(RuntimeError):
    pass


def binary_path() -> Path:
    try:
        import noida_db
    except ImportError:
        raise BrokerError("the embedded broker needs the noida-db package: pip install 'noida-db==0.2.3'") from None
    path = Path(noida_db.__file__).parent / "noida-db"
    if not path.is_file():
        raise BrokerError(f"noida-db binary not found at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def is_reachable(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when a metadata request succeeds."""
    try:
        AdminClient({"bootstrap.servers": bootstrap, "log_level": 0}).list_topics(timeout=timeout)
    except Exception:
        return False
    return True


@dataclass
class EmbeddedBroker:
    data_dir: Path
    port: int
    host: str = "127.0.0.1"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / PID_FILE

    def pid(self) -> int | None:
        """The PID of our running broker, or None (stale PID files are ignored)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        # A PID can be reused by an unrelated process; only count it if it is the broker binary.
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return pid
        return pid if b"noida-db" in cmdline else None

    def start(self, wait_seconds: float = 30.0) -> int:
        """Start in the background (idempotent); returns the PID once a metadata request succeeds."""
        running = self.pid()
        if running is not None:
            self._wait_ready(wait_seconds, running)
            return running
        if is_reachable(self.bootstrap, timeout=1.0):
            raise BrokerError(f"something else already answers on {self.bootstrap}; choose another broker.port")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(binary_path()), "start",
            "--data-dir", str(self.data_dir.resolve()),
            "--host", self.host,
            "--only", "kafka",
            "--kafka-port", str(self.port),
        ]
        with open(self.data_dir / LOG_FILE, "ab") as log:
            # Own session: a Ctrl-C in the terminal that started it must not kill the broker mid-snapshot.
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.pid_file.write_text(str(proc.pid))
        self._wait_ready(wait_seconds, proc.pid)
        return proc.pid

    def _wait_ready(self, wait_seconds: float, pid: int) -> None:
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            if is_reachable(self.bootstrap, timeout=1.0):
                return
            if not _alive(pid):
                tail = (self.data_dir / LOG_FILE).read_text(errors="replace")[-800:]
                raise BrokerError(f"broker exited during start; last log lines:\n{tail}")
            time.sleep(0.2)
        raise BrokerError(f"broker did not answer on {self.bootstrap} within {wait_seconds:.0f}s")

    def stop(self, wait_seconds: float = 30.0) -> bool:
        """SIGTERM (the broker writes its snapshot), then SIGKILL if it does not exit. False if it was not running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + wait_seconds
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL without a snapshot, for fault tests."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
            self.pid_file.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        # Reap it if it is our child, so a zombie does not look alive.
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
