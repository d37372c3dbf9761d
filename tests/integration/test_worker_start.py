"""The worker's start against a real dev server: it says it polls only once it does, and a start
that cannot succeed fails with the reason instead of waiting."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest

from services import constants as c
from services.worker import worker as worker_module
from services.worker.config import WorkerSettings

pytestmark = pytest.mark.integration

POLLING = c.WORKER_POLLING_LOG


def settings_for(temporal_server, **overrides) -> WorkerSettings:
    # Serve is not called by a worker that only starts: an unused loopback port is enough.
    return WorkerSettings(
        address=temporal_server.address,
        task_queue=f"start-{uuid.uuid4().hex[:8]}",
        serve_url="http://127.0.0.1:9",
        metrics_port=0,
        **overrides,
    )


async def test_the_polling_line_comes_once_the_worker_runs(temporal_server, monkeypatch, caplog):
    """Tests, the benchmark and people wait for this line before they submit work: printed
    before the SDK worker had started (its namespace check and pollers run in the background),
    it let a batch's timing include the worker's own start."""
    caplog.set_level(logging.INFO, logger=worker_module.log.name)
    built = []
    real_build = worker_module.build_worker

    def build(*args):
        built.append(real_build(*args))
        return built[-1]

    monkeypatch.setattr(worker_module, "build_worker", build)
    stop = asyncio.Event()
    running_at_line: list[bool] = []

    class AtPollingLine(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith(POLLING):
                running_at_line.append(built[0].is_running)
                stop.set()

    handler = AtPollingLine()
    worker_module.log.addHandler(handler)
    try:
        await asyncio.wait_for(
            worker_module.run_worker(settings_for(temporal_server), stop=stop, install_signals=False), 60
        )
    finally:
        worker_module.log.removeHandler(handler)
    assert running_at_line == [True]


async def test_a_start_that_fails_raises_its_reason(temporal_server, caplog):
    caplog.set_level(logging.INFO, logger=worker_module.log.name)
    missing = f"no-such-namespace-{uuid.uuid4().hex[:6]}"
    with pytest.raises(RuntimeError, match=missing):
        await asyncio.wait_for(
            worker_module.run_worker(settings_for(temporal_server, namespace=missing), install_signals=False),
            60,
        )
    assert POLLING not in caplog.text
