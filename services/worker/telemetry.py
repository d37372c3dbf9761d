"""The worker's metrics: the project's own, and per-batch progress from Temporal.

- Project metrics: ``prometheus_client`` objects built from the definitions in
  ``services/metrics.py`` (names, labels, buckets defined there once).
- ``BatchProgressPoller``: per-batch progress (records, shards, rate) of the running
  BatchInference workflows, from one visibility list call: each batch publishes its progress in
  search attributes (``progress_attributes``), so no metrics live in workflow code. One process
  runs it (``batch-inference progress-exporter``), not every worker.

The Temporal SDK's metrics are bridged in ``sdk_metrics``; ``metrics_server`` serves both on
the worker's one ``/metrics`` port.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from temporalio import activity
from temporalio.client import Client

from services import constants as c
from services import metrics as m
from services.errors import CODES_BY_STAGE, Stage
from services.worker.manifests import BatchSummary, RecordFailure

if TYPE_CHECKING:
    from services.worker.contracts import Progress

log = logging.getLogger(__name__)


# --- project metrics (prometheus_client, default registry) ------------------------------------


def _build(metric: m.Metric) -> MetricWrapperBase:
    assert metric.source == "worker", metric
    if metric.kind == "counter":
        # prometheus_client appends "_total" itself: give it the bare name.
        return Counter(metric.name, metric.help, metric.labels)
    if metric.kind == "gauge":
        return Gauge(metric.name, metric.help, metric.labels)
    return Histogram(metric.name, metric.help, metric.labels, buckets=metric.buckets)


RECORDS = _build(m.RECORDS)
SERVE_REQUESTS = _build(m.SERVE_REQUESTS)
SERVE_REQUEST_DURATION = _build(m.SERVE_REQUEST_DURATION)
MICRO_BATCH_SIZE = _build(m.MICRO_BATCH_SIZE)
SERVE_IN_FLIGHT = _build(m.SERVE_IN_FLIGHT)
SERVE_CONCURRENCY_LIMIT = _build(m.SERVE_CONCURRENCY_LIMIT)  # set by the Serve client's limiter
SHARDS_RUNNING = _build(m.SHARDS_RUNNING)
SHARD_ATTEMPTS = _build(m.SHARD_ATTEMPTS)
SHARD_RETRIES = _build(m.SHARD_RETRIES)
BATCHES_FINISHED = _build(m.BATCHES_FINISHED)
RETRIED_RECORDS = _build(m.RETRIED_RECORDS)
RESUMED_RECORDS = _build(m.RESUMED_RECORDS)
BATCHES_RUNNING = _build(m.BATCHES_RUNNING)
BATCH_RECORDS = _build(m.BATCH_RECORDS)
BATCH_SHARDS = _build(m.BATCH_SHARDS)
BATCH_RECORDS_PER_SECOND = _build(m.BATCH_RECORDS_PER_SECOND)
BATCH_ELAPSED = _build(m.BATCH_ELAPSED)
BATCH_WAITING_FOR_SERVE = _build(m.BATCH_WAITING_FOR_SERVE)  # see export_serve_wait
SCHEDULE_RUNS = _build(m.SCHEDULE_RUNS)  # set by schedule_metrics.SchedulePoller
SCHEDULE_LAST_RUN_FAILED = _build(m.SCHEDULE_LAST_RUN_FAILED)
SCHEDULE_PAUSED = _build(m.SCHEDULE_PAUSED)


_initialised: set[str] = set()


def init_model(label: str) -> None:
    """Create a model's record and batch-outcome series at 0, so the first failure is an
    increase Prometheus can see (a labelled counter appears only when first used)."""
    if label in _initialised:
        return
    _initialised.add(label)
    RECORDS.labels(label, m.SUCCEEDED, "", "")
    for stage in (Stage.PARSE, Stage.MODEL):
        for code in CODES_BY_STAGE[stage]:
            RECORDS.labels(label, m.FAILED, stage, code)
    for status in (m.SUCCEEDED_BATCH, m.FAILED, m.CANCELLED_BATCH):
        BATCHES_FINISHED.labels(label, status)
    for outcome in m.RETRY_OUTCOMES:
        RETRIED_RECORDS.labels(label, outcome)
    RESUMED_RECORDS.labels(label)


def record_serve_attempt(outcome: str, seconds: float, model: str | None) -> None:
    """``ServeClient``'s ``on_attempt`` hook: one HTTP attempt ended with ``outcome``."""
    label = m.model_label(model)
    SERVE_REQUESTS.labels(label, outcome).inc()
    SERVE_REQUEST_DURATION.labels(label).observe(seconds)


