"""The published progress snapshot: what the workflow writes and the exporter reads back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from temporalio.common import SearchAttributePair, TypedSearchAttributes

from services.worker import progress_attributes as pa
from services.worker.contracts import Progress


def _attrs(status: str, snapshot: str) -> TypedSearchAttributes:
    return TypedSearchAttributes(
        [SearchAttributePair(pa.STATUS_KEY, status), SearchAttributePair(pa.SNAPSHOT_KEY, snapshot)]
    )


def test_a_snapshot_of_huge_numbers_fits_sql_visibility_and_reads_back():
    at = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
    p = Progress(
        status="waiting_for_serve",
        total_records=10**12,
        succeeded=10**12 - 1,
        failed=10**9,
        shards_total=10**6,
        shards_done=10**6 - 1,
        shards_running=500,
        run=10**4,
        elapsed_s=31_536_000.123,
        records_per_second=1.0,
        waiting_for_serve_since=at - timedelta(hours=3),
        serve_attempts=10**6,
    )
    text = pa.PublishedProgress.of(p, at).encode()
    assert len(text) <= pa.SNAPSHOT_MAX_CHARS
    attrs = _attrs(p.status, text)
    back = pa.read(attrs, now=at + timedelta(seconds=30))
    assert back is not None and back.status == "waiting_for_serve"
    same = {"total_records", "succeeded", "failed", "shards_total", "shards_done", "shards_running", "run"}
    assert back.model_dump(include=same | {"serve_attempts", "waiting_for_serve_since"}) == p.model_dump(
        include=same | {"serve_attempts", "waiting_for_serve_since"}
    )
    assert back.elapsed_s == 31_536_000.1 + 30, "a running batch's elapsed time moves on after publishing"
    assert back.records_per_second == round((10**12 - 1 + 10**9) / 31_536_000.1, 1)


def test_a_finished_batch_keeps_its_elapsed_time_and_nothing_unreadable_is_exported():
    at = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
    text = pa.PublishedProgress.of(Progress(status="completed", elapsed_s=12.0), at).encode()
    done = _attrs("completed", text)
    assert pa.read(done, now=at + timedelta(hours=1)).elapsed_s == 12.0
    assert pa.read(TypedSearchAttributes.empty) is None
    for status, snapshot in (("running", "not json"), ("no-such-status", text), ("running", '{"t": 1}')):
        assert pa.read(_attrs(status, snapshot)) is None, (status, snapshot)
