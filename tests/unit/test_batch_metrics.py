"""What a batch's summary adds to the worker's batch counters (retried and resumed records)."""

from __future__ import annotations

import uuid

from prometheus_client import REGISTRY

from services import metrics as m
from services.worker import telemetry
from services.worker.manifests import BatchSummary


def _summary(model: str, **fields) -> BatchSummary:
    base = dict(
        status="completed", workflow_id="wf", input_uri="in", output_uri="out", errors_uri="out/errors",
        model=model, total_records=10, succeeded=7, failed=3, shards=1, shards_done=1, runs=1,
        resumed_records=0, duration_s=1.0, records_per_second=10.0,
    )  # fmt: skip
    return BatchSummary(**{**base, **fields})


def _value(metric: m.Metric, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(metric.prom, labels)


def test_a_retry_counts_its_records_by_outcome_and_a_resume_its_resumed_records() -> None:
    model = f"unit-{uuid.uuid4().hex[:8]}"  # its own series: other tests share the registry
    telemetry.init_model(model)
    for outcome in m.RETRY_OUTCOMES:
        assert _value(m.RETRIED_RECORDS, model=model, outcome=outcome) == 0
    assert _value(m.RESUMED_RECORDS, model=model) == 0

    telemetry.record_batch_finished(_summary(model, resumed_records=4))  # not a retry
    assert _value(m.RETRIED_RECORDS, model=model, outcome=m.RETRY_FIXED) == 0
    assert _value(m.RESUMED_RECORDS, model=model) == 4

    telemetry.record_batch_finished(_summary(model, retry_of="earlier", status="failed"))
    assert _value(m.RETRIED_RECORDS, model=model, outcome=m.RETRY_FIXED) == 7
    assert _value(m.RETRIED_RECORDS, model=model, outcome=m.RETRY_FAILED) == 3
    assert _value(m.RESUMED_RECORDS, model=model) == 4
    assert _value(m.BATCHES_FINISHED, model=model, status="failed") == 1


async def test_a_failed_poll_is_logged_and_polling_goes_on(caplog) -> None:
    """The /metrics pollers' loop (telemetry.poll_every): an error (Temporal away for a moment)
    is a warning, the next poll comes all the same; only a cancellation ends it."""
    import asyncio
    import logging

    calls: list[int] = []
    done = asyncio.Event()

    async def poll() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("Temporal unreachable")
        if len(calls) == 3:
            done.set()

    logger = logging.getLogger("test-poll-every")
    loop = asyncio.create_task(telemetry.poll_every(0, poll, "test gauges", logger))
    with caplog.at_level(logging.WARNING, logger="test-poll-every"):
        await asyncio.wait_for(done.wait(), 10)
    loop.cancel()
    try:
        await loop
    except asyncio.CancelledError:
        pass
    assert loop.cancelled() and len(calls) >= 3
    assert [r.getMessage() for r in caplog.records] == ["test gauges poll failed: Temporal unreachable"]
