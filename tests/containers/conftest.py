"""Session fixtures for the container tests: the Docker engine and the two project images,
prepared in the background from the end of collection (``tests/helpers/docker.py``) when any
selected test needs them; those tests run last."""

from __future__ import annotations

import pytest

from tests.helpers.docker import SERVE_IMAGE, WORKER_IMAGE, Docker, DockerUnavailable, Preparation

_preparation: Preparation | None = None


def preparation() -> Preparation:
    global _preparation
    if _preparation is None:
        _preparation = Preparation()
    return _preparation


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that need Docker run last: the preparation has the whole session beside them."""
    items.sort(key=lambda item: "docker" in getattr(item, "fixturenames", ()))


def pytest_collection_finish(session: pytest.Session) -> None:
    if any("docker" in getattr(item, "fixturenames", ()) for item in session.items):
        preparation()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _preparation is not None:
        _preparation.stop()


@pytest.fixture(scope="session")
def docker() -> Docker:
    try:
        engine, timings = preparation().engine.result()
    except DockerUnavailable as exc:
        pytest.skip(f"no Docker engine: {exc}")
    for tag, seconds in timings.items():
        print(f"built base image {tag} in {seconds:.0f}s (beside other tests)")
    return engine


@pytest.fixture(scope="session")
def worker_image(docker: Docker) -> str:
    seconds = preparation().images[WORKER_IMAGE].result()
    print(f"built {WORKER_IMAGE} in {seconds:.0f}s (beside other tests)")
    return WORKER_IMAGE


@pytest.fixture(scope="session")
def serve_image(docker: Docker) -> str:
    seconds = preparation().images[SERVE_IMAGE].result()
    print(f"built {SERVE_IMAGE} in {seconds:.0f}s (beside other tests)")
    return SERVE_IMAGE
