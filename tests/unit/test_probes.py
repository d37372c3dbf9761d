"""The worker's HTTP port: each route answers what it says (``/metrics``, the three probes,
404 for the rest) and readiness follows the SDK worker and the connection checks."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import httpx
import pytest

from services import constants as c
from services.worker.metrics_server import MetricsServer
from services.worker.probes import WorkerProbes


@pytest.fixture
async def served():
    probes = WorkerProbes(asyncio.get_running_loop(), stale_after_s=0.5, loop_timeout_s=0.3)
    server = MetricsServer("127.0.0.1", 0, probes=probes).start()
    try:
        yield probes, f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


async def get(url: str) -> tuple[int, dict | str]:
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(url)
    body = response.json() if response.headers["content-type"] == "application/json" else response.text
    return response.status_code, body


async def test_routes_metrics_probes_and_404(served) -> None:
    probes, base = served
    status, body = await get(base + c.WORKER_METRICS_ROUTE)
    assert status == 200 and "process_cpu_seconds_total" in body
    for path in ("/", "/metrics/", "/healthz", "/readyz/x"):
        status, body = await get(base + path)
        assert status == 404 and c.WORKER_READY_ROUTE in body, path
    assert await get(base + c.WORKER_LIVE_ROUTE) == (200, {"ok": True, "detail": "the event loop answers"})
    # Not connected yet: not ready, not started, but alive.
    probes.waiting("cannot connect to Temporal at 127.0.0.1:1 (namespace default), attempt 3: refused")
    status, body = await get(base + c.WORKER_READY_ROUTE)
    assert status == 503 and body["detail"].startswith("cannot connect to Temporal at 127.0.0.1:1")
    status, body = await get(base + c.WORKER_STARTUP_ROUTE)
    assert status == 503 and body["detail"].startswith("not started: cannot connect")


async def test_readiness_follows_the_worker_and_the_connection_checks(served) -> None:
    probes, base = served
    ready, started = base + c.WORKER_READY_ROUTE, base + c.WORKER_STARTUP_ROUTE
    worker = SimpleNamespace(is_running=True, is_shutdown=False, task_queue="q")
    probes.serving(worker)
    assert (await get(ready))[1]["detail"] == "the Temporal connection has not been checked yet"
    probes.connection_checked(None)
    status, body = await get(ready)
    assert status == 200 and body["detail"].startswith("polling task queue 'q'; Temporal answered")
    assert (await get(started))[0] == 200
    probes.connection_checked("Temporal at 127.0.0.1:1 (default) did not answer: unavailable")
    assert await get(ready) == (
        503,
        {"ok": False, "detail": "Temporal at 127.0.0.1:1 (default) did not answer: unavailable"},
    )
    assert (await get(started))[0] == 200, "started stays started"
    probes.connection_checked(None)
    assert (await get(ready))[0] == 200
    await asyncio.sleep(0.6)  # no check since: stale
    status, body = await get(ready)
    assert status == 503 and body["detail"].startswith("no successful check of the Temporal connection for")
    probes.connection_checked(None)
    worker.is_running, worker.is_shutdown = False, True  # e.g. a fatal poll error shut it down
    assert (await get(ready))[1]["detail"] == "the SDK worker has shut down"
    worker.is_running, worker.is_shutdown = True, False
    probes.stopping()
    assert await get(ready) == (503, {"ok": False, "detail": "stopping: running activities are finishing"})
    assert (await get(base + c.WORKER_LIVE_ROUTE))[0] == 200, "alive while it drains"


async def test_liveness_fails_while_the_event_loop_is_blocked(served) -> None:
    _, base = served
    answers: list[httpx.Response] = []
    asking = threading.Thread(target=lambda: answers.append(httpx.get(base + c.WORKER_LIVE_ROUTE, timeout=5)))
    asking.start()
    time.sleep(1.0)  # noqa: ASYNC251 - the point: this loop answers nothing meanwhile
    await asyncio.to_thread(asking.join)
    (answer,) = answers
    assert answer.status_code == 503
    assert answer.json() == {"ok": False, "detail": "the event loop did not answer within 0.3s"}
