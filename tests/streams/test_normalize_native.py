"""The C row builder (``streams._normalize``) against the Python normaliser, which stays the reference.

Both must give the same rows, key for key and in the same key order, and the same dead-letter reasons: on every
event of the dev corpus, on the golden rows (``test_normalize_golden`` runs on both), and on mangled events (odd
field names, missing fields, values of the wrong type, huge and non-ASCII values, extreme times, both agent
flavours). Also: the C path really runs (events it hands back are counted), refuses bad arguments, and leaks
nothing. With ``SECSTREAM_REQUIRE_NATIVE_NORMALIZE=1`` (``make test``) a missing extension is a failure.
"""

from __future__ import annotations

import copy
import gc
import json
import os
import random
import sys
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.event_data import pairs
from streams import normalize
from streams.identity import content_fingerprint, event_origin_id, identity_key, uuid5_string
from streams.normalize import NormalizeContext, normalize_batch, normalize_event
from tests.streams import golden
from tests.streams.corpus_events import corpus_events

REQUIRED = os.environ.get("SECSTREAM_REQUIRE_NATIVE_NORMALIZE", "") == "1"

pytestmark = pytest.mark.skipif(not normalize.native_available() and not REQUIRED,
                                reason=f"streams._normalize is not built: {normalize.NATIVE_IMPORT_ERROR}")

CONTEXTS = (NormalizeContext(), NormalizeContext(management_group_name="AOI-0b3e1c3a",
                                                 mg="00000000-0000-0000-0000-000000000001"))


def test_extension_loads_when_required() -> None:
    """``make test`` sets SECSTREAM_REQUIRE_NATIVE_NORMALIZE=1: this fails if streams._normalize did not build."""
    if not REQUIRED:
        pytest.skip("SECSTREAM_REQUIRE_NATIVE_NORMALIZE is not set")
    assert normalize.native_available(), normalize.NATIVE_IMPORT_ERROR


def both(events: list[Any], flavour: str, context: NormalizeContext = CONTEXTS[0],
         origin_ids: list[str] | None = None) -> tuple[Any, Any]:
    """(rows, rejected) of each path, or ("raised", type, message) when the batch raised."""
    out: list[Any] = []
    for native in (False, True):
        try:
            out.append(normalize_batch(events, flavour=flavour, context=context, origin_ids=origin_ids,
                                       native=native))
        except Exception as exc:  # e.g. OverflowError for a time past year 9999, the same on both paths
            out.append(("raised", type(exc), str(exc)))
    return out[0], out[1]


def assert_same(python: Any, native: Any) -> None:
    if python[0] == "raised" or native[0] == "raised":
        assert native == python
        return
    (rows_py, rejected_py), (rows_c, rejected_c) = python, native
    assert len(rows_c) == len(rows_py)
    for row_py, row_c in zip(rows_py, rows_c, strict=True):
        assert list(row_c.items()) == list(row_py.items())  # same values, same key order
        for key, value in row_py.items():
            assert type(row_c[key]) is type(value), key
    assert [(id(event), reason) for event, reason in rejected_c] == [(id(e), r) for e, r in rejected_py]


def handed_back(events: list[Any], flavour: str = "ama") -> int:
    """How many events the C code left to the Python code."""
    return normalize._native_rows(events, flavour, CONTEXTS[0], None)[1]


# ----------------------------------------------------------------------------------------------- real events


@pytest.mark.parametrize("flavour", ["ama", "mma"])
@pytest.mark.parametrize("context", CONTEXTS, ids=["no-context", "management-group"])
def test_every_corpus_event_gives_the_same_row(flavour: str, context: NormalizeContext) -> None:
    events = list(corpus_events())
    assert len(events) > 5000
    assert_same(*both(events, flavour, context))


def test_only_userdata_events_leave_the_c_path() -> None:
    events = list(corpus_events())
    userdata_only = sum(1 for e in events if e["user_data_xml"] and not e["event_data"])
    assert handed_back(events) == userdata_only < len(events) // 10


