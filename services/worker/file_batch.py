"""Orchestration of a file batch: plan, run shards through a sliding window, continue-as-new
before history grows large, and write the summary however the batch ends.

Workflow code: deterministic, no I/O; the activities do the work. Records never pass through
here, only shard numbers, counters and URIs.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

from services.errors import NON_RETRYABLE, Failure
from services.worker.accounting import check_error_budget, per_second
from services.worker.activities import BatchActivities
from services.worker.contracts import (
    BatchInferenceInput,
    BatchInferenceOutput,
    BatchState,
    PlanInput,
    Progress,
    ProgressStatus,
    ShardInput,
    ShardOutput,
    SummaryInput,
    retry_output,
)
from services.worker.layout import OutputLayout
from services.worker.manifests import BatchStatus, BatchSummary
from services.worker.outages import Outage, outage_too_long, serve_unavailable, wait_before_check
from services.worker.progress_attributes import ProgressPublisher
from services.worker.queue_priority import activity_priority

# Continue-as-new well before Temporal's 51,200-event hard limit even if the server's
# suggestion is late; each shard costs about six events.
MAX_HISTORY_EVENTS = 20_000
NON_RETRYABLE_TYPES = [str(failure) for failure in NON_RETRYABLE]
# Shards wait out a Serve outage in the workflow instead of spending their activity retries on
# it: a change of the commands issued (check_serve, timers, re-run shards), so behind a patch.
SERVE_OUTAGE_PATCH = "wait-out-serve-outages"


class FileBatch:
    def __init__(self, input: BatchInferenceInput):
        if input.retry_of is not None and input.output_uri is None:
            input.output_uri = retry_output(input.retry_of, workflow.info().workflow_id)
        assert input.output_uri
        self.input, self.tuning = input, input.tuning
        self.input_uri: str | list[str] | None = input.input_uri
        self.output_uri: str = input.output_uri
        self.errors_uri = OutputLayout(input.output_uri, input.output_format).errors_uri()
        self.status: ProgressStatus = "planning"
        self.state: BatchState | None = input.state
        self.pending: dict[int, asyncio.Task[ShardOutput]] = {}
        self.shards_this_run = 0
        self.outage: Outage | None = None
        self.serve_check: asyncio.Task[None] | None = None
        self.priority = activity_priority(input)
        self.publisher = ProgressPublisher(self.progress, self.tuning.progress_every_s)

    # --- what the progress query reads ---------------------------------------------------------

    def progress(self) -> Progress:
        state = self.state
        if state is None:
            return Progress(status=self.status)
        elapsed = (workflow.now() - state.started_at).total_seconds()
        waiting = self.outage if self.outage is not None and self.outage.waiting else None
        return Progress(
            status="waiting_for_serve" if waiting and self.status == "running" else self.status,
            total_records=state.total_records,
            succeeded=state.succeeded,
            failed=state.failed,
            shards_total=state.num_shards,
            shards_done=state.next_shard - len(self.pending),
            shards_running=len(self.pending),
            run=state.runs,
            elapsed_s=round(elapsed, 3),
            records_per_second=per_second(state.succeeded + state.failed, elapsed),
            waiting_for_serve_since=waiting.since if waiting else None,
            serve_attempts=waiting.attempts if waiting else 0,
        )

    # --- the run -------------------------------------------------------------------------------

    async def run(self) -> BatchInferenceOutput:
        state = self.state = self.state or await self._plan()
        self.status = "running"
        self.publisher.enable(state.progress_attributes)
        self.publisher.publish()
        try:
            await self._run_shards(state)
        except BaseException as exc:
            await self._stop(state, "cancelled" if isinstance(exc, asyncio.CancelledError) else "failed")
            raise
        if state.next_shard < state.num_shards:
            state.runs += 1
            self.publisher.publish(force=True)
            # A versioned worker pins each run to its version; the next run starts on the
            # deployment's current version, so a long batch takes up new code between runs and
            # never mid-history. The SDK marks this option experimental; unversioned: no effect.
            workflow.continue_as_new(
                self.input, initial_versioning_behavior=workflow.ContinueAsNewVersioningBehavior.AUTO_UPGRADE
            )
        self.status = "finalizing"
        summary_uri = await self._write_summary(state, "completed")
        self.status = "completed"
        self.publisher.publish(force=True)
        return self._output(state, "completed", summary_uri)

    async def _plan(self) -> BatchState:
        started = workflow.now()
        # A local activity: the plan runs inside the workflow task that needs it, so the first
        # shards are scheduled in that task. A long plan keeps its task alive with heartbeats;
        # if the worker dies, the task times out in seconds and another worker plans again.
        plan = await workflow.execute_local_activity_method(
            BatchActivities.plan_batch,
            PlanInput(
                input_uri=self.input_uri,
                output_uri=self.output_uri,
                spec=self.input.data_spec(),
                model=self.input.model,
                start_over=self.input.start_over,
                retry_of=self.input.retry_of,
                retry_only=self.input.retry_only,
                shard_size=self.tuning.shard_size,
                max_concurrent_shards=self.tuning.max_concurrent_shards,
            ),
            start_to_close_timeout=timedelta(hours=2),
            retry_policy=RetryPolicy(maximum_attempts=5, non_retryable_error_types=NON_RETRYABLE_TYPES),
        )
        self.input.state = BatchState(
            started_at=started,
            total_records=plan.total_records,
            num_shards=plan.num_shards,
            progress_attributes=plan.progress_attributes,
        )
        return self.input.state

    def _should_continue_as_new(self) -> bool:
        info, limit = workflow.info(), self.tuning.continue_as_new_after_shards
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() > MAX_HISTORY_EVENTS
            or (limit is not None and self.shards_this_run >= limit)
        )

    async def _run_shards(self, state: BatchState) -> None:
        """The sliding window: keep ``max_concurrent_shards`` shards running, count each one as it
        finishes, stop at the error budget or when it is time to continue-as-new."""
        while self.pending or state.next_shard < state.num_shards:
            rolling_over = self._should_continue_as_new()
            while (
                not rolling_over
                and len(self.pending) < self.tuning.max_concurrent_shards
                and state.next_shard < state.num_shards
            ):
                self.pending[state.next_shard] = self._start_shard(state.next_shard)
                state.next_shard += 1
                self.shards_this_run += 1
                rolling_over = self._should_continue_as_new()
            if not self.pending:
                return  # rolling over with nothing in flight
            self.publisher.publish()  # the shards counted and those started in their place
            # What the interval held back is published when it ends, not when a shard next ends.
            done, _ = await workflow.wait(
                self.pending.values(), timeout=self.publisher.due_in(), return_when=asyncio.FIRST_COMPLETED
            )
            for shard, task in list(self.pending.items()):
                if task in done:
                    del self.pending[shard]
                    self._count(state, task.result())  # a shard out of retries fails the batch here
            check_error_budget(
                state.failed,
                state.total_records,
                self.input.max_error_ratio,
                f"see {self.errors_uri}",
            )

    def _start_shard(self, shard: int) -> asyncio.Task[ShardOutput]:
        if workflow.patched(SERVE_OUTAGE_PATCH):
            return asyncio.create_task(self._shard_through_outages(shard))
        return self._shard_activity(shard, NON_RETRYABLE_TYPES)

    async def _shard_through_outages(self, shard: int) -> ShardOutput:
        """The shard, run again from its checkpoint each time it gives up on an unavailable
        Serve, once Serve answers again: an outage costs none of its activity attempts."""
        while True:
            try:
                result = await self._shard_activity(
                    shard, [*NON_RETRYABLE_TYPES, str(Failure.SERVE_UNAVAILABLE)]
                )
            except ActivityError as err:
                reason = serve_unavailable(err)
                if reason is None:
                    raise
                await self._wait_for_serve(reason)
                continue
            self.outage = None  # a shard completed: Serve answers
            return result

    async def _wait_for_serve(self, reason: str) -> None:
        """Count the attempt against the outage (failing the batch past its cap), then wait
        until Serve answers; one check loop per batch, shared by all waiting shards."""
        now = workflow.now()
        outage = self.outage = self.outage or Outage(since=now)
        outage.attempts += 1
        outage.reason, outage.waiting = reason, True
        self.publisher.publish()  # now waiting_for_serve: a change of status publishes at once
        if (now - outage.since).total_seconds() >= self.tuning.max_serve_outage_s:
            raise outage_too_long(outage, now, self.tuning.max_serve_outage_s)
        if self.serve_check is None or self.serve_check.done():
            self.serve_check = asyncio.create_task(self._check_serve_until_it_answers(outage))
        await self.serve_check

    async def _check_serve_until_it_answers(self, outage: Outage) -> None:
        tuning = self.tuning
        while True:
            left = tuning.max_serve_outage_s - (workflow.now() - outage.since).total_seconds()
            wait = wait_before_check(
                outage.checks, tuning.serve_wait_initial_s, tuning.serve_wait_max_s, left
            )
            await workflow.sleep(wait, summary="waiting for Serve")
            try:
                check = await workflow.execute_activity_method(
                    BatchActivities.check_serve,
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=RetryPolicy(maximum_attempts=1),
                )
                ok, reason = check.ok, check.reason
            except ActivityError as err:  # no worker answered in time: as good as no answer
                ok, reason = False, f"the check of Serve did not complete ({err.cause or err})"
            # Every check of this outage lengthens the next wait, also one that found Serve
            # answering: a Serve that answers the check but not the shards is not asked faster.
            outage.checks += 1
            if ok:
                outage.waiting = False
                return
            now = workflow.now()
            outage.attempts += 1
            outage.reason = reason
            if (now - outage.since).total_seconds() >= tuning.max_serve_outage_s:
                raise outage_too_long(outage, now, tuning.max_serve_outage_s)

    def _shard_activity(self, shard: int, non_retryable: list[str]) -> asyncio.Task[ShardOutput]:
        tuning = self.tuning
        return workflow.start_activity_method(
            BatchActivities.process_shard,
            ShardInput(
                output_uri=self.output_uri,
                shard=shard,
                model=self.input.model,
                micro_batch_size=tuning.micro_batch_size,
                max_request_bytes=tuning.max_request_bytes,
                max_in_flight=tuning.max_in_flight,
                checkpoint_every=tuning.checkpoint_every,
                parts_in_flight=tuning.parts_in_flight,
                columnar_part_rows=tuning.columnar_part_rows,
            ),
            start_to_close_timeout=timedelta(hours=6),
            heartbeat_timeout=timedelta(seconds=tuning.heartbeat_timeout_s),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=1),
                maximum_interval=timedelta(seconds=60),
                maximum_attempts=tuning.shard_max_attempts,
                non_retryable_error_types=non_retryable,
            ),
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            priority=self.priority,
        )

    @staticmethod
    def _count(state: BatchState, result: ShardOutput) -> None:
        state.succeeded += result.succeeded
        state.failed += result.failed
        state.resumed_records += result.resumed_from

    async def _stop(self, state: BatchState, status: BatchStatus) -> None:
        """Cancel the running shards, count those that finished anyway, write the summary."""
        for task in self.pending.values():
            task.cancel()
        if self.pending:
            await workflow.wait(self.pending.values())
        unsettled = []
        for shard, task in self.pending.items():
            # A shard that finished before its cancellation took effect has committed its files:
            # the summary counts it. One whose result came with the cancellation ends cancelled
            # here all the same: the summary activity counts its files instead.
            if not task.cancelled() and task.exception() is None:
                self._count(state, task.result())
            else:
                unsettled.append(shard)
        self.pending.clear()
        self.status = status
        self.publisher.publish(force=True)
        try:
            await self._write_summary(state, status, unsettled)
        except Exception as summary_exc:  # the original error matters more
            workflow.logger.warning("could not write the %s summary: %s", status, summary_exc)

    # --- the end -------------------------------------------------------------------------------

    def _output(
        self, state: BatchState, status: BatchStatus, summary_uri: str | None
    ) -> BatchInferenceOutput:
        duration = (workflow.now() - state.started_at).total_seconds()
        return BatchInferenceOutput(
            status=status,
            total_records=state.total_records,
            succeeded=state.succeeded,
            failed=state.failed,
            shards=state.num_shards,
            runs=state.runs,
            resumed_records=state.resumed_records,
            duration_s=round(duration, 3),
            records_per_second=per_second(state.succeeded + state.failed, duration),
            output_uri=self.output_uri,
            errors_uri=self.errors_uri,
            summary_uri=summary_uri,
        )

    async def _write_summary(
        self, state: BatchState, status: BatchStatus, unsettled: list[int] | None = None
    ) -> str:
        output = self._output(state, status, None)
        summary = BatchSummary(
            **output.model_dump(
                include=set(BatchSummary.model_fields) & set(BatchInferenceOutput.model_fields)
            ),
            workflow_id=workflow.info().workflow_id,
            input_uri=self.input_uri,
            retry_of=self.input.retry_of,
            output_format=self.input.output_format,
            model=self.input.model,
            shards_done=state.next_shard - len(self.pending) if status == "completed" else None,
        )
        # A local activity too: the result is returned in the task that wrote the summary.
        return await workflow.execute_local_activity_method(
            BatchActivities.write_summary,
            SummaryInput(summary=summary, unsettled_shards=unsettled or []),
            start_to_close_timeout=timedelta(minutes=5),
        )
