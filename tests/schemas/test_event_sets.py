"""Event sets against the connector pages themselves (the seed documents), and their AMA XPath rendering."""

from __future__ import annotations

import re

import pytest

from schemas.event_sets import (
    ALL_CHANNELS,
    APPLOCKER_IDS,
    EVENT_SETS,
    MAX_TERMS_PER_QUERY,
    ORDERED_IDS,
    event_set_xpath,
    in_event_set,
)
from tests.conftest import SEEDS

TABLE_ROW = re.compile(r"^\W*(?:\*\*)?(Minimal|Common)(?:\*\*)?\s*\|?\s*((?:\d+,\s*)+\d+)\s*\|?\s*$")
QUERY = re.compile(r"^(?P<channel>[^!]+)!\*\[System\[(?P<terms>.+)\]\]$")


def seed_lists() -> list[dict[str, list[int]]]:
    """Every seed document's "Event ID reference" table: set name -> IDs in the order written."""
    found = []
    for path in sorted(SEEDS.glob("*.txt")):
        lists: dict[str, list[int]] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            match = TABLE_ROW.match(line)
            if match:
                lists[match[1]] = [int(x) for x in re.findall(r"\d+", match[2])]
        found.append(lists)
    return found


def test_both_seed_documents_list_both_sets() -> None:
    lists = seed_lists()
    assert len(lists) == 2
    assert all(set(d) == {"Minimal", "Common"} for d in lists)
    assert lists[0] == lists[1]


@pytest.mark.parametrize(("name", "size"), [("Minimal", 39), ("Common", 143)])
def test_event_set_is_exactly_the_seed_list(name: str, size: int) -> None:
    for lists in seed_lists():
        assert list(ORDERED_IDS[name]) == lists[name]
        assert EVENT_SETS[name] == frozenset(lists[name])
    assert len(EVENT_SETS[name] or ()) == size == len(ORDERED_IDS[name])


def test_minimal_is_inside_common_and_all_and_none() -> None:
    assert (EVENT_SETS["Minimal"] or set()) <= (EVENT_SETS["Common"] or set())
    assert EVENT_SETS["All"] is None
    assert EVENT_SETS["None"] == frozenset()
    assert ALL_CHANNELS == ("Security", "Microsoft-Windows-AppLocker/EXE and DLL",
                            "Microsoft-Windows-AppLocker/MSI and Script")


def parse_queries(queries: list[str]) -> dict[str, list[int]]:
    by_channel: dict[str, list[int]] = {}
    for query in queries:
        match = QUERY.match(query)
        assert match, query
        terms = match["terms"].split(" or ")
        assert len(terms) <= MAX_TERMS_PER_QUERY
        ids = [int(re.fullmatch(r"\(EventID=(\d+)\)", term)[1]) for term in terms]  # type: ignore[index]
        by_channel.setdefault(match["channel"], []).extend(ids)
    return by_channel


@pytest.mark.parametrize("name", ["Minimal", "Common"])
def test_xpath_queries_cover_the_set_in_chunks_of_15(name: str) -> None:
    queries = event_set_xpath(name)
    by_channel = parse_queries(queries)
    applocker = {i for ids in APPLOCKER_IDS.values() for i in ids}
    seed = seed_lists()[0][name]
    assert set().union(*map(set, by_channel.values())) == set(seed)
    # Security queries keep the seed's order; Minimal leaves the AppLocker IDs to the AppLocker channels.
    expected_security = seed if name == "Common" else [i for i in seed if i not in applocker]
    assert by_channel["Security"] == expected_security
    assert by_channel["Microsoft-Windows-AppLocker/EXE and DLL"] == [8001, 8002, 8003, 8004]
    assert by_channel["Microsoft-Windows-AppLocker/MSI and Script"] == [8005, 8006, 8007]
    security_queries = [q for q in queries if q.startswith("Security!")]
    sizes = [len(q.split(" or ")) for q in security_queries]
    assert sizes == ([15] * 9 + [8] if name == "Common" else [15, 15, 2])


def test_xpath_for_all_and_none() -> None:
    assert event_set_xpath("All") == [f"{c}!*" for c in ALL_CHANNELS]
    assert event_set_xpath("None") == []
    with pytest.raises(KeyError, match="Recommended"):
        event_set_xpath("Recommended")


def test_in_event_set() -> None:
    assert in_event_set("Minimal", "Security", 4624)
    assert in_event_set("Minimal", "security", 4624)  # exporters that lower-case the channel
    assert not in_event_set("Minimal", "Security", 4634)
    assert in_event_set("Common", "Security", 4634)
    assert in_event_set("All", "Microsoft-Windows-AppLocker/MSI and Script", 1)
    assert not in_event_set("All", "System", 4624)
    assert not in_event_set("None", "Security", 4624)
