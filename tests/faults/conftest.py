"""The fault tests' private local Ray Serve (``tests/helpers/private_serve.py``): started once
for this package (stopped after it: an idle cluster still costs the rest of the session CPU),
brought back to the shared config before each test that takes it."""

from __future__ import annotations

import pytest

from services.local.ray_serve import LocalRayServe, ensure_token
from tests.helpers.private_serve import ready


@pytest.fixture(scope="package")
def private_cluster(tmp_path_factory: pytest.TempPathFactory):
    state = tmp_path_factory.mktemp("private-serve")
    stack = LocalRayServe.on_free_ports(state / "ray", ensure_token(state / "serve-token"))
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def private_serve(private_cluster: LocalRayServe) -> LocalRayServe:
    return ready(private_cluster)
