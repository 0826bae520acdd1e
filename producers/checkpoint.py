"""What has been delivered, per source, and the state file that keeps it across restarts.

Events of one source are spread over several host batches, and batches are acknowledged in any order. The
tracker cuts each source's reading into *segments* (a run of consecutive events); a batch records how many events
of each segment it carries. A source's checkpoint moves to the end of a segment once that segment and every
earlier one have no event left unacknowledged. So the checkpoint never passes an undelivered event, and after a
crash at most the batches in flight (plus the open batches) are read and sent again.

The state file is written atomically (temporary file, fsync, rename, fsync of the folder) and only ever holds
delivered positions.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE_VERSION = 1


@dataclass(eq=False)
class Segment:
    source: str
    last_position: int | None = None
    outstanding: int = 0
    closed: bool = False


class ProgressTracker:
    """Per-source delivered positions, advanced by batch acknowledgements."""

    def __init__(self, committed: dict[str, int] | None = None, segment_events: int = 512) -> None:
        self.committed: dict[str, int] = dict(committed or {})
        self._segments: dict[str, deque[Segment]] = {}
        self._current: dict[str, Segment] = {}
        self._segment_events = segment_events
        self._count: dict[str, int] = {}
        self.changed = False

    def read(self, source: str, position: int, sent: bool) -> Segment | None:
        """Record that the event at ``position`` was read. Returns the segment to mark the event's batch with,
        or None when the event will not be sent (filtered out or unreadable): it is done as soon as read."""
        segment = self._segment(source, 1)
        segment.last_position = position
        if sent:
            segment.outstanding += 1
            return segment
        self._advance(source)
        return None

    def read_many(self, source: str, last_position: int, sent: int) -> Segment:
        """Record that ``sent`` consecutive events up to ``last_position`` were read, all to be sent (part of a
        chunk going to one batch). Returns the segment to mark the batch with, once per event."""
        segment = self._segment(source, sent)
        segment.last_position = last_position
        segment.outstanding += sent
        return segment

    def _segment(self, source: str, events: int) -> Segment:
        """The segment that ``events`` more read events belong to."""
        segment = self._current.get(source)
        if segment is None or segment.closed or self._count[source] >= self._segment_events:
            if segment is not None:
                segment.closed = True
            segment = Segment(source)
            self._current[source] = segment
            self._segments.setdefault(source, deque()).append(segment)
            self._count[source] = 0
        self._count[source] += events
        return segment

    @staticmethod
    def seal(marks: dict[Any, int]) -> None:
        """A batch carrying these segments is being sent: later events start new segments, so the checkpoint
        can move batch by batch instead of waiting for a whole segment."""
        for segment in marks:
            segment.closed = True

    def source_done(self, source: str) -> None:
        """The source has no more events for now (end of file)."""
        segment = self._current.pop(source, None)
        if segment is not None:
            segment.closed = True
            self._advance(source)

    def delivered(self, marks: dict[Any, int]) -> None:
        """A batch was acknowledged: its events no longer hold back their segments."""
        sources = set()
        for segment, count in marks.items():
            segment.outstanding -= count
            sources.add(segment.source)
        for source in sources:
            self._advance(source)

    def _advance(self, source: str) -> None:
        queue = self._segments.get(source)
        while queue:
            head = queue[0]
            if head.outstanding > 0:
                return
            if head.last_position is not None:
                self.committed[source] = head.last_position
                self.changed = True
            if not head.closed:
                return  # the segment being read: its position counts, but it stays for more events
            queue.popleft()

    def pending_events(self) -> int:
        return sum(s.outstanding for q in self._segments.values() for s in q)


@dataclass
class ProducerState:
    """The content of the state file."""

    positions: dict[str, int] = field(default_factory=dict)
    next_sequence: int = 0
    bookmarks: dict[str, str] = field(default_factory=dict)


def load_state(path: Path) -> ProducerState:
    """The saved state; empty when there is no file yet. A damaged file is an error, never silently reset."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return ProducerState()
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"producer state file {path} is unreadable ({exc}); move it away to start over") from None
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        raise ValueError(f"producer state file {path}: unknown version {data.get('version')!r}")
    return ProducerState(
        positions={str(k): int(v) for k, v in data.get("positions", {}).items()},
        next_sequence=int(data.get("next_sequence", 0)),
        bookmarks={str(k): str(v) for k, v in data.get("bookmarks", {}).items()},
    )


def save_state(path: Path, state: ProducerState) -> None:
    """Atomic replace: a crash leaves either the old or the new file, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({
        "version": STATE_VERSION,
        "positions": state.positions,
        "next_sequence": state.next_sequence,
        "bookmarks": state.bookmarks,
    }, indent=1, sort_keys=True).encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