@pytest.mark.parametrize("flavour", ["ama", "mma"])
def test_event_data_pairs_give_the_rows_of_dicts_on_both_paths(flavour: str) -> None:
    """The stream stage decodes EventData items as (name, value) tuples: both paths give the rows the Python
    reference gives for the dict form, and the C path keeps them (no more events handed back)."""
    events = list(corpus_events())
    paired = [{**e, "event_data": list(pairs(e["event_data"]))} for e in events]

    def outcome(batch: list[Any], native: bool) -> tuple[list[Any], list[tuple[int, str]]]:
        position = {id(event): at for at, event in enumerate(batch)}
        rows, rejected = normalize_batch(batch, flavour=flavour, native=native)
        return [list(row.items()) for row in rows], [(position[id(event)], reason) for event, reason in rejected]

    reference = outcome(events, native=False)
    assert outcome(paired, native=False) == reference
    assert outcome(paired, native=True) == reference
    assert handed_back(paired, flavour) == handed_back(events, flavour)


def test_golden_rows_are_built_by_the_extension() -> None:
    """test_normalize_golden runs on both paths; on the native one, only the 10 UserData rows use the Python code."""
    handed: list[int] = []

    def counting(raw: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        handed.append(handed_back([raw], kwargs.get("flavour", "ama")))
        return normalize_event(raw, native=True, **kwargs)

    result = golden.run_golden(counting)
    assert not result.mismatches
    assert len(handed) == 1567
    assert sum(handed) == 10


def test_events_with_keys_that_are_not_interned_give_the_same_rows() -> None:
    """Decoded events share interned keys; events read from JSON do not, and are looked up key by key."""
    events = json.loads(json.dumps(list(corpus_events())[:400]))
    assert_same(*both(events, "ama"))
    assert handed_back(events) == sum(1 for e in events if e["user_data_xml"] and not e["event_data"])


def test_given_origin_ids_are_used_as_they_are() -> None:
    events = list(corpus_events())[:300]
    ids = [event_origin_id(e) for e in events]
    python, native = both(events, "ama", origin_ids=ids)
    assert_same(python, native)
    assert [row["EventOriginId"] for row in native[0]] == ids
    fake = [f"id-{i}" for i in range(len(events))]
    assert_same(*both(events, "ama", origin_ids=fake))


@given(computer=st.text(max_size=40), channel=st.text(max_size=40),
       record=st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.text(max_size=30)),
       ticks=st.integers(min_value=-(2**63), max_value=2**63 - 1))
@settings(max_examples=300, deadline=None)
def test_origin_id_is_identity_uuid5(computer: str, channel: str, record: int | str, ticks: int) -> None:
    native = normalize._native
    assert native is not None
    try:
        expected = uuid5_string(identity_key((computer, channel, record, ticks)))
    except UnicodeEncodeError:  # lone surrogates: the Python code refuses them, the C code hands them back
        assert native.origin_id(computer, channel, record, ticks) is None
        return
    assert native.origin_id(computer, channel, record, ticks) == expected


def test_events_without_record_id_use_the_content_fingerprint() -> None:
    event = copy.deepcopy(next(e for e in corpus_events() if e["event_data"]))
    event["event_record_id"] = None
    row = normalize_event(event, native=True)
    assert row["EventOriginId"] == uuid5_string(identity_key(
        (event["computer"], event["channel"], content_fingerprint(event), event["time_created"])))
    assert handed_back([event]) == 0


# ----------------------------------------------------------------------------------------------- mangled events

ODD_TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "&", "<a>", "x>y", "%s", "%%", '"q"', "'", "é", "中文", "😀", "\u0100", "\ud800", "-", "0",
                     "0x", "0X1f", " 12 ", "1_000", "١٢", "12abc", "{bd2dda1b-862a-504f-2260-d9d2ed316e26}",
                     "BD2DDA1B-862A-504F-2260-D9D2ED316E26", "S-1-5-18", "SYSTEM", "host$", "a\\b\\", "\\"]),
)
COLUMN_NAMES = sorted(normalize.DATA_COLUMNS)
FIELD_NAME = st.one_of(st.sampled_from(COLUMN_NAMES), ODD_TEXT, st.none(), st.sampled_from(
    ["EventData", "Account", "Computer", "TimeGenerated", "Data Name", "a&b", "x<y", "q\"uote", "pct%s"]))
ANY_VALUE = st.one_of(st.none(), ODD_TEXT, st.integers(), st.booleans(), st.floats(allow_nan=False),
                      st.just(["list"]), st.just({"a": 1}))


