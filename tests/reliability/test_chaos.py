"""Chaos over a running pipeline (``secstream`` processes): every source event lands exactly once.

``SECSTREAM_CHAOS=short`` uses a small subset of the dev corpus and one fault per wave; ``make reliability`` sets
``SECSTREAM_CHAOS=long``: every EVTX file of the corpus and every fault, twice. Not part of ``make test`` yet: a
kill -9 of the stream worker (at-least-once) can re-emit the batches it had not committed, and the workspace then
holds those rows twice (same EventOriginId); see docs/reliability.md.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from tests.reliability.chaos import (
    FAULTS,
    ChaosPipeline,
    ChaosPlan,
    ChaosResult,
    evtx_files,
    expected_rows,
    seed_event_set,
)

MODE = os.environ.get("SECSTREAM_CHAOS", "")
LONG = MODE == "long"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(3600 if LONG else 300),
    pytest.mark.skipif(MODE not in ("short", "long"), reason="chaos run: set SECSTREAM_CHAOS=short|long "
                       "(make reliability)"),
]


def chaos_input() -> tuple[list[Path], ChaosPlan]:
    files = evtx_files()
    if LONG:
        return files, ChaosPlan(waves=2 * len(FAULTS), faults=FAULTS, drain_timeout=600.0)
    # Small files that hold events of the Common set (several hosts), and omerbenamram's security.evtx twice
    # (security_bad_string_cache.evtx holds the same 2,261 records): the second copy must be deduplicated.
    common = seed_event_set("Common")
    chosen = [f for f in files if f.name in ("security.evtx", "security_bad_string_cache.evtx", "post-Security.evtx")]
    chosen += [f for f in files if f.stat().st_size < 100_000 and expected_rows([f], common)][:8]
    return chosen, ChaosPlan(waves=4, faults=["kill-stream", "restart-broker", "kill-sink", "kill-collector"],
                             drain_timeout=60.0)


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> ChaosResult:
    files, plan = chaos_input()
    result = ChaosPipeline(tmp_path_factory.mktemp("chaos"), plan).run(files)
    print(f"faults: {result.faults_applied}; stages that exited by themselves and were restarted: "
          f"{result.unplanned_exits or 'none'}")
    return result


def test_every_source_event_exactly_once(chaos: ChaosResult) -> None:
    got = Counter((r["Computer"], r["Channel"], int(r["EventRecordId"]), int(r["EventID"])) for r in chaos.rows)
    missing = chaos.expected - got
    extra = got - chaos.expected
    assert not missing and not extra, (
        f"faults {chaos.faults_applied}: {sum(missing.values())} missing (e.g. {list(missing)[:5]}), "
        f"{sum(extra.values())} extra or duplicated (e.g. {list(extra)[:5]})")


def test_event_origin_ids_are_unique(chaos: ChaosResult) -> None:
    ids = Counter(r["EventOriginId"] for r in chaos.rows)
    assert len(ids) == len(chaos.rows) == sum(chaos.expected.values())
    assert all(ids) and max(ids.values()) == 1


def test_counts_per_computer_and_event_id_match_the_corpus(chaos: ChaosResult) -> None:
    want = Counter((c, e) for (c, _, _, e) in chaos.expected.elements())
    got = Counter((r["Computer"], int(r["EventID"])) for r in chaos.rows)
    assert got == want


def test_every_rejected_input_is_dead_lettered_with_its_reason(chaos: ChaosResult) -> None:
    def reason(h: dict[str, str]) -> str:
        return h.get("secstream.reason") or h.get("reason") or ""

    assert all(reason(h) for h in chaos.dead_letters), [h for h in chaos.dead_letters if not reason(h)]
    # At least once: a stage killed before committing writes the same dead letter again on restart.
    distinct = {tuple(sorted(h.items())) for h in chaos.dead_letters}
    from_xml = {reason(h) for h in chaos.dead_letters if "planted.xml" in h.get("source", "")}
    assert len(from_xml) == 2 and all("EventID" in r for r in from_xml), from_xml
    undecodable = {h.get("secstream.source") for h in chaos.dead_letters
                   if h.get("secstream.stage") == "stream" and h.get("secstream.reason") == "undecodable"}
    assert undecodable == {"secstream.raw/0/0"} or len(undecodable) == 1, undecodable
    from_collector = {reason(h) for h in chaos.dead_letters if h.get("stage") == "collector"}
    assert len(from_collector) == 1 and "not" in next(iter(from_collector)), from_collector
    assert len(distinct) == chaos.planted_dead_letters, distinct


def test_no_secret_in_any_log(chaos: ChaosResult) -> None:
    assert chaos.logs and all(len(s) > 16 for s in chaos.secrets)
    for name, text in chaos.logs.items():
        for secret in chaos.secrets:
            assert secret not in text, f"a secret appears in the {name} log"
