"""``secstream schemas …`` end to end through the real CLI app."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from schemas.event_sets import event_set_xpath
from secstream.cli import app
from tests.schemas.conftest import DATA, stored
from tests.schemas.test_registry import FakeRegistry, registry  # noqa: F401  (fixture)

runner = CliRunner()


@pytest.fixture
def no_config(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("SECSTREAM_CONFIG", "SECSTREAM_SCHEMA_REGISTRY__URL"):
        monkeypatch.delenv(name, raising=False)
    yield


@pytest.mark.parametrize("name", ["All", "Common", "Minimal", "None"])
def test_xpath_prints_the_event_set_queries(name: str, no_config: None) -> None:
    result = runner.invoke(app, ["schemas", "xpath", name])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == event_set_xpath(name)
    as_json = runner.invoke(app, ["schemas", "xpath", name, "--json"])
    assert json.loads(as_json.output) == event_set_xpath(name)


def test_xpath_unknown_set_is_a_config_error(no_config: None) -> None:
    result = runner.invoke(app, ["schemas", "xpath", "Recommended"])
    assert result.exit_code == 2
    assert "unknown event set 'Recommended'" in " ".join(result.output.split())


def test_list_shows_local_ids(no_config: None) -> None:
    result = runner.invoke(app, ["schemas", "list"])
    assert result.exit_code == 0, result.output
    assert "RawEventBatch" in result.output and "101" in result.output and "201" in result.output


def test_decode_prints_the_batch_or_the_reason(no_config: None, tmp_path: Path) -> None:
    data, expected = stored("SecurityEventBatch.v1")
    result = runner.invoke(app, ["schemas", "decode", str(DATA / "SecurityEventBatch.v1.avro"), "--kind", "security"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == expected
    garbage = tmp_path / "bad.bin"
    garbage.write_bytes(data[:-30])
    result = runner.invoke(app, ["schemas", "decode", str(garbage), "--kind", "security"])
    assert result.exit_code == 1
    assert "not valid Avro for schema id 201" in " ".join(result.output.split())  # Rich wraps lines


def test_register_needs_a_registry(no_config: None) -> None:
    result = runner.invoke(app, ["schemas", "register"])
    assert result.exit_code == 2
    assert "schema_registry.url is not set" in " ".join(result.output.split())


def test_register_then_list_with_a_registry(registry: FakeRegistry, no_config: None) -> None:  # noqa: F811
    url = ["--set", f"schema_registry.url={registry.url}"]
    before = runner.invoke(app, [*url, "schemas", "list"])
    assert before.exit_code == 0, before.output
    assert "not registered" in before.output
    result = runner.invoke(app, [*url, "schemas", "register"])
    assert result.exit_code == 0, result.output
    assert "secstream.v1.RawEventBatch: id 1" in result.output
    assert "secstream.v1.SecurityEventBatch: id 2" in result.output
    after = runner.invoke(app, [*url, "schemas", "list"])
    assert "not registered" not in after.output
