"""A Serve outage pauses a file batch instead of failing it: the wait schedule (pure), and the
workflow on the time-skipping test server with the activities mocked (the real servers:
tests/faults/test_serve_outage.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError, RetryState
from temporalio.worker import Worker

from services.errors import Failure
from services.worker.contracts import (
    BatchInferenceInput,
    Progress,
    ServeCheck,
    ShardInput,
    ShardOutput,
    Tuning,
)
from services.worker.outages import (
    Outage,
    duration_text,
    outage_too_long,
    serve_unavailable,
    wait_before_check,
)
from services.worker.workflows import BatchInferenceWorkflow
from tests.helpers.fake_activities import FakeBatchActivities
from tests.helpers.temporal import time_skipping_env

# --- the wait schedule -----------------------------------------------------------------------


def test_waits_double_from_the_initial_wait_up_to_the_cap():
    waits = [wait_before_check(n, 5, 60, left_s=10_000) for n in range(7)]
    assert waits == [5, 10, 20, 40, 60, 60, 60]


def test_the_last_wait_ends_at_the_outage_cap():
    assert wait_before_check(10, 5, 60, left_s=12.5) == 12.5
    assert wait_before_check(1, 5, 60, left_s=-3) == 0


def test_a_huge_attempt_count_stays_at_the_cap():
    assert wait_before_check(10_000, 0.5, 300, left_s=1e9) == 300
    assert wait_before_check(-1, 5, 60, left_s=100) == 5


def _activity_error(cause: BaseException) -> ActivityError:
    error = ActivityError(
        "activity failed",
        scheduled_event_id=1,
        started_event_id=2,
        identity="w",
        activity_type="process_shard",
        activity_id="1",
        retry_state=RetryState.NON_RETRYABLE_FAILURE,
    )
    error.__cause__ = cause
    return error


def test_only_the_serve_unavailable_type_counts_as_an_outage():
    down = ApplicationError("cannot reach Serve", type=Failure.SERVE_UNAVAILABLE)
    assert serve_unavailable(_activity_error(down)) == "cannot reach Serve"
    other = ApplicationError("Serve unavailable (words only)", type=Failure.SERVE_PROTOCOL_ERROR)
    assert serve_unavailable(_activity_error(other)) is None
    assert serve_unavailable(down) is None, "not a shard activity's failure"


def test_the_outage_failure_says_how_long_since_when_and_what_to_check():
    since = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
    outage = Outage(since=since, attempts=42, reason="cannot reach Serve at http://serve:8000 (ConnectError)")
    error = outage_too_long(outage, since + timedelta(hours=4, minutes=1), 14_400)
    assert error.type == Failure.SERVE_OUTAGE_TOO_LONG and error.non_retryable
    text = str(error)
    assert "Serve was unavailable for 4h 01m (since 2026-12-06 09:00:00 UTC, 42 attempts" in text
    assert "max_serve_outage_s=14400" in text and "SERVE_URL" in text and "batch-inference resume" in text
    assert (duration_text(59), duration_text(61), duration_text(3600)) == ("59s", "1m 01s", "1h 00m")


def test_progress_says_since_when_and_how_many_attempts():
    since = datetime(2026, 12, 6, 9, 0, 5, tzinfo=UTC)
    waiting = Progress(status="waiting_for_serve", waiting_for_serve_since=since, serve_attempts=3)
    assert waiting.serve_wait_line() == "waiting for Serve since 2026-12-06 09:00:05 UTC, 3 attempts"
    assert Progress(status="running").serve_wait_line() is None


# --- the workflow, activities mocked ----------------------------------------------------------


@pytest.fixture(scope="module")
async def env():
    env = await time_skipping_env()
    yield env
    await env.shutdown()


class OutageActivities(FakeBatchActivities):
    """Shards of 100 records; Serve "down" for the first ``down_shard_attempts`` shard attempts
    and the first ``down_checks`` checks (``None``: for ever)."""

    def __init__(self, total: int, down_shard_attempts: int, down_checks: int | None):
        super().__init__(total)
        self.down_shard_attempts, self.down_checks = down_shard_attempts, down_checks
        self.shard_calls: list[tuple[int, int]] = []  # (shard, Temporal attempt)
        self.checks = 0

    @activity.defn(name="process_shard")
    async def process_shard(self, input: ShardInput) -> ShardOutput:
        self.shard_calls.append((input.shard, activity.info().attempt))
        if len(self.shard_calls) <= self.down_shard_attempts:
            raise ApplicationError(
                "cannot reach Serve at http://serve (ConnectError); gave up after 6 attempts",
                type=Failure.SERVE_UNAVAILABLE,
            )
        n = self.records_of(input.shard)
        return ShardOutput(shard=input.shard, records=n, succeeded=n, failed=0)

    @activity.defn(name="check_serve")
    async def check_serve(self) -> ServeCheck:
        self.checks += 1
        if self.down_checks is None or self.checks <= self.down_checks:
            return ServeCheck(ok=False, reason="cannot reach Serve at http://serve (ConnectError)")
        return ServeCheck(ok=True)

    def all(self):
        return [self.plan_batch, self.process_shard, self.check_serve, self.write_summary]


async def run(env, fake: OutageActivities, **tuning):
    queue = f"unit-{uuid.uuid4().hex[:8]}"
    batch = BatchInferenceInput(input_uri="/in.jsonl", output_uri="/out", tuning=Tuning(**tuning))
    async with Worker(
        env.client, task_queue=queue, workflows=[BatchInferenceWorkflow], activities=fake.all()
    ):
        return await env.client.execute_workflow(
            BatchInferenceWorkflow.run, batch, id=f"wf-{uuid.uuid4().hex[:8]}", task_queue=queue
        )


async def test_an_outage_longer_than_the_shard_attempts_pauses_the_batch_and_it_completes(env):
    # Every shard attempt of the first 12 finds Serve down: with shard_max_attempts=2 the batch
    # failed at the second one before; now none of them is a Temporal retry.
    fake = OutageActivities(total=300, down_shard_attempts=12, down_checks=4)
    result = await run(env, fake, shard_size=100, max_concurrent_shards=3, shard_max_attempts=2)
    assert (result.status, result.succeeded, result.failed) == ("completed", 300, 0)
    assert {attempt for _, attempt in fake.shard_calls} == {1}, "an outage spends no activity attempt"
    assert sorted({shard for shard, _ in fake.shard_calls}) == [0, 1, 2]
    assert fake.checks >= 5 and [s.status for s in fake.summaries] == ["completed"]


async def test_an_outage_past_its_cap_fails_the_batch_with_the_outage_failure(env):
    fake = OutageActivities(total=200, down_shard_attempts=10_000, down_checks=None)
    with pytest.raises(WorkflowFailureError) as err:
        await run(
            env, fake, shard_size=100, max_concurrent_shards=2, max_serve_outage_s=3600, serve_wait_max_s=300
        )
    cause = err.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == Failure.SERVE_OUTAGE_TOO_LONG
    assert "Serve was unavailable for 1h 00m" in str(cause)
    # Waits of 5, 10, ... 300 s over the hour: one check per wait for the whole batch, and each
    # shard tried again only after a check found Serve answering (never here).
    assert 12 <= fake.checks <= 20
    assert len(fake.shard_calls) == 2
    assert [s.status for s in fake.summaries] == ["failed"]


def test_the_wait_metric_counts_seconds_while_waiting_and_zero_after():
    from prometheus_client import REGISTRY

    from services import metrics as m
    from services.worker import telemetry

    workflow_id = f"unit-{uuid.uuid4().hex[:8]}"
    since = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
    telemetry.export_serve_wait(workflow_id, since, now=since + timedelta(seconds=90))
    labels = {m.WORKFLOW_ID: workflow_id}
    assert REGISTRY.get_sample_value(m.BATCH_WAITING_FOR_SERVE.prom, labels) == 90
    telemetry.export_serve_wait(workflow_id, None)
    assert REGISTRY.get_sample_value(m.BATCH_WAITING_FOR_SERVE.prom, labels) == 0
