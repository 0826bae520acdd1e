"""One lifecycle shape for every stage runner (producer, collector, stream, sink, replay).

A stage is an object with ``start()``, ``run_once() -> bool``, ``flush()`` and ``close()``. ``run_stage`` owns the
loop: it installs SIGTERM/SIGINT handlers, calls ``run_once`` until the stage says it is finished or a stop is
requested, and always ends with ``flush`` (make work durable, commit progress) then ``close``. Health endpoints
read ``StageState``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass
class StageState:
    """What /healthz and /readyz report. ``live`` turns False only when the stage is wedged or has failed."""

    name: str
    live: bool = True
    ready: bool = False
    detail: str = "starting"
    started_at: float = field(default_factory=time.time)
    last_progress: float = field(default_factory=time.time)

    def progressed(self) -> None:
        self.last_progress = time.time()


class Stage(Protocol):
    state: StageState

    def start(self) -> None: ...

    def run_once(self) -> bool:
        """Do one unit of work (one poll, one batch). Return False when a bounded stage has finished."""
        ...

    def flush(self) -> None:
        """Make everything done so far durable and commit progress. Called at checkpoints and at the end."""
        ...

    def close(self) -> None: ...


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGTERM/SIGINT while inside the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _handler(signum: int, _frame: object) -> None:
        log.info("received %s, stopping after the current batch", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, _handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_stage(
    stage: Stage,
    stop: threading.Event | None = None,
    checkpoint_seconds: float = 1.0,
    on_checkpoint: Callable[[], None] | None = None,
) -> None:
    """Run a stage to completion or until ``stop`` is set. Progress is flushed every ``checkpoint_seconds``."""
    stop = stop or threading.Event()
    with stop_on_signals(stop):
        stage.start()
        stage.state.ready = True
        stage.state.detail = "running"
        next_checkpoint = time.monotonic() + checkpoint_seconds
        try:
            while not stop.is_set():
                more = stage.run_once()
                if time.monotonic() >= next_checkpoint:
                    stage.flush()
                    if on_checkpoint:
                        on_checkpoint()
                    next_checkpoint = time.monotonic() + checkpoint_seconds
                if not more:
                    break
            stage.flush()
        except BaseException as exc:
            stage.state.live = False
            stage.state.detail = f"failed: {exc.__class__.__name__}"
            raise
        finally:
            stage.state.ready = False
            stage.close()
    stage.state.detail = "stopped"
