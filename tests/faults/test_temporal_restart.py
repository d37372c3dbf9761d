"""The Temporal server restarts (same database) in the middle of a batch: stopped, or killed
outright (SIGKILL: what its SQLite file in WAL mode has committed must survive that too).

A private ``temporal server start-dev`` (its own port and SQLite file) so the session's server
keeps serving the other tests; the worker is a real process; Serve is the session's.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError

from services.local.processes import free_port
from services.local.temporal_dev import TemporalDevServer
from services.worker.contracts import BatchInferenceOutput
from tests.helpers.batches import assert_exactly_once, echo_batch, start_batch
from tests.helpers.proxy import CountingProxy
from tests.helpers.waiting import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]


@pytest.fixture(scope="module")
def private_temporal(tmp_path_factory: pytest.TempPathFactory):
    server = TemporalDevServer(
        tmp_path_factory.mktemp("private-temporal"), port=free_port(), ui_port=free_port()
    )
    server.start()
    yield server
    server.stop()


async def result_across_outages(handle, timeout_s: float = 600) -> BatchInferenceOutput:
    """The workflow's result, asking again while the server is unreachable."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await handle.result()
        except RPCError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)


@pytest.mark.parametrize("how", ["stopped", "killed"])
async def test_temporal_restarts_mid_batch_on_the_same_database(
    private_temporal: TemporalDevServer, serve_stack, serve_token_file, spawn_worker, tmp_path: Path, how: str
):
    total = 6_000
    records, output, batch = echo_batch(
        tmp_path,
        total,
        "t",
        shard_size=1_000,
        checkpoint_every=100,
        micro_batch_size=8,
        max_in_flight=1,
        max_concurrent_shards=2,
        heartbeat_timeout_s=5,
    )
    queue = f"restart-{uuid.uuid4().hex[:8]}"
    client = await Client.connect(private_temporal.address, data_converter=pydantic_data_converter)
    with CountingProxy(serve_stack.url) as proxy:
        worker = await spawn_worker(private_temporal.address, queue, proxy.url, serve_token_file).polling()
        handle = await start_batch(client, queue, batch, "restart")
        await wait_until(lambda: proxy.records >= 0.3 * total, 300, "30% of the records sent")
        stopping = time.monotonic()
        if how == "killed":
            assert (private_temporal.state_dir / "temporal.db-wal").exists(), "the database is in WAL mode"
            private_temporal.proc.kill()
            private_temporal.proc.wait()
        else:
            await asyncio.to_thread(private_temporal.stop)
        down_at = proxy.records
        await asyncio.sleep(3)
        await asyncio.to_thread(private_temporal.start)
        back = time.monotonic()
        result = await result_across_outages(handle)
        done = time.monotonic()
    print(
        f"\nTemporal {how}, down {back - stopping:.1f}s at {down_at}/{total} records sent; batch done "
        f"{done - back:.1f}s after the restart; {proxy.records - total} records re-sent"
    )
    assert worker.proc.poll() is None, "the same worker process reconnected and carried on"
    assert_exactly_once(output, [r["id"] for r in records], result)
