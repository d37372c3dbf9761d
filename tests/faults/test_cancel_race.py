"""A shard that finishes while the batch is being cancelled is counted in the summary.

Workflow-level, on Temporal's time-skipping test server with fake activities: shard 0 ignores
cancellation (it never heartbeats) and completes after the cancel request; before the fix its
committed files were left out of the cancelled summary's counts.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.worker import Worker

from services.worker.contracts import (
    BatchInferenceInput,
    ShardInput,
    ShardOutput,
    Tuning,
)
from services.worker.workflows import BatchInferenceWorkflow
from tests.helpers.fake_activities import FakeBatchActivities
from tests.helpers.temporal import time_skipping_env


async def test_a_shard_finishing_during_the_cancellation_is_counted():
    started, fake = asyncio.Event(), FakeBatchActivities(total=300)

    @activity.defn(name="process_shard")
    async def process_shard(input: ShardInput) -> ShardOutput:
        if input.shard == 0:
            started.set()
            await asyncio.sleep(1)  # no heartbeat: it never hears of the cancellation
            return ShardOutput(shard=0, records=100, succeeded=99, failed=1)
        while True:  # the others stop when cancelled
            activity.heartbeat()
            await asyncio.sleep(0.05)

    async with await time_skipping_env() as env:
        queue = f"race-{uuid.uuid4().hex[:8]}"
        async with Worker(
            env.client, task_queue=queue, workflows=[BatchInferenceWorkflow],
            activities=[fake.plan_batch, process_shard, fake.write_summary],
        ):  # fmt: skip
            batch = BatchInferenceInput(
                input_uri="/in.jsonl",
                output_uri="/out",
                tuning=Tuning(shard_size=100, max_concurrent_shards=2, heartbeat_timeout_s=2),
            )
            handle = await env.client.start_workflow(
                BatchInferenceWorkflow.run, batch, id=f"race-{uuid.uuid4().hex[:8]}", task_queue=queue
            )
            await started.wait()
            await handle.cancel()
            with pytest.raises(WorkflowFailureError):
                await handle.result()
    assert fake.summaries[-1].status == "cancelled"
    assert (fake.summaries[-1].succeeded, fake.summaries[-1].failed) == (99, 1)


async def test_a_shard_result_arriving_with_the_cancellation_is_not_lost():
    """The shard's completion and the cancel request reach the workflow in one task (no
    workflow worker runs between them): the SDK then ends the shard's task cancelled, its result
    unseen. The workflow hands such shards to the summary activity, which counts their final
    files (``OutputLayout.count_final``), so what the shard committed is still counted."""
    started, finish, fake = asyncio.Event(), asyncio.Event(), FakeBatchActivities(total=300)

    @activity.defn(name="process_shard")
    async def process_shard(input: ShardInput) -> ShardOutput:
        if input.shard == 0:
            started.set()
            await finish.wait()
            return ShardOutput(shard=0, records=100, succeeded=99, failed=1)
        while True:
            activity.heartbeat()
            await asyncio.sleep(0.05)

    async with await time_skipping_env() as env:
        queue = f"race-{uuid.uuid4().hex[:8]}"

        def workflow_worker() -> Worker:  # no cache: each task goes to whichever worker polls
            # The plan and the summary are local activities: they run where the workflow does.
            return Worker(
                env.client,
                task_queue=queue,
                workflows=[BatchInferenceWorkflow],
                activities=[fake.plan_batch, fake.write_summary],
                no_remote_activities=True,
                max_cached_workflows=0,
            )

        async with Worker(env.client, task_queue=queue, activities=[process_shard]):
            batch = BatchInferenceInput(
                input_uri="/in.jsonl",
                output_uri="/out",
                tuning=Tuning(shard_size=100, max_concurrent_shards=2, heartbeat_timeout_s=2),
            )
            async with workflow_worker():
                handle = await env.client.start_workflow(
                    BatchInferenceWorkflow.run, batch, id=f"race-{uuid.uuid4().hex[:8]}", task_queue=queue
                )
                await started.wait()
            # No workflow worker now: the cancel request and shard 0's completion queue up.
            await handle.cancel()
            finish.set()
            for _ in range(200):
                history = await handle.fetch_history()
                if any(e.HasField("activity_task_completed_event_attributes") for e in history.events[3:]):
                    break
                await asyncio.sleep(0.05)
            async with workflow_worker():
                with pytest.raises(WorkflowFailureError):
                    await handle.result()
    summary = fake.summary_inputs[-1]
    assert summary.summary.status == "cancelled"
    counted = (summary.summary.succeeded, summary.summary.failed) == (99, 1)
    assert counted or 0 in summary.unsettled_shards, summary
