"""A worker process started while Temporal is unreachable stays up, alive and unready (saying
why), becomes ready once a dev server comes up on that address, unready again while it is
stopped, and ready again when it is back: what the chart's probes see."""

from __future__ import annotations

import signal
import time
import uuid

import httpx
import pytest

from services import constants as c
from services.local.processes import free_port
from services.local.temporal_dev import TemporalDevServer
from tests.helpers.processes import WorkerProcess
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.integration


class Probes:
    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"

    def get(self, route: str) -> tuple[int, dict]:
        try:
            response = httpx.get(self.base + route, timeout=5)
        except httpx.HTTPError as exc:
            return 0, {"detail": str(exc)}
        body = response.json() if response.headers["content-type"] == "application/json" else {}
        return response.status_code, body

    def status(self, route: str) -> int:
        return self.get(route)[0]


async def test_readiness_waits_for_temporal_and_follows_it(tmp_path, spawn_worker) -> None:
    port, metrics_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    token = tmp_path / "token"
    token.write_text("unused\n")
    worker: WorkerProcess = spawn_worker(
        address, f"ready-{uuid.uuid4().hex[:8]}", "http://127.0.0.1:9", token,
        **{c.ENV_WORKER_METRICS_PORT: str(metrics_port)},
    )  # fmt: skip
    probes = Probes(metrics_port)
    await wait_until(lambda: probes.status(c.WORKER_LIVE_ROUTE) == 200, 60, "the worker's HTTP port")
    # Nothing listens on the address: the process waits, retrying, unready and saying why.
    await wait_until(lambda: "attempt 3" in worker.text(), 30, "a third connection attempt")
    status, body = probes.get(c.WORKER_READY_ROUTE)
    assert status == 503 and body["detail"].startswith(f"cannot connect to Temporal at {address}"), body
    assert probes.status(c.WORKER_STARTUP_ROUTE) == 503
    assert probes.status(c.WORKER_METRICS_ROUTE) == 200
    assert probes.status("/no-such-route") == 404
    assert worker.proc.poll() is None, worker.text()

    server = TemporalDevServer(tmp_path / "temporal", port=port, ui_port=free_port())
    try:
        server.start()
        started = time.monotonic()
        await wait_until(lambda: probes.status(c.WORKER_READY_ROUTE) == 200, 60, "ready once Temporal is up")
        print(f"\nready {time.monotonic() - started:.1f}s after Temporal's port opened")
        assert c.WORKER_POLLING_LOG in worker.text()
        assert probes.status(c.WORKER_STARTUP_ROUTE) == 200

        server.stop()  # an outage: unready within a check or two, alive, still started
        await wait_until(lambda: probes.status(c.WORKER_READY_ROUTE) == 503, 30, "unready without Temporal")
        status, body = probes.get(c.WORKER_READY_ROUTE)
        assert status == 503 and f"Temporal at {address}" in body["detail"], body
        assert probes.status(c.WORKER_LIVE_ROUTE) == 200
        assert probes.status(c.WORKER_STARTUP_ROUTE) == 200

        server.start()  # back: the same process reconnects
        await wait_until(lambda: probes.status(c.WORKER_READY_ROUTE) == 200, 60, "ready again")
    finally:
        server.stop()
    worker.signal(signal.SIGTERM)
    assert await worker.exited(30) == 0, worker.text()
