"""Workflow logic on the time-skipping test server, with the activities mocked."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.worker import Worker

from services.worker.contracts import (
    BatchInferenceInput,
    BatchInferenceOutput,
    InlineInput,
    InlineOutput,
    InlinePrediction,
    Progress,
    ShardInput,
    ShardOutput,
    Tuning,
)
from services.worker.workflows import BatchInferenceWorkflow
from tests.helpers.fake_activities import FakeBatchActivities
from tests.helpers.temporal import time_skipping_env


@pytest.fixture(scope="module")
async def env():
    env = await time_skipping_env()
    yield env
    await env.shutdown()


class FakeActivities(FakeBatchActivities):
    """Shards of ``shard_size`` records; ``failing`` records fail per shard."""

    def __init__(self, total: int, failing_per_shard: int = 0, delay: float = 0.01):
        super().__init__(total)
        self.failing = failing_per_shard
        self.delay = delay
        self.calls: list[int] = []
        self.running = 0
        self.max_running = 0
        self.release = asyncio.Event()
        self.release.set()

    @activity.defn(name="process_shard")
    async def process_shard(self, input: ShardInput) -> ShardOutput:
        self.calls.append(input.shard)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await asyncio.sleep(self.delay)
            await self.release.wait()
        finally:
            self.running -= 1
        n = self.records_of(input.shard)
        failed = min(self.failing, n)
        return ShardOutput(shard=input.shard, records=n, succeeded=n - failed, failed=failed)

    @activity.defn(name="predict_inline")
    async def predict_inline(self, input: InlineInput) -> InlineOutput:
        return InlineOutput(
            predictions=[InlinePrediction(id=i, prediction=r) for i, r in enumerate(input.records)]
        )

    def all(self):
        return [self.plan_batch, self.process_shard, self.predict_inline, self.write_summary]


async def run(env, fake: FakeActivities, batch: BatchInferenceInput) -> BatchInferenceOutput:
    queue = f"unit-{uuid.uuid4().hex[:8]}"
    async with Worker(
        env.client, task_queue=queue, workflows=[BatchInferenceWorkflow], activities=fake.all()
    ):
        return await env.client.execute_workflow(
            BatchInferenceWorkflow.run, batch, id=f"wf-{uuid.uuid4().hex[:8]}", task_queue=queue
        )


def file_batch(**tuning) -> BatchInferenceInput:
    return BatchInferenceInput(input_uri="/in.jsonl", output_uri="/out", tuning=Tuning(**tuning))


async def test_every_shard_runs_once_within_the_window(env):
    fake = FakeActivities(total=10_500)
    result = await run(env, fake, file_batch(shard_size=1000, max_concurrent_shards=3))
    assert sorted(fake.calls) == list(range(11))
    assert fake.max_running == 3
    assert (result.total_records, result.succeeded, result.failed, result.shards) == (10_500, 10_500, 0, 11)
    assert result.runs == 1
    assert fake.summaries[-1].status == "completed"


async def test_continue_as_new_carries_cursor_and_counters(env):
    fake = FakeActivities(total=1000, failing_per_shard=1)
    batch = file_batch(shard_size=50, max_concurrent_shards=4, continue_as_new_after_shards=6)
    batch.max_error_ratio = 0.5
    result = await run(env, fake, batch)
    assert sorted(fake.calls) == list(range(20)), "each shard exactly once across runs"
    assert result.runs == 4  # ceil(20 / 6)
    assert (result.succeeded, result.failed) == (980, 20)
    assert fake.shard_size == 50


async def test_error_budget_fails_the_batch_with_a_clear_message(env):
    fake = FakeActivities(total=400, failing_per_shard=5)
    batch = file_batch(shard_size=100, max_concurrent_shards=1)
    batch.max_error_ratio = 0.02  # 8 of 400 allowed; shard 0 fails 5, shard 1 brings it to 10
    with pytest.raises(WorkflowFailureError) as err:
        await run(env, fake, batch)
    assert "error budget exceeded: 10 of 400 records failed" in str(err.value.cause)
    assert sorted(fake.calls) == [0, 1], "stops scheduling once over budget"
    assert fake.summaries[-1].status == "failed"


async def test_progress_query_reports_counts_while_running(env):
    fake = FakeActivities(total=3000)
    fake.release.clear()
    queue = f"unit-{uuid.uuid4().hex[:8]}"
    async with Worker(
        env.client, task_queue=queue, workflows=[BatchInferenceWorkflow], activities=fake.all()
    ):
        handle = await env.client.start_workflow(
            BatchInferenceWorkflow.run,
            file_batch(shard_size=1000, max_concurrent_shards=2),
            id=f"wf-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
        )
        for _ in range(100):
            progress = await handle.query(BatchInferenceWorkflow.progress)
            if progress.shards_running == 2:
                break
            await asyncio.sleep(0.05)
        assert isinstance(progress, Progress)
        assert (progress.status, progress.total_records, progress.shards_total) == ("running", 3000, 3)
        assert progress.shards_running == 2 and progress.succeeded == 0
        fake.release.set()
        result = await handle.result()
    # The query after the end replays the whole history, which the time-skipping test server
    # fails now and then on a patch marker: tests/integration/test_batches.py asks it of the
    # real dev server instead.
    assert result.succeeded == 3000


async def test_inline_records_fan_out_and_aggregate_in_order(env):
    fake = FakeActivities(total=0)
    batch = BatchInferenceInput(records=[{"q": "a"}, {"q": "b"}], tuning=Tuning(micro_batch_size=1))
    result = await run(env, fake, batch)
    assert [p.prediction for p in result.predictions] == [{"q": "a"}, {"q": "b"}]
    assert result.shards == 2 and result.succeeded == 2


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"input_uri": "/in.jsonl", "output_uri": "/o", "tuning": {"micro_batch_size": 0}},
            "micro_batch_size",
        ),
        ({"input_uri": "/in.jsonl"}, "'output_uri' is required"),
        ({"records": [1], "input_uri": "/in.jsonl", "output_uri": "/o"}, "exactly one of"),
        ({"input_uri": "/in.jsonl", "output_uri": "/o", "shard_size": 5}, "shard_size"),
    ],
)
async def test_invalid_input_fails_the_workflow_instead_of_retrying(env, raw, expected):
    queue = f"unit-{uuid.uuid4().hex[:8]}"
    fake = FakeActivities(total=0)
    async with Worker(
        env.client, task_queue=queue, workflows=[BatchInferenceWorkflow], activities=fake.all()
    ):
        with pytest.raises(WorkflowFailureError) as err:
            await env.client.execute_workflow(
                "BatchInference",
                raw,
                id=f"wf-{uuid.uuid4().hex[:8]}",
                task_queue=queue,
            )
    assert expected in str(err.value.cause)


async def test_sandbox_passes_the_project_modules_through(monkeypatch, caplog) -> None:
    """Every workflow run re-imports workflows.py in a fresh sandbox; what it imports from the
    project must come from the worker (passed through), not be executed again each run."""
    import logging

    from temporalio import workflow
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, _importer

    monkeypatch.setattr(_importer, "LOG_TRACE", True)
    caplog.set_level(logging.DEBUG, logger=_importer.__name__)
    SandboxedWorkflowRunner().prepare_workflow(workflow._Definition.must_from_class(BatchInferenceWorkflow))
    imported = [r.getMessage().strip() for r in caplog.records if r.name == _importer.__name__]
    passed = {m.removeprefix("Passing module ").removesuffix(" through from host") for m in imported}
    project = {
        "services.constants",
        "services.worker.contracts",
        "services.worker.file_batch",
        "services.worker.inline_batch",
    }
    assert project <= passed, sorted(project - passed)
    # what the data plane imports is not imported again inside the sandbox
    assert not any(
        m.startswith(("Importing fsspec", "Importing tempfile", "Importing orjson")) for m in imported
    )
