"""Day-2 operations through the project CLI as a user runs it, on the real dev server and Ray
Serve: retry a batch's failed records, resume a cancelled batch, verify lineage."""

from __future__ import annotations

import json
import random
import uuid

import pytest
from temporalio.client import WorkflowFailureError

from services import constants as c
from services.worker.contracts import BatchInferenceInput, Tuning
from tests.helpers.batches import execute_batch, start_batch
from tests.helpers.cli import run_cli
from tests.helpers.local_shards import plan_batch
from tests.helpers.proxy import CountingProxy
from tests.helpers.records import echo_records, iris_records, write_jsonl
from tests.helpers.waiting import wait_until
from tests.helpers.workers import Attempts, worker_on

pytestmark = pytest.mark.integration


async def test_retry_fixes_the_failed_records_and_verify_counts_them(
    client, run_worker, temporal_server, tmp_path
):
    """Records the iris model rejects fail; a retry of only the model failures, with the echo
    model, fixes them; verify then proves the whole lineage and counts them as succeeded."""
    records = iris_records(280, "ok") + [{"id": f"text{i}", "input": {"text": "not iris"}} for i in range(20)]
    random.Random(7).shuffle(records)
    source = write_jsonl(tmp_path / "in.jsonl", records)
    output = tmp_path / "out"
    batch = BatchInferenceInput(
        input_uri=str(source), output_uri=str(output), model="iris", max_error_ratio=0.1,
        tuning=Tuning(shard_size=100, checkpoint_every=40),
    )  # fmt: skip
    address = temporal_server.address
    async with run_worker() as queue:
        result = await execute_batch(client, queue, batch, prefix="orig")
        assert (result.succeeded, result.failed) == (280, 20)
        retried = await run_cli(
            "retry", str(output), "--only", "model", "--model", "echo", "--wait",
            temporal_address=address, task_queue=queue,
        )  # fmt: skip
        assert retried.code == 0, retried.err
        verified = await run_cli("verify", str(output), temporal_address=address, task_queue=queue)
        again = await run_cli(
            "retry", str(output), "--only", "parse", temporal_address=address, task_queue=queue
        )
    assert verified.code == 0, verified.out + verified.err
    assert "300 input records, every input record exactly once" in verified.out
    assert "combined: 300 succeeded, 0 failed; 20 fixed by retries" in verified.out
    summary = json.loads((output / c.SUMMARY_FILE).read_text())
    (retry_uri,) = summary["retries"]
    assert retry_uri.startswith(str(output / c.RETRIES_DIR))
    retry_summary = json.loads(
        (output / c.RETRIES_DIR / retry_uri.rsplit("/", 1)[-1] / c.SUMMARY_FILE).read_text()
    )
    assert (retry_summary["retry_of"], retry_summary["succeeded"], retry_summary["failed"]) == (
        str(output),
        20,
        0,
    )
    assert (again.code, again.out.strip()) == (
        0,
        f"nothing to retry: the batch in {output} has no failed records of parse",
    )


async def test_nothing_to_retry_and_no_batch_are_said_plainly(temporal_server, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", echo_records(3))
    plan_batch(str(source), str(tmp_path / "out"))  # a batch without failures
    address = temporal_server.address
    nothing = await run_cli("retry", str(tmp_path / "out"), temporal_address=address, task_queue="q")
    assert (nothing.code, nothing.out.strip()) == (
        0,
        f"nothing to retry: the batch in {tmp_path / 'out'} has no failed records",
    )
    missing = await run_cli("verify", str(tmp_path / "elsewhere"), temporal_address=address, task_queue="q")
    assert missing.code == 2 and "no batch in" in missing.err and "Traceback" not in missing.err


async def test_a_cancelled_batch_resumes_under_its_id_and_sends_only_what_was_not_committed(
    client, temporal_server, serve_stack, serve_token_file, tmp_path
):
    total = 3_000
    records = echo_records(total, "res")
    source = write_jsonl(tmp_path / "in.jsonl", records)
    output = tmp_path / "out"
    batch = BatchInferenceInput(
        input_uri=str(source), output_uri=str(output), model="echo",
        tuning=Tuning(
            shard_size=500, max_concurrent_shards=2, checkpoint_every=100, micro_batch_size=10,
            max_in_flight=1, parts_in_flight=1, heartbeat_timeout_s=2,
        ),
    )  # fmt: skip
    workflow_id = f"resume-{uuid.uuid4().hex[:8]}"
    address = temporal_server.address
    with CountingProxy(serve_stack.url) as proxy:
        async with worker_on(client, proxy.url, serve_token_file, Attempts()) as queue:
            handle = await start_batch(client, queue, batch, workflow_id=workflow_id)
            await wait_until(lambda: proxy.records >= 1_400, 300, "about half sent")
            await handle.cancel()
            with pytest.raises(WorkflowFailureError):
                await handle.result()
            cancelled = json.loads((output / c.SUMMARY_FILE).read_text())
            resumed = await run_cli(
                "resume", workflow_id, "--wait", temporal_address=address, task_queue=queue
            )
            verified = await run_cli("verify", str(output), temporal_address=address, task_queue=queue)
            with source.open("a") as fh:
                fh.write(json.dumps({"id": "late", "input": {}}) + "\n")
            changed = await run_cli(
                "resume", workflow_id, "--wait", temporal_address=address, task_queue=queue
            )
    assert cancelled["status"] == "cancelled"
    assert resumed.code == 0, resumed.err
    assert verified.code == 0 and "every input record exactly once" in verified.out, verified.out
    resent = proxy.records - total
    # Per shard running when cancelled (2), at most its one part in flight is sent again.
    assert 0 <= resent <= 2 * 100, f"{resent} records sent twice"
    summary = json.loads((output / c.SUMMARY_FILE).read_text())
    assert (summary["status"], summary["succeeded"]) == ("completed", total)
    assert summary["resumed_records"] >= cancelled["succeeded"], "finished shards and committed parts reused"
    assert changed.code == 1 and "the input changed since the batch in" in changed.err, changed.err
