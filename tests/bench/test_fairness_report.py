"""``bench/fairness.py``'s arithmetic on spans made up here: the window while both tenants run,
their shares in it, the timeline, and the report's text (the scenarios themselves run in
tests/integration/test_fairness.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bench.fairness import ShardSpan, both_running, markdown, share_timeline, shares

T0 = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)


def span(tenant: str, scheduled: float, started: float, completed: float, records: int = 100) -> ShardSpan:
    at = [T0 + timedelta(seconds=s) for s in (scheduled, started, completed)]
    return ShardSpan(f"batch-{tenant}", *at, records=records, priority_key=0, fairness_key=tenant)


def test_shares_count_only_what_finished_while_both_ran():
    spans = {
        # a: queued first, one shard done before b queued anything, one after b's last
        "a": [span("a", 0, 0, 1), span("a", 0, 1, 3), span("a", 0, 3, 5), span("a", 0, 5, 9)],
        "b": [span("b", 2, 3, 4), span("b", 2, 4, 6)],
    }
    start, end = both_running(spans)
    assert (start, end) == (T0 + timedelta(seconds=2), T0 + timedelta(seconds=6))
    # In (2 s, 6 s]: a's shards done at 3 and 5, b's at 4 and 6.
    assert shares(spans, start, end) == {"a": 0.5, "b": 0.5}
    timeline = share_timeline(spans, points=2)
    assert timeline == [{"t_s": 2.0, "a": 0.5, "b": 0.5}, {"t_s": 4.0, "a": 0.5, "b": 0.5}]


def test_first_come_first_served_shows_as_one_tenant_taking_all():
    spans = {"a": [span("a", 0, i, i + 1) for i in range(6)], "b": [span("b", 1, 6, 7)]}
    start, end = both_running(spans)
    assert shares(spans, start, end) == {"a": 1.0, "b": 0.0}


def test_markdown_names_both_runs():
    tenants = {
        "batches_per_tenant": 4, "shards_per_batch": 6, "records_per_shard": 1000, "median_shard_s": 1.0,
        "both_running_s": 20.0, "shares_while_both_run": {"a": 0.5, "b": 0.5},
        "share_timeline": [{"t_s": 10.0, "a": 0.5, "b": 0.5}],
    }  # fmt: skip
    priority = {
        "background_batches": 8, "shards_per_batch": 4, "median_shard_s": 1.0, "first_shard_wait_s": 0.4,
        "wait_in_shards": 0.4, "queued_when_scheduled": 20, "overtook": 18,
    }  # fmt: skip
    run = {"server": "x", "tenants": tenants, "priority": priority}
    text = markdown({"when": "now", "slots": 2, "cpus": 2, "fairness": run, "fifo": run, "defaults": run})
    assert text.count("shares of records done while both run: a 50%, b 50%") == 3
    assert "its first shard waited 0.4 s" in text and "it overtook 18" in text
