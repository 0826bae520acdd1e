"""Our SecurityEvent rows against the real rows the Microsoft agents wrote (``securityevent-golden``)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest

from schemas.event_data import pairs
from streams.normalize import native_available, normalize_event
from tests.streams.golden import (
    EXCEPTIONS,
    FILES,
    GoldenResult,
    compare_file,
    golden_rows,
    mismatch_table,
    run_golden,
    summary,
)


def _with_pairs(normalise: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """``normalise`` given the EventData items as (name, value) tuples, the form the stream stage decodes."""

    def normalise_pairs(raw: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return normalise({**raw, "event_data": list(pairs(raw["event_data"]))}, **kwargs)

    return normalise_pairs


@pytest.fixture(scope="module", params=["python", "native", "python, pairs", "native, pairs"])
def golden(request: pytest.FixtureRequest) -> GoldenResult:
    """Every golden check runs on both normalisers, the Python reference and the C extension, and on both forms of
    EventData items (dicts, and the tuples the stream stage decodes)."""
    native = request.param.startswith("native")
    if native and not native_available():
        pytest.skip("streams._normalize is not built")
    normalise = functools.partial(normalize_event, native=native)
    return run_golden(_with_pairs(normalise) if request.param.endswith("pairs") else normalise)


def test_every_golden_row_matches_column_by_column(golden: GoldenResult) -> None:
    print("\n" + summary(golden))
    assert not golden.mismatches, mismatch_table(golden)


def test_every_golden_file_was_read(golden: GoldenResult) -> None:
    # 12 files, 1,570 rows, of which 3 belong to other tables (MANIFEST).
    assert set(golden.rows) == set(FILES)
    assert sum(golden.rows.values()) == 1567


def test_rows_with_event_data_xml_are_rebuilt_from_their_xml(golden: GoldenResult) -> None:
    # MANIFEST: XML in 23 (msticpy all_events_df) + 37 (Log4Shell) + 31 (asim userManagement) rows.
    with_xml = sum(
        1 for file in FILES if file.endswith(".jsonl") for row in golden_rows(file) if row.get("EventData")
    )
    assert with_xml == 23 + 37 + 31


def test_every_documented_exception_is_still_needed(golden: GoldenResult) -> None:
    unused = [rule for rule in EXCEPTIONS if golden.exceptions_used[rule] == 0]
    assert not unused, f"exceptions that match no cell any more: {unused}"


def test_the_comparison_catches_a_wrong_row() -> None:
    """The harness must fail when the normaliser is wrong: drop one derived column and break the XML line ends."""

    def damaged(raw: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        row = normalize_event(raw, **kwargs)
        row.pop("TargetAccount", None)
        if "EventData" in row:
            row["EventData"] = row["EventData"].replace("\r\n", "\n")
        return row

    result = GoldenResult()
    compare_file("msticpy/all_events_df.jsonl", result, normalise=damaged)
    columns = {m[3] for m in result.mismatches}
    assert columns == {"TargetAccount", "EventData"}