def record_part(model: str | None, succeeded: int, failures: Iterable[RecordFailure]) -> None:
    """A committed part: ``succeeded`` records, and its failed records by stage and code."""
    label = m.model_label(model)
    init_model(label)
    if succeeded:
        RECORDS.labels(label, m.SUCCEEDED, "", "").inc(succeeded)
    for (stage, code), n in collections.Counter((f.stage, f.code) for f in failures).items():
        RECORDS.labels(label, m.FAILED, stage, code).inc(n)


async def serve_predict(
    serve: Any, model: str | None, body: bytes, count: int
) -> tuple[list[Any], list[Any]]:
    """``serve.predict`` with the micro-batch size and in-flight gauge recorded."""
    label = m.model_label(model)
    MICRO_BATCH_SIZE.labels(label).observe(count)
    with SERVE_IN_FLIGHT.labels(label).track_inprogress():
        return await serve.predict(model, body, count)


def record_batch_finished(summary: BatchSummary) -> None:
    """A batch's summary was written: its status, the records it resumed and, for a retry, what
    became of the records it re-ran."""
    label = m.model_label(summary.model)
    BATCHES_FINISHED.labels(label, summary.status).inc()
    if summary.retry_of is not None:
        RETRIED_RECORDS.labels(label, m.RETRY_FIXED).inc(summary.succeeded)
        RETRIED_RECORDS.labels(label, m.RETRY_FAILED).inc(summary.failed)
    RESUMED_RECORDS.labels(label).inc(summary.resumed_records)


