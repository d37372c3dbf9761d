"""Orchestration of an inline batch (small jobs, the original example): the records are in the
workflow input (capped well below Temporal's payload limit), one activity per micro-batch runs
in parallel within the window, and the predictions come back in the result.

Workflow code: deterministic, no I/O.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

from services.worker.accounting import check_error_budget, per_second
from services.worker.activities import BatchActivities
from services.worker.contracts import (
    BatchInferenceInput,
    BatchInferenceOutput,
    InlineInput,
    InlinePrediction,
    Progress,
    ProgressStatus,
)
from services.worker.queue_priority import activity_priority

MAX_REASONS_CHARS = 2000  # of the failed records' reasons quoted in the error budget's message


class InlineBatch:
    def __init__(self, input: BatchInferenceInput):
        assert input.records is not None
        self.input, self.records = input, input.records
        size = input.tuning.micro_batch_size
        self.chunks = [self.records[i : i + size] for i in range(0, len(self.records), size)]
        self.status: ProgressStatus = "running"
        self.running = self.done = self.succeeded = self.failed = 0
        self.priority = activity_priority(input)

    def progress(self) -> Progress:
        return Progress(
            status=self.status,
            total_records=len(self.records),
            succeeded=self.succeeded,
            failed=self.failed,
            shards_total=len(self.chunks),
            shards_done=self.done,
            shards_running=self.running,
        )

    async def run(self) -> BatchInferenceOutput:
        started = workflow.now()
        window = asyncio.Semaphore(self.input.tuning.max_concurrent_shards)
        results = await asyncio.gather(*(self._run_chunk(chunk, window) for chunk in self.chunks))
        predictions = [p for chunk in results for p in chunk]
        reasons = "; ".join(f"#{i}: {p.error}" for i, p in enumerate(predictions) if p.error)
        check_error_budget(
            self.failed, len(self.records), self.input.max_error_ratio, reasons[:MAX_REASONS_CHARS]
        )
        duration = (workflow.now() - started).total_seconds()
        self.status = "completed"
        return BatchInferenceOutput(
            total_records=len(self.records),
            succeeded=self.succeeded,
            failed=self.failed,
            shards=len(self.chunks),
            duration_s=round(duration, 3),
            records_per_second=per_second(len(self.records), duration),
            predictions=predictions,
        )

    async def _run_chunk(self, chunk: list[Any], window: asyncio.Semaphore) -> list[InlinePrediction]:
        async with window:
            self.running += 1
            try:
                out = await workflow.execute_activity_method(
                    BatchActivities.predict_inline,
                    InlineInput(records=chunk, model=self.input.model),
                    start_to_close_timeout=timedelta(minutes=5),
                    retry_policy=RetryPolicy(maximum_attempts=self.input.tuning.shard_max_attempts),
                    priority=self.priority,
                )
            finally:
                self.running -= 1
        self.done += 1
        failed = sum(p.error is not None for p in out.predictions)
        self.succeeded += len(out.predictions) - failed
        self.failed += failed
        return out.predictions