@st.composite
def mangled(draw: st.DrawFn) -> dict[str, Any]:
    event = copy.deepcopy(draw(st.sampled_from(corpus_events())))
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["rename", "value", "huge", "drop_item", "dup_item", "field", "del_field",
                                       "event_data", "provenance", "user_data", "times", "ids"]))
        listed = event["event_data"] if isinstance(event.get("event_data"), list) else []
        items = [item for item in listed if isinstance(item, dict)]
        if action == "rename" and items:
            draw(st.sampled_from(items))["name"] = draw(FIELD_NAME)
        elif action == "value" and items:
            draw(st.sampled_from(items))["value"] = draw(st.one_of(ODD_TEXT, st.none(), ANY_VALUE))
        elif action == "huge" and items:
            draw(st.sampled_from(items))["value"] = draw(st.sampled_from(["A", "é", "中", "&"])) * 50_000
        elif action == "drop_item" and listed:
            del listed[draw(st.integers(0, len(listed) - 1))]
        elif action == "dup_item" and items:
            listed.append(dict(draw(st.sampled_from(items))))
        elif action == "field":
            key = draw(st.sampled_from(sorted(event)))
            event[key] = draw(ANY_VALUE)
        elif action == "del_field":
            del event[draw(st.sampled_from(sorted(event)))]
        elif action == "event_data":
            event["event_data"] = draw(st.sampled_from([None, [], (), [{"name": "x"}], [{"value": "y"}],
                                                        [("SubjectUserName", "a")], "text"]))
        elif action == "provenance":
            event["provenance"] = draw(st.one_of(ANY_VALUE, st.fixed_dictionaries({}, optional={
                "read_time_us": st.one_of(st.integers(min_value=-(2**64), max_value=2**64), st.none(), ODD_TEXT),
                "agent_id": st.one_of(ODD_TEXT, st.none(), st.integers())})))
        elif action == "user_data":
            event["user_data_xml"] = draw(st.sampled_from([
                None, "", "<UserData><A>1</A></UserData>", "<broken", "<UserData><FilePath>C:\\x.exe</FilePath>"
                "<TargetLogonId>0x1</TargetLogonId></UserData>"]))
        elif action == "times":
            event["time_created"] = draw(st.one_of(
                st.integers(min_value=-(2**70), max_value=2**70),
                st.sampled_from([0, 2_534_023_007_999_999_999, 2_534_023_008_000_000_000, -1])))
        elif action == "ids":
            event[draw(st.sampled_from(["event_id", "event_record_id", "level", "opcode", "task"]))] = draw(
                st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from(
                    [4624, 4625, 4688, 4740, 4776, 1102, 8002, 4656, 0, 255, 256, 65535, 2**31])))
    return event


