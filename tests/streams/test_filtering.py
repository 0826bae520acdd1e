"""Event sets and XPath rules per machine group, against the connector's own lists (the seeds) and real events."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from schemas.event_sets import ALL_CHANNELS, event_set_xpath
from secstream.config import RuleSettings
from streams.filtering import KEEP_NOTHING, RuleError, RuleSet
from tests.streams.corpus_events import corpus_events

SEEDS = Path(__file__).resolve().parents[2].parent / "shared" / "seeds"


def seed_event_sets() -> dict[str, set[int]]:
    """The Minimal and Common ID lists, read from the connector page's own table."""
    text = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(SEEDS.glob("*.txt")))
    sets: dict[str, set[int]] = {}
    for name in ("Minimal", "Common"):
        m = re.search(rf"\|\s*\*\*{name}\*\*\s*\|([\d,\s]+)\|", text)
        assert m, f"{name} row not found in the seeds"
        sets[name] = {int(n) for n in re.findall(r"\d+", m.group(1))}
    return sets


def ev(event_id: int, channel: str = "Security", **more: Any) -> dict[str, Any]:
    return {"event_id": event_id, "channel": channel, "level": 0, "keywords": "0x8020000000000000",
            "provider_name": "Microsoft-Windows-Security-Auditing", "time_created": 0, "event_data": [], **more}


def one_rule(**fields: Any) -> RuleSet:
    return RuleSet.compile([RuleSettings(name="r", **fields)])


PROBE_IDS = range(0, 70_000)


@pytest.mark.parametrize("name", ["Minimal", "Common"])
def test_event_sets_keep_exactly_the_seed_ids_on_every_connector_channel(name: str) -> None:
    expected = seed_event_sets()[name]
    rule = one_rule(event_set=name).rule_for("any-host")
    for channel in ALL_CHANNELS:
        kept = {i for i in PROBE_IDS if rule.keep(ev(i, channel))}
        assert kept == expected, channel
    assert not any(rule.keep(ev(i, "System")) for i in expected)


def test_event_set_all_takes_every_event_of_the_three_channels_and_nothing_else() -> None:
    rule = one_rule(event_set="All").rule_for("h")
    assert all(rule.keep(ev(i, c)) for c in ALL_CHANNELS for i in (0, 1, 4624, 8002, 65535))
    assert not rule.keep(ev(4624, "Application"))
    assert not rule.keep(ev(4624, "Microsoft-Windows-Sysmon/Operational"))


def test_event_set_none_takes_nothing() -> None:
    rule = one_rule(event_set="None").rule_for("h")
    assert rule.keeps_nothing
    assert rule.filter([ev(i, c) for c in ALL_CHANNELS for i in (1102, 4624)]) == []


def test_channel_names_compare_case_insensitively() -> None:
    # NXLog exports spell the channel "security".
    rule = one_rule(event_set="Minimal").rule_for("h")
    assert rule.keep(ev(4624, "security")) and rule.keep(ev(4624, "SECURITY"))


@pytest.mark.parametrize("name", ["All", "Common", "Minimal", "None"])
def test_event_set_queries_select_the_same_corpus_events_as_the_set(name: str) -> None:
    events = corpus_events()
    by_set = one_rule(event_set=name).filter_batch("h", events)
    queries = event_set_xpath(name)
    by_xpath = (one_rule(xpath=queries).filter_batch("h", events) if queries else [])
    assert [id(e) for e in by_xpath] == [id(e) for e in by_set]


def test_minimal_on_the_corpus_keeps_the_seed_ids_of_the_security_channel() -> None:
    events = corpus_events()
    minimal = seed_event_sets()["Minimal"]
    expected = Counter(e["event_id"] for e in events
                       if e["channel"].casefold() in {c.casefold() for c in ALL_CHANNELS}
                       and e["event_id"] in minimal)
    kept = Counter(e["event_id"] for e in one_rule(event_set="Minimal").filter_batch("h", events))
    assert kept == expected
    assert sum(kept.values()) > 100  # the corpus holds 4624, 4688, 1102, 4720...


def test_first_matching_group_wins_and_the_default_group_comes_last() -> None:
    rules = RuleSet.compile([
        RuleSettings(name="default", computers=["*"], event_set="Minimal"),
        RuleSettings(name="domain-controllers", computers=["DC*", "*.dc.corp"], event_set="All"),
        RuleSettings(name="kiosks", computers=["KIOSK-??"], event_set="None"),
        RuleSettings(name="dc-too", computers=["dc1*"], event_set="Common"),
    ])
    assert rules.rule_for("DC1.corp.example").name == "domain-controllers"
    assert rules.rule_for("dc1.corp.example").name == "domain-controllers"
    assert rules.rule_for("ad01.dc.corp").name == "domain-controllers"
    assert rules.rule_for("KIOSK-07").name == "kiosks"
    assert rules.rule_for("KIOSK-007").name == "default"
    assert rules.rule_for("ws-042").name == "default"
    assert rules.rule_for("ws-042") is rules.rule_for("ws-042")  # cached


def test_a_computer_no_rule_matches_keeps_nothing() -> None:
    rules = RuleSet.compile([RuleSettings(name="dcs", computers=["DC*"], event_set="All")])
    assert rules.rule_for("ws-1") is KEEP_NOTHING
    assert rules.filter_batch("ws-1", [ev(4624)]) == []


def test_event_set_and_queries_of_one_rule_add_up() -> None:
    rule = one_rule(event_set="Minimal", xpath=[
        "Security!*[System[(EventID=4634)]]",
        "System!*[System[Provider[@Name='Service Control Manager'] and EventID=7045]]",
    ]).rule_for("h")
    assert rule.keep(ev(4624)) and rule.keep(ev(4634))
    assert rule.keep(ev(7045, "System", provider_name="Service Control Manager"))
    assert not rule.keep(ev(7045, "System", provider_name="Other"))
    assert not rule.keep(ev(4672))


def test_filter_batch_keeps_order_and_objects() -> None:
    rules = RuleSet.compile([RuleSettings(name="r", xpath=["Security!*[System[EventID=4624 or EventID=4625]]"])])
    batch = [ev(4624, event_record_id=1), ev(4672), ev(4625, event_record_id=3), ev(4624, "Application")]
    assert rules.filter_batch("h", batch) == [batch[0], batch[2]]


def test_query_list_rules_apply_their_suppress() -> None:
    rule = one_rule(xpath=[
        '<QueryList><Query Id="0"><Select Path="Security">*[System[(EventID=4624)]]</Select>'
        "<Suppress Path=\"Security\">*[EventData[Data[@Name='LogonType']='5']]</Suppress></Query></QueryList>",
    ]).rule_for("h")
    assert rule.keep(ev(4624, event_data=[{"name": "LogonType", "value": "3"}]))
    assert not rule.keep(ev(4624, event_data=[{"name": "LogonType", "value": "5"}]))


@pytest.mark.parametrize(
    "query",
    ["Security!*[System[EventID=]]", "Security*[System[EventID=1]]",
     "Security!*[System[" + " or ".join(f"EventID={i}" for i in range(21)) + "]]"],
)
def test_invalid_query_is_a_configuration_error_naming_the_rule(query: str) -> None:
    with pytest.raises(RuleError) as info:
        RuleSet.compile([
            RuleSettings(name="fine", event_set="Common"),
            RuleSettings(name="broken-dcs", computers=["DC*"], xpath=["Security!*", query]),
        ])
    assert "rule 'broken-dcs', query 2" in str(info.value)
