"""The shard pipeline under cancellation: the parts whose requests are out are committed (the
drain), in order and each once, also when the cancellation arrives during a part's write."""

from __future__ import annotations

import asyncio
import json

import pytest
from temporalio.testing import ActivityEnvironment

from services.worker.activities import BatchActivities
from services.worker.layout import OutputLayout
from services.worker.lineage import report, verify
from tests.helpers.local_shards import echo_serve, plan_batch, run_shards, shard_input


@pytest.mark.parametrize("cancel_at_write", [1, 3])
async def test_a_cancellation_during_a_write_leaves_consistent_parts_and_the_resume_completes(
    tmp_path, monkeypatch, cancel_at_write
):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "x": i}) + "\n" for i in range(60)))
    output = str(tmp_path / "out")
    plan = plan_batch(str(source), output, shard_size=60)
    env = ActivityEnvironment()
    loop = asyncio.get_running_loop()
    writes = 0
    write_part = OutputLayout.write_part

    def write_and_cancel(self, *args):
        nonlocal writes
        writes += 1
        if writes == cancel_at_write:
            loop.call_soon_threadsafe(env.cancel)  # arrives while this write is under way
        return write_part(self, *args)

    monkeypatch.setattr(OutputLayout, "write_part", write_and_cancel)
    serve, calls = echo_serve()
    with pytest.raises(asyncio.CancelledError):
        await env.run(BatchActivities(serve).process_shard, shard_input(output, 0, checkpoint_every=5))
    monkeypatch.setattr(OutputLayout, "write_part", write_part)
    layout = OutputLayout(output)
    progress = layout.last_checkpoint(0, plan.plan_id, plan.shards[0].start())
    assert progress.part == writes and progress.done == 5 * writes, "each part committed once, in order"
    assert progress.record == progress.done, "the position agrees with the count"
    assert not layout.final_counts(0) and not list((tmp_path / "out").rglob("*.tmp-*")), (
        "no running file left"
    )
    sent = sum(calls)
    (result,) = await run_shards(plan, output, serve, checkpoint_every=5, attempt=2)
    assert result.resumed_from == progress.done and sum(calls) - sent == 60 - progress.done
    layout.finish(summary_of(layout, plan))
    verdict = verify(output)
    assert verdict.ok, report(verdict)


def summary_of(layout, plan):
    from services.worker.manifests import BatchSummary

    return BatchSummary(
        status="completed", workflow_id="w", input_uri=plan.input_uri, output_uri=layout.uri,
        errors_uri=layout.errors_uri(), model=None, total_records=plan.total_records, succeeded=60, failed=0,
        shards=1, shards_done=1, runs=1, resumed_records=0, duration_s=1, records_per_second=60,
    )  # fmt: skip
