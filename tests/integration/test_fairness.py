"""Fair sharing and priority on the real dev server (fairness on, as the project starts it) and
a real Serve, with one worker of two activity slots so shards really queue: the scenarios of
``bench/fairness.py``, checked. Every time comes from the workflows' histories."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.fairness import priority_jump, slow_worker, tenants

pytestmark = pytest.mark.integration

SLOTS = 2


async def test_two_tenants_share_the_workers_while_both_run(client, run_worker, tmp_path: Path):
    async with run_worker(**slow_worker(SLOTS)) as queue:
        result = await tenants(client, queue, tmp_path, per_tenant=4, shards=6, shard_records=1000)
    assert all(r == {"succeeded": 6000, "failed": 0} for rs in result["results"].values() for r in rs)
    spans = result["spans"]
    assert {s.fairness_key for s in spans["a"]} == {"a"} and {s.fairness_key for s in spans["b"]} == {"b"}
    # A real backlog: the last tenant's shards were queued while the first's ran.
    assert result["both_running_s"] > 4 * result["median_shard_s"], result
    shares = result["shares_while_both_run"]
    assert 0.35 <= shares["a"] <= 0.65 and 0.35 <= shares["b"] <= 0.65, result["share_timeline"]


async def test_a_priority_1_batch_overtakes_a_backlog_of_priority_3(client, run_worker, tmp_path: Path):
    async with run_worker(**slow_worker(SLOTS)) as queue:
        result = await priority_jump(client, queue, tmp_path, background=8, shards=4, shard_records=1000)
    assert result["succeeded"] == 8 * 4000 + 2000
    # Started with no Priority on the workflow: the shards got it from the input.
    assert result["urgent_priority_on_shards"] == [1]
    # It was scheduled behind a real backlog and took the first slot that freed: no more shards
    # started while it waited than polls could have been out already (one per slot), so it
    # started within one shard's duration (the longest: timing on shared cores varies).
    assert result["queued_when_scheduled"] >= 4 * SLOTS, result
    assert result["started_ahead"] <= SLOTS, result
    assert result["overtook"] >= result["queued_when_scheduled"] - SLOTS, result
    assert result["first_shard_wait_s"] <= result["longest_shard_s"], result
