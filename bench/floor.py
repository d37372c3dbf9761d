"""F: what Temporal alone costs a batch. The project workflow's shape (a local activity to plan,
the shards through the same window, a local activity for the summary) with activities that do
nothing, on the same dev server: no code in the worker can make a batch of that shape faster
(the report's F/B: this as a share of B's time)."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from datetime import timedelta

from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    from services.worker.config import WorkerSettings
    from services.worker.contracts import SHARD_SIZE, Tuning
    from services.worker.plan import shard_sizes
    from services.worker.worker import eager_options, until_running

FLOOR_WORKFLOW = "BatchShapeFloor"


class FloorInput(BaseModel):
    shards: int
    window: int
    local_activities: bool = True  # the plan and the summary; without them, the least a batch costs


@activity.defn(name="floor_step")
async def step(shard: int) -> int:
    return shard


@workflow.defn(name=FLOOR_WORKFLOW)
class BatchShapeFloor:
    @workflow.run
    async def run(self, input: FloorInput) -> int:
        timeout = timedelta(seconds=30)
        if input.local_activities:
            await workflow.execute_local_activity(step, -1, start_to_close_timeout=timeout)  # the plan
        window = asyncio.Semaphore(input.window)

        async def shard(number: int) -> int:
            async with window:
                return await workflow.execute_activity(step, number, start_to_close_timeout=timeout)

        done = await asyncio.gather(*(shard(i) for i in range(input.shards)))
        if input.local_activities:
            await workflow.execute_local_activity(step, -1, start_to_close_timeout=timeout)  # the summary
        return len(done)


async def measure(temporal_address: str, records: int, runs: int) -> dict:
    """One worker, ``runs + 1`` batches one after another: the first (a fresh worker's, as each
    A run is) reported apart, the median of the rest. ``records`` 0: the least any batch
    orchestrated by Temporal costs, whatever its design (one activity, nothing else)."""
    tuning = Tuning()
    if records:
        shape = FloorInput(
            shards=len(shard_sizes(records, SHARD_SIZE, tuning.max_concurrent_shards)),  # JSON Lines'
            window=tuning.max_concurrent_shards,
        )
    else:
        shape = FloorInput(shards=1, window=1, local_activities=False)
    client = await Client.connect(temporal_address, data_converter=pydantic_data_converter)
    queue = f"bench-f-{uuid.uuid4().hex[:8]}"
    seconds: list[float] = []
    eager = eager_options(WorkerSettings().eager_activities)  # as the project's worker has it
    async with Worker(
        client, task_queue=queue, workflows=[BatchShapeFloor], activities=[step], **eager
    ) as worker:
        await until_running(worker)
        for _ in range(runs + 1):
            started = time.perf_counter()
            await client.execute_workflow(
                FLOOR_WORKFLOW, shape, id=f"bench-f-{uuid.uuid4().hex[:8]}", task_queue=queue
            )
            seconds.append(time.perf_counter() - started)
            await asyncio.sleep(0.05)  # one batch after another, not back to back
    first, rest = seconds[0], seconds[1:]
    return {
        "records": records,
        "shards": shape.shards,
        "window": shape.window,
        "local_activities": shape.local_activities,
        "floor_runs": len(rest),
        "first_ms": round(first * 1000, 1),
        "median_ms": round(statistics.median(rest) * 1000, 1),
        "min_ms": round(min(rest) * 1000, 1),
        "max_ms": round(max(rest) * 1000, 1),
        "seconds": round(statistics.median(rest), 3),
    }


def main() -> None:
    """python -m bench.floor TEMPORAL_ADDRESS RECORDS RUNS"""
    address, records, runs = sys.argv[1:4]
    print(json.dumps(asyncio.run(measure(address, int(records), int(runs)))), flush=True)
    # Done: skip the interpreter's finalization, where the SDK's core can abort the process
    # (a PyGILState_Release error) after the worker has shut down cleanly.
    os._exit(0)


if __name__ == "__main__":
    main()