def shard_activity(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Wraps the shard activity: shards running, retries, and how each attempt ended."""

    @functools.wraps(fn)
    async def wrapper(self: Any, input: Any) -> Any:
        label = m.model_label(getattr(input, "model", None))
        init_model(label)
        if activity.info().attempt > 1:
            SHARD_RETRIES.labels(label).inc()
        outcome = m.SHARD_FAILED
        try:
            with SHARDS_RUNNING.labels(label).track_inprogress():
                result = await fn(self, input)
            outcome = m.SHARD_SUCCEEDED
            return result
        except asyncio.CancelledError:
            outcome = m.SHARD_CANCELLED
            raise
        finally:
            SHARD_ATTEMPTS.labels(label, outcome).inc()

    return wrapper


def export_serve_wait(workflow_id: str, since: datetime | None, now: datetime | None = None) -> None:
    """The one place a batch's wait for Serve becomes a metric: seconds since the batch found
    Serve unavailable (its progress' ``waiting_for_serve_since``), 0 when it is not waiting.
    Whatever publishes per-batch progress calls this with the batch's progress."""
    waited = 0.0 if since is None else max(0.0, ((now or datetime.now(UTC)) - since).total_seconds())
    BATCH_WAITING_FOR_SERVE.labels(workflow_id).set(round(waited, 3))


# --- per-batch progress from Temporal ----------------------------------------------------------


@dataclasses.dataclass
class PollCounts:
    """What one poll did: running batches listed, read from their published progress, queried."""

    listed: int = 0
    published: int = 0
    queried: int = 0


async def poll_every(
    interval_s: float, poll: Callable[[], Awaitable[object]], what: str, logger: logging.Logger
) -> None:
    """``poll()`` every ``interval_s`` until cancelled (the /metrics pollers' loop). A failed poll
    (Temporal unreachable for a moment) is logged and the gauges keep their last values."""
    while True:
        try:
            await poll()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("%s poll failed: %s", what, exc)
        await asyncio.sleep(interval_s)


class BatchProgressPoller:
    """Every ``interval_s``: ONE visibility list call for the running BatchInference workflows
    (on ``task_queue``, or all with None); each batch's gauges come from the progress it
    published in its search attributes (``progress_attributes``). A batch that published none
    (an inline batch, one started before this release, or a namespace without the attributes) is
    asked with the ``progress`` query instead, unless ``query_fallback`` is off. Series of
    finished batches are removed. Run it in one place (``batch-inference progress-exporter``, or
    one worker with WORKER_BATCH_PROGRESS_METRICS=1), not in every worker replica."""

    def __init__(
        self,
        client: Client,
        task_queue: str | None,
        interval_s: float = 15.0,
        query_timeout_s: float = 5.0,
        query_fallback: bool = True,
    ):
        self.client, self.task_queue = client, task_queue
        self.interval_s, self.query_timeout_s = interval_s, query_timeout_s
        self.query_fallback = query_fallback
        self._known: set[str] = set()
        self.last = PollCounts()

    @property
    def visibility_query(self) -> str:
        query = f"WorkflowType = '{c.WORKFLOW_NAME}' AND ExecutionStatus = 'Running'"
        return f"{query} AND TaskQueue = '{self.task_queue}'" if self.task_queue else query

    async def run(self) -> None:
        await poll_every(self.interval_s, self.poll_once, "batch progress", log)

    async def poll_once(self) -> PollCounts:
        from services.worker import progress_attributes

        counts = PollCounts()
        seen: set[str] = set()
        async for wf in self.client.list_workflows(self.visibility_query):
            counts.listed += 1
            p = progress_attributes.read(wf.typed_search_attributes)
            if p is not None:
                counts.published += 1
            elif self.query_fallback:
                counts.queried += 1
                p = await self._query(wf.id)
            if p is None:
                if wf.id in self._known:
                    seen.add(wf.id)  # keep its last values
                continue
            seen.add(wf.id)
            self._export(wf.id, p)
        BATCHES_RUNNING.set(counts.listed)
        for gone in self._known - seen:
            self._forget(gone)
        self._known = seen
        self.last = counts
        return counts

    async def _query(self, workflow_id: str) -> Progress | None:
        from services.worker.contracts import Progress

        try:
            async with asyncio.timeout(self.query_timeout_s):
                handle = self.client.get_workflow_handle(workflow_id)
                return await handle.query(c.PROGRESS_QUERY, result_type=Progress)
        except Exception as exc:
            log.debug("progress query of %s failed: %s", workflow_id, exc)
            return None

    @staticmethod
    def _export(workflow_id: str, p: Progress) -> None:
        for state, value in zip(m.BATCH_RECORD_STATES, (p.total_records, p.succeeded, p.failed), strict=True):
            BATCH_RECORDS.labels(workflow_id, state).set(value)
        for state, value in zip(
            m.BATCH_SHARD_STATES, (p.shards_total, p.shards_done, p.shards_running), strict=True
        ):
            BATCH_SHARDS.labels(workflow_id, state).set(value)
        BATCH_RECORDS_PER_SECOND.labels(workflow_id).set(p.records_per_second)
        BATCH_ELAPSED.labels(workflow_id).set(p.elapsed_s)
        export_serve_wait(workflow_id, p.waiting_for_serve_since)

    @staticmethod
    def _forget(workflow_id: str) -> None:
        for metric, states in ((BATCH_RECORDS, m.BATCH_RECORD_STATES), (BATCH_SHARDS, m.BATCH_SHARD_STATES)):
            for state in states:
                with contextlib.suppress(KeyError):
                    metric.remove(workflow_id, state)
        for metric in (BATCH_RECORDS_PER_SECOND, BATCH_ELAPSED, BATCH_WAITING_FOR_SERVE):
            with contextlib.suppress(KeyError):
                metric.remove(workflow_id)
