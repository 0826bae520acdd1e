"""Ground truth for the producer tests: the per-file record counts of the dev corpus (SOURCES.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import CORPUS


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    fmt: str
    records: int
    security_records: int


def read_sources_table(corpus: Path = CORPUS) -> list[CorpusFile]:
    """The "Files" table of SOURCES.md: file, repository, license, format, bytes, sha256, records, Security ..."""
    files = []
    for line in (corpus / "SOURCES.md").read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        files.append(CorpusFile(corpus / cells[0].strip("`"), cells[3], int(cells[6]), int(cells[7])))
    return files


@pytest.fixture(scope="session")
def corpus_files() -> list[CorpusFile]:
    files = read_sources_table()
    assert len(files) == 68, "SOURCES.md lists 68 files"
    return files
