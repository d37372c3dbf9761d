"""Fixtures for the chart tests: every value set rendered once per session, the CRD validator."""

from __future__ import annotations

import pytest

from tests.helpers.k8s import VALUE_SETS, CrdValidator, crd_dirs, render


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    return {name: render(values) for name, values in VALUE_SETS.items()}


@pytest.fixture(scope="session")
def crds() -> CrdValidator:
    dirs = crd_dirs()
    if not dirs:
        pytest.skip(
            "no upstream CRDs found (set BATCH_INFERENCE_CRD_DIR, or place them in ../shared/crds): "
            "custom resources cannot be validated"
        )
    return CrdValidator(dirs[0])
