"""The activities: thin ``@activity.defn`` wrappers that give the data plane Temporal's inputs,
heartbeats and error types. Planning is ``plan.py``, a shard's work ``pipeline.py``, the output
folder ``layout.py``.

Bulk data stays in files: activities exchange shard numbers, offsets, counts and URIs with the
workflow. One ``ServeClient`` (one connection pool) is shared by every activity of the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from services.errors import BatchError
from services.worker import jsonl, telemetry
from services.worker.contracts import (
    InlineInput,
    InlineOutput,
    InlinePrediction,
    PlanInput,
    PlanOutput,
    ServeCheck,
    ShardInput,
    ShardOutput,
    SummaryInput,
)
from services.worker.layout import OutputLayout
from services.worker.manifests import ShardProgress
from services.worker.model_check import UnknownModel, check_model
from services.worker.pipeline import HeapTrimmer, ShardPipeline
from services.worker.plan import PlanError, make_plan
from services.worker.serve_client import ServeClient, model_error
from services.worker.source import ShardFailed

log = logging.getLogger(__name__)


def _non_retryable(error: BatchError) -> ApplicationError:
    return ApplicationError(str(error), type=error.failure, non_retryable=True)


@contextlib.asynccontextmanager
async def heartbeating(details: Callable[[], Any]) -> AsyncIterator[None]:
    """Heartbeat ``details()`` every second or so (faster with a short heartbeat timeout) while
    the block runs. The only heartbeats of a shard, carrying its last committed checkpoint;
    they also deliver cancellation. The SDK sends at most one per throttle interval anyway, so
    one per part would only cost a conversion per part."""
    timeout = activity.info().heartbeat_timeout
    interval = max(0.2, min(1.0, timeout.total_seconds() / 3)) if timeout else 1.0

    async def beat() -> None:
        while True:
            await asyncio.sleep(interval)
            activity.heartbeat(details())

    ticker = asyncio.create_task(beat())
    try:
        yield
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker


class BatchActivities:
    def __init__(self, serve: ServeClient, progress_attributes: Callable[[], Awaitable[bool]] | None = None):
        self.serve = serve
        self.trimmer = HeapTrimmer()
        # Whether the namespace has the progress search attributes (progress_attributes.py);
        # the plan answers it, so the workflow learns it from a result already in its history.
        self.progress_attributes = progress_attributes

    @activity.defn
    async def plan_batch(self, input: PlanInput) -> PlanOutput:
        try:
            # Before the scan, which can take minutes: a wrong model name fails the batch at once.
            await check_model(self.serve, input.model)
            plan = await asyncio.to_thread(make_plan, input)
        except (PlanError, UnknownModel) as exc:
            raise _non_retryable(exc) from None
        registered = await self.progress_attributes() if self.progress_attributes else False
        return PlanOutput(
            total_records=plan.total_records, num_shards=len(plan.shards), progress_attributes=registered
        )

    @activity.defn
    @telemetry.shard_activity
    async def process_shard(self, input: ShardInput) -> ShardOutput:
        info = activity.info()
        plan = await asyncio.to_thread(OutputLayout(input.output_uri).read_plan)
        layout = OutputLayout(input.output_uri, plan.spec.output_format)
        if counts := await asyncio.to_thread(layout.final_counts, input.shard):
            # An earlier attempt wrote the final files and died before Temporal heard of it, or
            # the batch resumes in its folder (a new plan removes any other batch's final files,
            # so these are this batch's).
            succeeded, failed = counts
            log.info("shard %d was already committed (attempt %d)", input.shard, info.attempt)
            records = succeeded + failed
            return ShardOutput(
                shard=input.shard, records=records, succeeded=succeeded, failed=failed, resumed_from=records
            )
        entry = plan.shards[input.shard]
        if info.heartbeat_details:
            progress = ShardProgress.model_validate(info.heartbeat_details[0])
        else:
            progress = entry.start()
        progress = await asyncio.to_thread(layout.last_checkpoint, input.shard, plan.plan_id, progress)
        if progress.done:
            log.info("shard %d resumes at record %d (attempt %d)", input.shard, progress.done, info.attempt)
        resumed_from = progress.done
        pipeline = ShardPipeline(self.serve, input, plan, progress, self.trimmer)
        async with heartbeating(lambda: pipeline.progress.model_dump()):
            try:
                progress = await pipeline.run()
            except ShardFailed as exc:
                raise _non_retryable(exc) from None
        return ShardOutput(
            shard=input.shard,
            records=progress.done,
            succeeded=progress.succeeded,
            failed=progress.failed,
            resumed_from=resumed_from,
        )

    @activity.defn
    async def check_serve(self) -> ServeCheck:
        """Whether Serve answers again, while a batch waits for it: one request for its model
        list, through the same ingress and token check as a shard's requests. Any answer but a
        5xx, 429 or 404 (no application deployed yet) counts: a refusal is then the shard's to
        report, with its own advice."""
        try:
            await self.serve.list_models()
        except httpx.HTTPStatusError as exc:
            status = exc.response.status_code
            if status >= 500 or status in (404, 429):
                return ServeCheck(ok=False, reason=f"Serve answered {status} on its model list")
        except httpx.HTTPError as exc:
            return ServeCheck(
                ok=False, reason=f"cannot reach Serve at {self.serve.base_url} ({type(exc).__name__})"
            )
        except ValidationError:
            pass  # it answered, in a form this worker does not read: up all the same
        return ServeCheck(ok=True)

    @activity.defn
    async def predict_inline(self, input: InlineInput) -> InlineOutput:
        pairs = [jsonl.split_record(r) for r in input.records]
        body = self.serve.encode([p[1] for p in pairs])
        predictions, errors = await telemetry.serve_predict(self.serve, input.model, body, len(pairs))
        out = []
        for (record_id, _), prediction, error in zip(pairs, predictions, errors, strict=True):
            if error is None:
                out.append(InlinePrediction(id=record_id, prediction=prediction))
            else:
                failure = model_error(error)
                out.append(InlinePrediction(id=record_id, error=failure.message, error_code=failure.code))
        return InlineOutput(predictions=out)

    @activity.defn
    async def write_summary(self, input: SummaryInput) -> str:
        summary = input.summary
        layout = OutputLayout(summary.output_uri, summary.output_format)
        if input.unsettled_shards:
            # A shard can commit its final files and still end cancelled in the workflow (its
            # result and the cancellation arriving together): its files say what it did.
            ok, failed = await asyncio.to_thread(layout.count_final, input.unsettled_shards)
            summary = summary.settled(ok, failed)
        await asyncio.to_thread(layout.finish, summary)
        if summary.retry_of is not None and summary.status == "completed":
            await asyncio.to_thread(OutputLayout(summary.retry_of).add_retry, summary.output_uri)
        telemetry.record_batch_finished(summary)
        return layout.summary_uri
