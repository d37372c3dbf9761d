"""Session fixtures for the container tests: the Docker engine and the two project images."""

from __future__ import annotations

import pytest

from tests.helpers.docker import (
    REPO_ROOT,
    SERVE_IMAGE,
    WORKER_IMAGE,
    Docker,
    DockerUnavailable,
)


@pytest.fixture(scope="session")
def docker() -> Docker:
    try:
        engine = Docker.start()
    except DockerUnavailable as exc:
        pytest.skip(f"no Docker engine: {exc}")
    timings = engine.ensure_bases()
    for tag, seconds in timings.items():
        print(f"built base image {tag} in {seconds:.0f}s")
    return engine


@pytest.fixture(scope="session")
def worker_image(docker: Docker) -> str:
    seconds = docker.build(REPO_ROOT / "Dockerfile.worker", WORKER_IMAGE, REPO_ROOT)
    print(f"built {WORKER_IMAGE} in {seconds:.0f}s")
    return WORKER_IMAGE


@pytest.fixture(scope="session")
def serve_image(docker: Docker) -> str:
    seconds = docker.build(REPO_ROOT / "Dockerfile.serve", SERVE_IMAGE, REPO_ROOT)
    print(f"built {SERVE_IMAGE} in {seconds:.0f}s")
    return SERVE_IMAGE
