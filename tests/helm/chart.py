"""Render the chart with a real helm and check what comes out: Kubernetes schemas and the KEDA CRDs."""

from __future__ import annotations

import copy
import functools
import importlib.util
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.conftest import REFERENCE

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "secstream"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
KEDA_CRDS = REFERENCE / "keda-crds"
KUBE_VERSION = "1.30.0"
RELEASE = "r1"
NAMESPACE = "secstream"


def load_fetch_helm() -> Any:
    """scripts/fetch_helm.py, the same code `make` and CI use to get helm."""
    spec = importlib.util.spec_from_file_location("fetch_helm", REPO / "scripts" / "fetch_helm.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class HelmError(Exception):
    def __init__(self, args: list[str], stderr: str) -> None:
        super().__init__(f"helm {' '.join(args)} failed:\n{stderr}")
        self.stderr = stderr


class Helm:
    def __init__(self, binary: Path) -> None:
        self.binary = binary

    def run(self, *args: str) -> str:
        proc = subprocess.run([str(self.binary), *args], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise HelmError(list(args), proc.stderr + proc.stdout)
        return proc.stdout

    def template(self, values: list[Path] | None = None, sets: dict[str, str] | None = None,
                 *extra: str) -> list[dict[str, Any]]:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
        for v in values or []:
            args += ["-f", str(v)]
        for key, value in (sets or {}).items():
            args += ["--set", f"{key}={value}"]
        out = self.run(*args, *extra)
        return [d for d in yaml.safe_load_all(out) if d]

    def lint(self, values: Path, sets: dict[str, str] | None = None) -> str:
        args = ["lint", "--strict", str(CHART), "-f", str(values)]
        for key, value in (sets or {}).items():
            args += ["--set", f"{key}={value}"]
        return self.run(*args)


def values_of(path: Path) -> dict[str, Any]:
    """The chart's defaults overlaid with one values file (enough for the keys the tests read)."""
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    return _deep_merge(base, yaml.safe_load(path.read_text()) or {})


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def workloads(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for d in docs:
        if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
            yield d


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


# --- KEDA custom resources, checked against the CRDs' openAPIV3Schema ---------------------------------------------

@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict JSON schema, from the KEDA CRD files."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in KEDA_CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = strict(version["schema"]["openAPIV3Schema"])
            schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def strict(schema: Any) -> Any:
    """Forbid unknown fields wherever the CRD lists the fields (a structural schema), as kubeconform --strict does."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def crd_errors(doc: dict[str, Any]) -> list[str]:
    schema = crd_schemas().get((doc["apiVersion"], doc["kind"]))
    if schema is None:
        return [f"no CRD for {doc['apiVersion']} {doc['kind']}"]
    # The API server fills metadata; the CRD schema says only "type: object" for it.
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))]
