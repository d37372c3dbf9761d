"""The BatchInference workflow: plan shards, run them through a sliding window, continue-as-new
before history grows large, and return counts and URIs (never records).

Workflow code must stay deterministic and import-pure: it is re-imported in Temporal's sandbox.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pydantic import ValidationError
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    # Passed through so the workflow and the activities share one copy of each model class,
    # and so a workflow run does not execute these modules again in its sandbox. Each names
    # its module in full: ``from services.worker import storage`` would load storage.py (and
    # what it imports) inside the sandbox, as the package is already there (~4 ms a run).
    from services.constants import PROGRESS_QUERY, WORKFLOW_NAME
    from services.worker.activities import BatchActivities
    from services.worker.models import (
        BatchInferenceInput,
        BatchInferenceOutput,
        BatchState,
        InlineInput,
        InlinePrediction,
        PlanInput,
        Progress,
        ShardInput,
        ShardOutput,
        SummaryInput,
    )
    from services.worker.storage import errors_uri

# Continue-as-new well before Temporal's 51,200-event hard limit even if the server's
# suggestion is late; each shard costs about six events.
MAX_HISTORY_EVENTS = 20_000
NON_RETRYABLE_TYPES = ["InputNotFound", "EmptyInput", "OutputNotWritable", "InputChanged"]


@workflow.defn(name=WORKFLOW_NAME, failure_exception_types=[ValidationError])
class BatchInferenceWorkflow:
    def __init__(self) -> None:
        self._progress = Progress(status="planning")
        self._state: BatchState | None = None
        self._running = 0

    @workflow.query(name=PROGRESS_QUERY)
    def progress(self) -> Progress:
        if self._state is not None:
            elapsed = (workflow.now() - self._state.started_at).total_seconds()
            done = self._state.succeeded + self._state.failed
            self._progress = self._progress.model_copy(
                update={
                    "total_records": self._state.total_records,
                    "succeeded": self._state.succeeded,
                    "failed": self._state.failed,
                    "shards_total": self._state.num_shards,
                    "shards_done": self._state.next_shard - self._running,
                    "shards_running": self._running,
                    "run": self._state.runs,
                    "elapsed_s": round(elapsed, 3),
                    "records_per_second": round(done / elapsed, 1) if elapsed > 0 else 0.0,
                }
            )
        return self._progress

    @workflow.run
    async def run(self, input: BatchInferenceInput) -> BatchInferenceOutput:
        if input.records is not None:
            return await self._run_inline(input)
        return await self._run_file(input)

    # --- file batches ---------------------------------------------------------------------

    async def _run_file(self, input: BatchInferenceInput) -> BatchInferenceOutput:
        assert input.input_uri and input.output_uri
        tuning = input.tuning
        if input.state is None:
            started = workflow.now()
            # Local activities: the plan and the summary run inside the workflow task that
            # needs them, so the shards are scheduled (and the result returned) in that task,
            # not one dispatch and one more task later: at 100k records the first shard starts
            # ~25 ms sooner and the result comes ~18 ms sooner (docs/performance.md). A long
            # plan keeps its task alive with heartbeats; if the worker dies, the task times
            # out in seconds and another worker plans again.
            plan = await workflow.execute_local_activity_method(
                BatchActivities.plan_batch,
                PlanInput(
                    input_uri=input.input_uri,
                    output_uri=input.output_uri,
                    shard_size=tuning.shard_size,
                    max_concurrent_shards=tuning.max_concurrent_shards,
                ),
                start_to_close_timeout=timedelta(hours=2),
                retry_policy=RetryPolicy(maximum_attempts=5, non_retryable_error_types=NON_RETRYABLE_TYPES),
            )
            input.state = BatchState(
                started_at=started, total_records=plan.total_records, num_shards=plan.num_shards
            )
        state = self._state = input.state
        self._progress = Progress(status="running")
        shard_policy = RetryPolicy(
            initial_interval=timedelta(seconds=1),
            maximum_interval=timedelta(seconds=60),
            maximum_attempts=tuning.shard_max_attempts,
            non_retryable_error_types=NON_RETRYABLE_TYPES,
        )
        pending: dict[int, asyncio.Task[ShardOutput]] = {}
        shards_this_run = 0

        def should_continue_as_new() -> bool:
            info = workflow.info()
            limit = tuning.continue_as_new_after_shards
            return (
                info.is_continue_as_new_suggested()
                or info.get_current_history_length() > MAX_HISTORY_EVENTS
                or (limit is not None and shards_this_run >= limit)
            )

        try:
            while pending or state.next_shard < state.num_shards:
                rolling_over = should_continue_as_new()
                while (
                    not rolling_over
                    and len(pending) < tuning.max_concurrent_shards
                    and state.next_shard < state.num_shards
                ):
                    shard = state.next_shard
                    pending[shard] = workflow.start_activity_method(
                        BatchActivities.process_shard,
                        ShardInput(
                            input_uri=input.input_uri,
                            output_uri=input.output_uri,
                            shard=shard,
                            model=input.model,
                            micro_batch_size=tuning.micro_batch_size,
                            max_in_flight=tuning.max_in_flight,
                            checkpoint_every=tuning.checkpoint_every,
                            parts_in_flight=tuning.parts_in_flight,
                        ),
                        start_to_close_timeout=timedelta(hours=6),
                        heartbeat_timeout=timedelta(seconds=tuning.heartbeat_timeout_s),
                        retry_policy=shard_policy,
                        cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                    )
                    state.next_shard += 1
                    shards_this_run += 1
                    rolling_over = should_continue_as_new()
                self._running = len(pending)
                if not pending:
                    break  # rolling over with nothing in flight
                done, _ = await workflow.wait(pending.values(), return_when=asyncio.FIRST_COMPLETED)
                for shard, task in list(pending.items()):
                    if task in done:
                        del pending[shard]
                        result = task.result()  # a shard out of retries fails the batch here
                        self._count(state, result)
                self._running = len(pending)
                self._check_error_budget(input, state)
        except BaseException as exc:
            for task in pending.values():
                task.cancel()
            if pending:
                await workflow.wait(pending.values())
            unsettled = []
            for shard, task in pending.items():
                # A shard that finished before its cancellation took effect has committed its
                # files: the summary counts it. One whose result came with the cancellation ends
                # cancelled here all the same: the summary activity counts its files instead.
                if not task.cancelled() and task.exception() is None:
                    self._count(state, task.result())
                else:
                    unsettled.append(shard)
            self._running = 0
            status = "cancelled" if isinstance(exc, asyncio.CancelledError) else "failed"
            try:
                await self._write_summary(input, state, status, unsettled)
            except Exception as summary_exc:  # the original error matters more
                workflow.logger.warning("could not write the %s summary: %s", status, summary_exc)
            raise

        if state.next_shard < state.num_shards:
            state.runs += 1
            workflow.continue_as_new(input)

        self._progress = Progress(status="finalizing")
        summary_uri = await self._write_summary(input, state, "completed")
        self._progress = Progress(status="completed")
        return self._output(input, state, "completed", summary_uri)

    @staticmethod
    def _count(state: BatchState, result: ShardOutput) -> None:
        state.succeeded += result.succeeded
        state.failed += result.failed
        state.resumed_records += result.resumed_from

    def _check_error_budget(self, input: BatchInferenceInput, state: BatchState) -> None:
        allowed = input.max_error_ratio * state.total_records
        if state.failed > allowed:
            raise ApplicationError(
                f"error budget exceeded: {state.failed} of {state.total_records} records failed "
                f"(max_error_ratio={input.max_error_ratio} allows {int(allowed)}); "
                f"see {errors_uri(input.output_uri or '')}",
                type="ErrorBudgetExceeded",
                non_retryable=True,
            )

    def _output(
        self, input: BatchInferenceInput, state: BatchState, status: str, summary_uri: str | None
    ) -> BatchInferenceOutput:
        duration = (workflow.now() - state.started_at).total_seconds()
        done = state.succeeded + state.failed
        return BatchInferenceOutput(
            status=status,  # type: ignore[arg-type]
            total_records=state.total_records,
            succeeded=state.succeeded,
            failed=state.failed,
            shards=state.num_shards,
            runs=state.runs,
            resumed_records=state.resumed_records,
            duration_s=round(duration, 3),
            records_per_second=round(done / duration, 1) if duration > 0 else 0.0,
            output_uri=input.output_uri,
            errors_uri=errors_uri(input.output_uri) if input.output_uri else None,
            summary_uri=summary_uri,
        )

    async def _write_summary(
        self, input: BatchInferenceInput, state: BatchState, status: str, unsettled: list[int] | None = None
    ) -> str:
        assert input.output_uri
        output = self._output(input, state, status, None)
        summary = output.model_dump(mode="json", exclude={"predictions", "summary_uri"})
        summary.update(
            workflow_id=workflow.info().workflow_id,
            input_uri=input.input_uri,
            model=input.model,
            shards_done=state.next_shard - self._running if status == "completed" else None,
        )
        return await workflow.execute_local_activity_method(
            BatchActivities.write_summary,
            SummaryInput(output_uri=input.output_uri, summary=summary, unsettled_shards=unsettled or []),
            start_to_close_timeout=timedelta(minutes=5),
        )

    # --- inline batches (small jobs; the original example) ---------------------------------

    async def _run_inline(self, input: BatchInferenceInput) -> BatchInferenceOutput:
        records = input.records or []
        started = workflow.now()
        size = input.tuning.micro_batch_size
        chunks = [records[i : i + size] for i in range(0, len(records), size)]
        self._progress = Progress(status="running", total_records=len(records), shards_total=len(chunks))
        window = asyncio.Semaphore(input.tuning.max_concurrent_shards)

        async def run_chunk(chunk: list) -> list[InlinePrediction]:
            async with window:
                self._progress.shards_running += 1
                try:
                    out = await workflow.execute_activity_method(
                        BatchActivities.predict_inline,
                        InlineInput(records=chunk, model=input.model),
                        start_to_close_timeout=timedelta(minutes=5),
                        retry_policy=RetryPolicy(maximum_attempts=input.tuning.shard_max_attempts),
                    )
                finally:
                    self._progress.shards_running -= 1
                self._progress.shards_done += 1
                for p in out.predictions:
                    if p.error is None:
                        self._progress.succeeded += 1
                    else:
                        self._progress.failed += 1
                return out.predictions

        results = await asyncio.gather(*(run_chunk(c) for c in chunks))
        predictions = [p for chunk in results for p in chunk]
        failed = sum(p.error is not None for p in predictions)
        duration = (workflow.now() - started).total_seconds()
        if failed > input.max_error_ratio * len(records):
            reasons = "; ".join(f"#{i}: {p.error}" for i, p in enumerate(predictions) if p.error)
            raise ApplicationError(
                f"error budget exceeded: {failed} of {len(records)} inline records failed "
                f"(max_error_ratio={input.max_error_ratio}): {reasons[:2000]}",
                type="ErrorBudgetExceeded",
                non_retryable=True,
            )
        self._progress.status = "completed"
        return BatchInferenceOutput(
            total_records=len(records),
            succeeded=len(records) - failed,
            failed=failed,
            shards=len(chunks),
            duration_s=round(duration, 3),
            records_per_second=round(len(records) / duration, 1) if duration > 0 else 0.0,
            predictions=predictions,
        )
