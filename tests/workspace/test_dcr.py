"""DCR files in the ARM format: the bundled SecurityEvent rule, and clear refusals of what the emulator can't run."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REFERENCE
from workspace.dcr import DEFAULT_DCR_DIR, DcrError, load_dcrs, load_table, parse_dcr

BUNDLED = DEFAULT_DCR_DIR / "securityevent.json"
REFERENCE_COLUMNS = json.loads((REFERENCE / "securityevent_columns.json").read_text())


def bundled() -> dict:
    return json.loads(BUNDLED.read_text())


def test_bundled_dcr_declares_every_securityevent_column_with_its_type() -> None:
    dcr = load_dcrs(DEFAULT_DCR_DIR)["dcr-5ec57ea3000000000000000000000001"]
    declared = [(c.name, c.type) for c in dcr.streams["Custom-SecurityEvent"]]
    # GUID columns are declared as string in a stream (tutorial-logs-ingestion-api.md); the rest keep their type.
    expected = [(c["name"], "string" if c["type"] == "guid" else c["type"]) for c in REFERENCE_COLUMNS]
    assert declared == expected
    assert len(declared) == 237
    (flow,) = dcr.flows
    assert (flow.stream, flow.table.name, flow.transform) == ("Custom-SecurityEvent", "SecurityEvent", "source")


def test_workspace_table_matches_the_reference_schema() -> None:
    table = load_table("SecurityEvent")
    assert [(c.name, c.type) for c in table.columns] == [(c["name"], c["type"]) for c in REFERENCE_COLUMNS]


def test_bundled_dcr_is_a_real_arm_resource_shape() -> None:
    doc = bundled()
    props = doc["properties"]
    assert doc["type"] == "Microsoft.Insights/dataCollectionRules"
    assert set(props) >= {"immutableId", "streamDeclarations", "destinations", "dataFlows"}
    assert props["dataFlows"][0]["outputStream"] == "Microsoft-SecurityEvent"


def _parse(doc: dict) -> None:
    parse_dcr(doc, Path("rule.json"))


@pytest.mark.parametrize("kql", ["source | extend TimeGenerated = todatetime(TimeGenerated)",
                                 "source | where EventID == 4624", "print x = 1"])
def test_unsupported_transform_is_refused_at_load_with_a_clear_message(kql: str) -> None:
    doc = bundled()
    doc["properties"]["dataFlows"][0]["transformKql"] = kql
    with pytest.raises(DcrError) as err:
        _parse(doc)
    message = str(err.value)
    assert "rule.json" in message and "dataFlows[0]" in message
    assert kql in message and "not supported" in message and "'source'" in message


def test_identity_transform_with_spaces_and_missing_transform_are_source() -> None:
    doc = bundled()
    doc["properties"]["dataFlows"][0]["transformKql"] = "  source "
    _parse(doc)
    del doc["properties"]["dataFlows"][0]["transformKql"]
    _parse(doc)


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda p: p.__setitem__("immutableId", "dcr-XYZ"), "immutableId"),
    (lambda p: p["streamDeclarations"].__setitem__("SecurityEvent", p["streamDeclarations"].pop(
        "Custom-SecurityEvent")), "must begin with 'Custom-'"),
    (lambda p: p["dataFlows"][0].__setitem__("outputStream", "Microsoft-Heartbeat"), "Microsoft-Heartbeat"),
    (lambda p: p["dataFlows"][0].__setitem__("outputStream", "Custom-Foo"), "Custom-<Name>_CL"),
    (lambda p: p["dataFlows"][0].__setitem__("streams", ["Custom-Nope"]), "'Custom-Nope' is not declared"),
    (lambda p: p["dataFlows"][0].__setitem__("destinations", ["elsewhere"]), "destinations"),
    (lambda p: p["streamDeclarations"]["Custom-SecurityEvent"]["columns"].append(
        {"name": "X", "type": "guid"}), "type 'guid' of 'X'"),
    (lambda p: p["streamDeclarations"]["Custom-SecurityEvent"].__setitem__("columns", [
        {"name": "Computer", "type": "string"}]), "no TimeGenerated"),
])
def test_invalid_rules_name_the_field(mutate: Callable[[dict[str, Any]], None], expected: str) -> None:
    doc = copy.deepcopy(bundled())
    mutate(doc["properties"])
    with pytest.raises(DcrError, match=None) as err:
        _parse(doc)
    assert expected in str(err.value)


def test_custom_table_gets_stream_columns_plus_reserved(tmp_path: Path) -> None:
    doc = {"properties": {
        "immutableId": "dcr-" + "ab" * 16,
        "streamDeclarations": {"Custom-App": {"columns": [{"name": "TimeGenerated", "type": "datetime"},
                                                          {"name": "Msg", "type": "string"}]}},
        "destinations": {"logAnalytics": [{"name": "la", "workspaceResourceId": "/subscriptions/x/w"}]},
        "dataFlows": [{"streams": ["Custom-App"], "destinations": ["la"], "outputStream": "Custom-App_CL",
                       "transformKql": "source"}],
    }}
    (tmp_path / "app.json").write_text(json.dumps(doc))
    (flow,) = load_dcrs(tmp_path)["dcr-" + "ab" * 16].flows
    assert flow.table.name == "App_CL"
    assert [c.name for c in flow.table.columns] == ["TimeGenerated", "Msg", "TenantId", "Type", "_ResourceId"]


def test_directory_errors(tmp_path: Path) -> None:
    with pytest.raises(DcrError, match="no DCR files"):
        load_dcrs(tmp_path)
    (tmp_path / "broken.json").write_text("{nope")
    with pytest.raises(DcrError, match=r"broken\.json: not valid JSON"):
        load_dcrs(tmp_path)
    (tmp_path / "broken.json").unlink()
    (tmp_path / "a.json").write_text(BUNDLED.read_text())
    (tmp_path / "b.json").write_text(BUNDLED.read_text())
    with pytest.raises(DcrError, match="also used by"):
        load_dcrs(tmp_path)
