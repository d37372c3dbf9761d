"""In-process workers (the same ``build_worker`` as the real one) whose Serve client logs every
HTTP attempt."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from temporalio.client import WorkflowHandle

from services.worker.concurrency import Limiter
from services.worker.config import WorkerSettings
from services.worker.contracts import BatchInferenceInput
from services.worker.serve_client import RetrySettings, ServeClient, TokenSource
from services.worker.worker import build_worker
from tests.helpers.batches import echo_batch, start_batch
from tests.helpers.waiting import wait_until


class Attempts:
    """Every HTTP attempt of the worker's Serve client: (monotonic time, outcome)."""

    def __init__(self) -> None:
        self.log: list[tuple[float, str]] = []

    def __call__(self, outcome: str, seconds: float, *_: object) -> None:
        self.log.append((time.monotonic(), outcome))

    def count(self, outcome: str | None = None, since: float = 0.0, until: float = float("inf")) -> int:
        return sum(1 for t, o in self.log if since <= t < until and (outcome is None or o == outcome))


@contextlib.asynccontextmanager
async def worker_on(
    client,
    serve_url: str,
    token_file: Path,
    attempts: Attempts,
    retry: RetrySettings | None = None,
    *,
    limiter: Limiter | None = None,
) -> AsyncIterator[str]:
    """An in-process worker (the same ``build_worker`` as the real one) on a fresh task queue;
    ``retry``: its Serve client's in-activity retries (default: the worker's); ``limiter``: its
    in-flight limit (default: none beyond the fixed ones)."""
    queue = f"serve-fault-{uuid.uuid4().hex[:8]}"
    serve = ServeClient(
        serve_url, TokenSource(token_file=str(token_file)), on_attempt=attempts, retry=retry, limiter=limiter
    )
    worker = build_worker(client, WorkerSettings(task_queue=queue, serve_url=serve_url), serve)
    try:
        async with worker:
            yield queue
    finally:
        await serve.aclose()


# A batch Serve can be taken away from mid-shard and given back: 4 shards of 1,500 echo records
# in parts of 100, 8 records a request, 2 requests of a shard and 2 shards at once, heartbeats
# within 5 s (so a shard whose attempt dies is retried soon).
OUTAGE_RECORDS = 6_000
OUTAGE_TUNING = dict(
    shard_size=1_500,
    checkpoint_every=100,
    micro_batch_size=8,
    max_in_flight=2,
    max_concurrent_shards=2,
    heartbeat_timeout_s=5,
)


def outage_batch(tmp_path: Path, prefix: str, **tuning) -> tuple[list[dict], Path, BatchInferenceInput]:
    """The batch above (``tuning``: more or other settings): (records, output folder, input)."""
    return echo_batch(tmp_path, OUTAGE_RECORDS, prefix, **{**OUTAGE_TUNING, **tuning})


async def start_until_a_quarter_done(
    client, batch: BatchInferenceInput, queue: str, attempts: Attempts, workflow_id: str
) -> WorkflowHandle:
    """Start ``batch`` of ``OUTAGE_RECORDS`` on ``queue`` and return once Serve has answered for
    a quarter of its records (counted by the worker's ``attempts``)."""
    handle = await start_batch(client, queue, batch, workflow_id=workflow_id)
    per_request = batch.tuning.micro_batch_size
    await wait_until(
        lambda: attempts.count("200") * per_request >= 0.25 * OUTAGE_RECORDS, 60, "a quarter of the batch"
    )
    return handle