@given(events=st.lists(mangled(), min_size=1, max_size=6), flavour=st.sampled_from(["ama", "mma"]),
       context=st.sampled_from(CONTEXTS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_mangled_events_give_the_same_rows_and_reasons(events: list[dict[str, Any]], flavour: str,
                                                      context: NormalizeContext) -> None:
    assert_same(*both(events, flavour, context))


@given(names=st.lists(FIELD_NAME, min_size=1, max_size=8), values=st.lists(ODD_TEXT, min_size=8, max_size=8),
       event_id=st.sampled_from([4624, 4625, 4688, 4663, 4740, 4776, 5145, 4656, 4672]),
       flavour=st.sampled_from(["ama", "mma"]))
@settings(max_examples=300, deadline=None)
def test_odd_field_lists_give_the_same_rows(names: list[str | None], values: list[str], event_id: int,
                                            flavour: str) -> None:
    event = copy.deepcopy(next(e for e in corpus_events() if e["event_data"]))
    event["event_id"] = event_id
    event["event_data"] = [{"name": n, "value": v} for n, v in zip(names, values, strict=False)]
    assert_same(*both([event], flavour))


def test_the_comparison_sees_a_difference() -> None:
    """assert_same must fail on a changed value and on a changed key order."""
    python, native = both(list(corpus_events())[:5], "ama")
    changed = copy.deepcopy(native)
    changed[0][0]["Activity"] = "x"
    with pytest.raises(AssertionError):
        assert_same(python, changed)
    reordered = copy.deepcopy(native)
    row = reordered[0][0]
    reordered[0][0] = dict(reversed(list(row.items())))
    with pytest.raises(AssertionError):
        assert_same(python, reordered)


# ----------------------------------------------------------------------------------------------- refusals, leaks


def test_bad_arguments_are_refused() -> None:
    native = normalize._native
    assert native is not None
    plans = normalize._NATIVE_PLANS["ama"]
    with pytest.raises(TypeError):
        native.rows((), True, plans, "", "")  # events must be a list
    with pytest.raises(TypeError):
        native.rows([], True, [], "", "")  # plans must be a dict
    with pytest.raises(TypeError):
        native.rows([], True, plans, None, "")
    with pytest.raises(ValueError, match="one id per event"):
        native.rows([{}], True, plans, "", "", ["a", "b"])
    with pytest.raises(ValueError, match="origin ids"):
        normalize_batch([{}], origin_ids=["a", "b"], native=True)
    with pytest.raises(ValueError, match="unknown agent flavour"):
        normalize_batch([], flavour="xyz", native=True)


def test_a_bad_configuration_is_refused_and_switches_the_extension_off() -> None:
    native = normalize._native
    assert native is not None
    try:
        with pytest.raises(TypeError, match="keyword"):
            native.configure(1)
        with pytest.raises(TypeError, match="needs"):
            native.configure(fingerprint=content_fingerprint)
        with pytest.raises(RuntimeError, match="not configured"):
            native.rows([], True, {}, "", "")
    finally:
        normalize._configure_native()
    assert_same(*both(list(corpus_events())[:50], "ama"))


def test_a_batch_list_emptied_during_a_callback_is_not_read_past_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    native = normalize._native
    assert native is not None
    events = copy.deepcopy(list(corpus_events())[:4])
    events[0]["event_record_id"] = None  # its origin id comes from the fingerprint callback

    def emptying_fingerprint(event: dict[str, Any]) -> str:
        events.clear()  # Python code runs here: anything may change the list meanwhile
        return content_fingerprint(event)

    monkeypatch.setattr(normalize, "content_fingerprint", emptying_fingerprint)
    try:
        normalize._configure_native()
        rows, fallbacks = native.rows(events, True, normalize._NATIVE_PLANS["ama"], "", "")
    finally:
        monkeypatch.undo()
        normalize._configure_native()
    assert len(rows) == 4 and rows[1:] == [None] * 3 and fallbacks >= 3


def corpus_batches() -> Iterator[list[dict[str, Any]]]:
    events = list(corpus_events())
    rng = random.Random(5)
    for start in range(0, 2000, 500):
        batch = copy.deepcopy(events[start:start + 500])
        for event in rng.sample(batch, 20):  # some events for the Python path, some refused
            event.pop(rng.choice(["computer", "level", "provenance"]))
        yield batch


def test_no_references_are_leaked() -> None:
    batches = list(corpus_batches())
    probes = [(event, item["value"]) for batch in batches for event in batch[:50:7]
              for item in (event.get("event_data") or [])[:2] if isinstance(item.get("value"), str)]
    for batch in batches:  # warm the plan, layout and GUID caches
        normalize_batch(batch, native=True)
        normalize_batch(batch, flavour="mma", native=True)
    before = [(sys.getrefcount(event), sys.getrefcount(value)) for event, value in probes]
    for _ in range(3):
        for batch in batches:
            normalize_batch(batch, native=True)
            normalize_batch(batch, flavour="mma", native=True)
    assert [(sys.getrefcount(event), sys.getrefcount(value)) for event, value in probes] == before


def test_memory_does_not_grow_over_repeated_batches() -> None:
    batches = list(corpus_batches())
    for batch in batches:
        normalize_batch(batch, native=True)
    gc.collect()
    tracemalloc.start()
    try:
        for batch in batches:
            normalize_batch(batch, native=True)
        gc.collect()
        first = tracemalloc.get_traced_memory()[0]
        for _ in range(2):
            for batch in batches:
                normalize_batch(batch, native=True)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - first
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes more after 2 more passes"


def test_environment_switch_turns_the_extension_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(normalize.NATIVE_ENV, "0")
    assert not normalize.native_enabled()
    monkeypatch.setenv(normalize.NATIVE_ENV, "1")
    assert normalize.native_enabled()
