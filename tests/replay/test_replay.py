"""Replays against the real broker, the real sink and the workspace emulator: complete, bounded, never twice."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka.admin import AdminClient
from typer.testing import CliRunner

from schemas.codec import decode_security_batch, encode_raw_batch
from schemas.event_sets import ALL_CHANNELS, EVENT_SETS
from secstream.cli import app
from secstream.config import Settings
from secstream.kafka import client_config
from secstream.offsets import Position, committed_offsets, set_committed_offsets
from secstream.replay.core import compile_rules
from secstream.replay.runner import make_plan, replay_group, run_replay
from sinks.runner import group_id
from streams.dedup import Deduper
from streams.identity import event_origin_id
from streams.normalize import normalize_batch
from streams.processing import BatchProcessor
from tests.replay.helpers import (
    encoded_raw,
    now_ms,
    produce,
    produce_security,
    raw_batches,
    row_ids,
    run_live_sink,
    security_batches,
    stored_counts,
)
from tests.sinks.helpers import end_offsets, read_topic

pytestmark = pytest.mark.integration


def hosts_of(batches: list[dict[str, Any]]) -> set[str]:
    return {b["computer"] for b in batches}


def rows_in(batches: list[dict[str, Any]]) -> int:
    return sum(len(b["rows"]) for b in batches)


def test_outage_window_is_backfilled_once_and_live_groups_never_move(sink_settings: Settings,
                                                                     workspace_emulator: Any) -> None:
    s = sink_settings
    destination = s.destinations[0]
    prefix = uuid.uuid4().hex[:8]
    before = security_batches(prefix, 60)
    produce_security(s, before)
    run_live_sink(s)
    # The workspace is unreachable; events keep flowing into Kafka.
    during = security_batches(prefix, 90)
    produce_security(s, during)
    # The sink comes back with its group moved to the end (the operator skipped the backlog to restore latency).
    admin = AdminClient(client_config(s.kafka))
    live_group = group_id(s, destination)
    set_committed_offsets(admin, live_group, s.topics.normalized, end_offsets(s))
    after = security_batches(prefix, 30)
    produce_security(s, after)
    run_live_sink(s)
    everything = before + during + after
    assert set(stored_counts(workspace_emulator, hosts_of(everything))) == row_ids(before + after)
    live_offsets = committed_offsets(admin, live_group)

    plan = make_plan(s, "normalized", Position.parse("earliest"), None, None, destination, None, "outage")
    dry = run_replay(s, plan, dry=True)
    real = run_replay(s, plan, dry=False)

    stored = stored_counts(workspace_emulator, hosts_of(everything))
    assert set(stored) == row_ids(everything)  # complete
    assert max(stored.values()) == 1  # no duplicate rows
    assert real.sent == dry.sent == rows_in(during)
    assert real.counts.already_delivered == rows_in(before) + rows_in(after)
    assert dry.counts.by_partition == real.counts.by_partition
    assert dry.counts.by_event_id == Counter(r["EventID"] for b in during for r in b["rows"])
    assert committed_offsets(admin, live_group) == live_offsets  # the live group did not move
    replay_offsets = committed_offsets(admin, replay_group(s, "outage"))
    assert replay_offsets == {(s.topics.normalized, r.partition): r.end for r in plan.ranges if r.size}

    # The replay recorded its own deliveries: running it again sends nothing.
    again = run_replay(s, make_plan(s, "normalized", Position.parse("earliest"), None, None, destination, None,
                                    "outage-again"), dry=False)
    assert again.sent == 0 and again.counts.already_delivered == rows_in(everything)
    assert max(stored_counts(workspace_emulator, hosts_of(everything)).values()) == 1


def test_replay_stops_at_to_and_the_cli_reports_it(sink_settings: Settings, workspace_emulator: Any,
                                                   tmp_path: Path) -> None:
    s = sink_settings
    prefix = uuid.uuid4().hex[:8]
    inside = security_batches(prefix, 40)
    produce_security(s, inside)
    time.sleep(0.05)
    boundary = now_ms()
    time.sleep(0.05)
    outside = security_batches(prefix, 40)
    produce_security(s, outside)
    to = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(boundary / 1000)) + f".{boundary % 1000:03d}Z"
    config = tmp_path / "secstream.yaml"
    config.write_text(yaml.safe_dump(s.model_dump(mode="json") | {"destinations": [workspace_emulator.destination(
        "primary")]}))

    result = CliRunner().invoke(app, ["--config", str(config), "replay", "--topic", "normalized", "--from", "earliest",
                                      "--to", to, "--name", "bounded", "--yes"])
    assert result.exit_code == 0, result.output
    assert "sent (accepted)" in result.output

    stored = stored_counts(workspace_emulator, hosts_of(inside + outside))
    assert set(stored) == row_ids(inside) and max(stored.values()) == 1
    admin = AdminClient(client_config(s.kafka))
    assert sum(committed_offsets(admin, replay_group(s, "bounded")).values()) == len(inside)


def test_an_unknown_destination_is_a_configuration_error(sink_settings: Settings, tmp_path: Path) -> None:
    config = tmp_path / "secstream.yaml"
    config.write_text(yaml.safe_dump(sink_settings.model_dump(mode="json")))
    result = CliRunner().invoke(app, ["--config", str(config), "replay", "--topic", "normalized", "--from",
                                      "earliest", "--destination", "nope", "--yes"])
    assert result.exit_code == 2
    assert "unknown destination 'nope'" in result.output


def common_or_minimal(name: str) -> list[dict[str, Any]]:
    return [{"name": name.lower(), "computers": ["*"], "event_set": name}]


def test_raw_replay_with_wider_rules_adds_only_the_new_events(sink_settings: Settings, workspace_emulator: Any,
                                                               tmp_path: Path) -> None:
    s = sink_settings
    destination = s.destinations[0]
    prefix = uuid.uuid4().hex[:8]
    batches = raw_batches(prefix, 600)
    produce(s, s.topics.raw, encoded_raw(batches))
    # The live stream stage ran with Minimal: the same per-message function, its output on the normalized topic.
    live = BatchProcessor(compile_rules(common_or_minimal("Minimal")))
    dedup = Deduper()
    normalized: list[tuple[bytes, bytes]] = []
    for b in batches:
        out = live.process(encode_raw_batch(b), b["host"].encode(), dedup, "raw")
        normalized.extend((b["host"].encode(), value) for value in out.values)
    half = len(normalized) // 2
    produce(s, s.topics.normalized, normalized[:half])
    delivered_live = run_live_sink(s).totals["rows_accepted"]
    produce(s, s.topics.normalized, normalized[half:])  # the sink is down for the second half

    rules_file = tmp_path / "common.yaml"
    rules_file.write_text(yaml.safe_dump({"rules": common_or_minimal("Common")}))
    plan = make_plan(s, "raw", Position.parse("earliest"), None, None, destination, str(rules_file), "common")
    assert len(plan.live_behind) == 1 and "the sink" in plan.live_behind[0]  # it has the second half still to do
    dry = run_replay(s, plan, dry=True)
    real = run_replay(s, plan, dry=False)

    events = [e for b in batches for e in b["events"]]
    common = [e for e in events if e["channel"] in ALL_CHANNELS and e["event_id"] in (EVENT_SETS["Common"] or ())]
    _rows, rejected = normalize_batch(common)
    expected = {event_origin_id(e) for e in common} - {event_origin_id(e) for e, _ in rejected}
    stored = stored_counts(workspace_emulator, {b["host"] for b in batches})
    assert set(stored) == expected
    assert max(stored.values()) == 1
    assert delivered_live > 0 and real.counts.already_delivered == delivered_live
    assert real.sent == dry.sent == len(expected) - delivered_live
    assert real.counts.by_event_id == dry.counts.by_event_id

    # A second raw replay with the same rules rebuilds what the first sent and sends nothing.
    again = run_replay(s, make_plan(s, "raw", Position.parse("earliest"), None, None, destination, str(rules_file),
                                    "common-again"), dry=False)
    assert again.sent == 0
    # The operator skips the sink's backlog; a normalized replay of the window then knows what the raw replays sent.
    set_committed_offsets(AdminClient(client_config(s.kafka)), group_id(s, destination), s.topics.normalized,
                          end_offsets(s))
    rows_after_live = sum(len(decode_security_batch(value)["rows"]) for _, value in normalized[half:])
    normalized_replay = run_replay(s, make_plan(s, "normalized", Position.parse("earliest"), None, None, destination,
                                                None, "normalized-after-raw"), dry=False)
    assert normalized_replay.sent == 0
    assert normalized_replay.counts.already_delivered == delivered_live + rows_after_live
    assert max(stored_counts(workspace_emulator, {b["host"] for b in batches}).values()) == 1


def test_a_fatal_sink_error_ends_the_replay_with_the_sinks_message(sink_settings: Settings,
                                                                   workspace_emulator: Any, tmp_path: Path) -> None:
    s = sink_settings
    produce_security(s, security_batches(uuid.uuid4().hex[:8], 10))
    bad = workspace_emulator.destination("primary")
    bad["credential"] = {"mode": "emulator", "token": "not-a-token"}
    config = tmp_path / "secstream.yaml"
    config.write_text(yaml.safe_dump(s.model_dump(mode="json") | {"destinations": [bad]}))
    result = CliRunner().invoke(app, ["--config", str(config), "replay", "--topic", "normalized", "--from", "earliest",
                                      "--yes"])
    assert result.exit_code == 3, result.output
    assert "401" in result.output and "credential" in result.output


def test_what_the_live_sink_will_still_deliver_is_left_to_it(sink_settings: Settings,
                                                             workspace_emulator: Any) -> None:
    s = sink_settings
    prefix = uuid.uuid4().hex[:8]
    before = security_batches(prefix, 30)
    produce_security(s, before)
    run_live_sink(s)
    during = security_batches(prefix, 30)  # the sink is down; its group stays where it was
    produce_security(s, during)

    plan = make_plan(s, "normalized", Position.parse("earliest"), None, None, s.destinations[0], None, "early")
    assert sum(plan.left_to_live.values()) == len(during)
    assert run_replay(s, plan, dry=False).sent == 0
    run_live_sink(s)  # the sink comes back and catches up by itself
    stored = stored_counts(workspace_emulator, hosts_of(before + during))
    assert set(stored) == row_ids(before + during) and max(stored.values()) == 1


def test_a_dry_run_of_some_partitions_counts_only_those_and_sends_nothing(sink_settings: Settings,
                                                                          workspace_emulator: Any,
                                                                          tmp_path: Path) -> None:
    s = sink_settings
    batches = security_batches(uuid.uuid4().hex[:8], 60, rows_per_batch=6)
    produce_security(s, batches)
    messages = read_topic(s, s.topics.normalized)
    # Three hosts over three partitions may leave one empty: replay a partition that holds data.
    chosen = messages[0].partition()
    assert chosen is not None
    in_chosen = [m for m in messages if m.partition() == chosen]
    expected = Counter(r["EventID"] for m in in_chosen for r in decode_security_batch(m.value() or b"")["rows"])
    assert in_chosen

    plan = make_plan(s, "normalized", Position.parse("earliest"), None, [chosen], s.destinations[0], None, "dry")
    dry = run_replay(s, plan, dry=True)
    assert dry.counts.by_partition == {chosen: sum(expected.values())}
    assert dry.counts.by_event_id == expected
    config = tmp_path / "secstream.yaml"
    config.write_text(yaml.safe_dump(s.model_dump(mode="json") | {"destinations": [workspace_emulator.destination(
        "primary")]}))
    result = CliRunner().invoke(app, ["--config", str(config), "replay", "--topic", "normalized", "--from", "0",
                                      "--partitions", str(chosen), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "per EventID" in result.output and f"{sum(expected.values()):,}" in result.output
    assert stored_counts(workspace_emulator, hosts_of(batches)) == {}
