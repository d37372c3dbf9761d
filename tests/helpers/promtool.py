"""Finding Prometheus' ``promtool`` (Debian's prometheus package): skip without it, fail in CI."""

from __future__ import annotations

import os
import shutil

import pytest


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("promtool missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return found
