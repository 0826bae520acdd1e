"""RawEvents read from the EVTX files of the dev corpus (real Windows events), for the streams tests and bench."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from evtx import PyEvtxParser

from producers.adapters.event_xml import EventXmlError, parse_event_xml

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "dev"


def evtx_files() -> list[Path]:
    return sorted(CORPUS.rglob("*.evtx"))


def events_of(path: Path) -> Iterator[dict[str, Any]]:
    provenance = {"source_format": "evtx", "agent_id": "", "read_time_us": 1_700_000_000_000_000,
                  "collector_id": None, "source_ref": str(path)}
    for record in PyEvtxParser(str(path)).records():
        if not record:
            continue
        try:
            yield parse_event_xml(record["data"], provenance)
        except EventXmlError:
            continue  # a damaged record (the producer tests account for these)


@lru_cache(maxsize=1)
def corpus_events() -> tuple[dict[str, Any], ...]:
    """Every readable record of every EVTX file of the dev corpus (a few thousand events)."""
    out: list[dict[str, Any]] = []
    for path in evtx_files():
        try:
            out.extend(events_of(path))
        except (RuntimeError, OSError):
            continue  # the corpus holds deliberately damaged samples; the producer tests cover them
    return tuple(out)
