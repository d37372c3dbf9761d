"""Batches end to end: real Temporal dev server, real worker, real Ray Serve with auth."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import Counter

import pytest
from temporalio.client import WorkflowFailureError

from services import constants as c
from services.cli import describe_failure
from services.worker.contracts import BatchInferenceInput, BatchInferenceOutput, Progress, Tuning
from tests.helpers.batches import execute_batch, jsonl_batch, run_and_read, start_batch
from tests.helpers.records import iris_records, read_outputs, write_jsonl

pytestmark = pytest.mark.integration


async def execute(client, queue: str, batch: BatchInferenceInput) -> BatchInferenceOutput:
    return await execute_batch(client, queue, batch, prefix="it")


async def test_original_two_request_example(client, run_worker):
    batch = BatchInferenceInput(
        records=[{"prompt": "first"}, {"prompt": "second"}], tuning=Tuning(micro_batch_size=1)
    )
    async with run_worker() as queue:
        result = await execute(client, queue, batch)
    assert [p.prediction for p in result.predictions] == [{"prompt": "first"}, {"prompt": "second"}]
    assert (result.succeeded, result.failed, result.shards) == (2, 0, 2)


async def test_file_batch_writes_every_id_exactly_once(client, run_worker, tmp_path):
    records = iris_records(2_345)
    _, output, batch = jsonl_batch(
        tmp_path,
        records,
        "iris",
        Tuning(shard_size=500, checkpoint_every=200, micro_batch_size=16, max_concurrent_shards=3),
    )
    async with run_worker() as queue:
        handle = await start_batch(client, queue, batch, "it")
        result = await handle.result()
        # Asked after the end, the query replays the whole history (patch markers included).
        final = await handle.query(c.PROGRESS_QUERY, result_type=Progress)
    assert (final.status, final.succeeded, final.shards_done) == ("completed", 2_345, 6)
    results, errors = read_outputs(output)
    assert Counter(r["id"] for r in results) == Counter(r["id"] for r in records)
    assert not errors
    assert {r["prediction"]["label"] for r in results} == {"setosa", "versicolor", "virginica"}
    # at most 500 records per shard, equal, a multiple of the window of 3: 6 shards of 390-391
    assert (result.total_records, result.succeeded, result.failed, result.shards) == (2_345, 2_345, 0, 6)
    summary = json.loads((output / "_summary.json").read_text())
    assert summary["status"] == "completed" and summary["succeeded"] == 2_345
    assert not (output / "_parts").exists()


async def test_bad_records_land_in_the_errors_file(client, run_worker, tmp_path):
    lines = [
        json.dumps({"id": "ok-1", "features": [5.1, 3.5, 1.4, 0.2]}),
        "{this is not json",
        json.dumps({"features": [1, 2, 3, 4]}),
        "",
        json.dumps({"id": "bad-model", "features": [1, 2]}),
        json.dumps({"id": "ok-2", "features": [6.7, 3.0, 5.2, 2.3]}),
    ]
    _, _, batch = jsonl_batch(tmp_path, lines, "iris", max_error_ratio=0.8)
    result, results, errors = await run_and_read(client, run_worker, batch)
    assert sorted(r["id"] for r in results) == ["ok-1", "ok-2"]
    by_line = {e["line"]: e for e in errors}
    assert set(by_line) == {2, 3, 5}
    assert by_line[2]["stage"] == "parse" and "malformed JSON" in by_line[2]["reason"]
    assert "no 'id'" in by_line[3]["reason"]
    assert by_line[5]["id"] == "bad-model" and by_line[5]["stage"] == "model"
    assert "4 numeric features" in by_line[5]["reason"]
    assert (result.total_records, result.succeeded, result.failed) == (5, 2, 3)


async def test_error_budget_exceeded_says_so(client, run_worker, tmp_path):
    _, _, batch = jsonl_batch(tmp_path, [{"id": i, "features": [1]} for i in range(10)], "iris")
    async with run_worker() as queue:
        with pytest.raises(WorkflowFailureError) as err:
            await execute(client, queue, batch)
    # The batch stops at the first shard past the budget, whichever of the 4 shards ends first.
    assert re.search(r"error budget exceeded: \d+ of 10 records failed", str(err.value.cause))


@pytest.mark.parametrize(
    ("token", "status", "advice"), [(None, 401, "no valid Authorization"), ("wrong", 403, "rejected")]
)
async def test_auth_failures_fail_fast_and_say_why(
    client, run_worker, tmp_path, token, status, advice, serve_token
):
    _, _, batch = jsonl_batch(tmp_path, iris_records(10), "iris")
    started = time.monotonic()
    async with run_worker(token=token) as queue:
        with pytest.raises(WorkflowFailureError) as err:
            await execute(client, queue, batch)
    elapsed = time.monotonic() - started
    text = describe_failure(err.value)
    assert f"Serve answered {status}" in text and advice in text
    assert serve_token not in text
    assert elapsed < 15, "non-retryable: no retry loop"


async def test_continue_as_new_through_several_runs(client, run_worker, tmp_path):
    records = [{"id": f"e{i}", "input": {"n": i}} for i in range(1_000)]
    tuning = Tuning(
        shard_size=50, checkpoint_every=25, max_concurrent_shards=4, continue_as_new_after_shards=6
    )
    _, _, batch = jsonl_batch(tmp_path, records, "echo", tuning)
    result, results, errors = await run_and_read(client, run_worker, batch)
    assert result.runs == 4 and result.shards == 20
    assert sorted(r["id"] for r in results) == sorted(r["id"] for r in records)
    assert all(r["prediction"] == {"n": int(r["id"][1:])} for r in results)
    assert not errors and result.succeeded == 1_000


async def test_missing_input_and_unknown_model_are_clear(client, run_worker, tmp_path):
    async with run_worker() as queue:
        with pytest.raises(WorkflowFailureError) as err:
            await execute(
                client,
                queue,
                BatchInferenceInput(input_uri=str(tmp_path / "nope.jsonl"), output_uri=str(tmp_path / "o")),
            )
        assert "input not found" in describe_failure(err.value)  # as the CLI prints it
        source = write_jsonl(tmp_path / "in.jsonl", iris_records(3))
        with pytest.raises(WorkflowFailureError) as err:
            await execute(
                client,
                queue,
                BatchInferenceInput(input_uri=str(source), output_uri=str(tmp_path / "o"), model="gpt9"),
            )
        assert "unknown model 'gpt9'" in describe_failure(err.value)


async def test_temporal_cli_line_from_the_readme(client, run_worker, temporal_server, tmp_path):
    """The exact `temporal workflow start` form the README shows, with the real CLI."""
    import asyncio

    from services.local.processes import venv_bin

    source = write_jsonl(tmp_path / "in.jsonl", iris_records(120))
    output = tmp_path / "out"
    workflow_id = f"cli-{uuid.uuid4().hex[:8]}"
    payload = json.dumps({"input_uri": str(source), "output_uri": str(output), "model": "iris"})
    async with run_worker() as queue:
        proc = await asyncio.create_subprocess_exec(
            venv_bin("temporal"), "workflow", "start",
            "--address", temporal_server.address,
            "--type", c.WORKFLOW_NAME, "--task-queue", queue,
            "--workflow-id", workflow_id, "--input", payload,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out.decode()
        result = await client.get_workflow_handle(workflow_id, result_type=BatchInferenceOutput).result()
    assert result.succeeded == 120
    results, _ = read_outputs(output)
    assert sorted(r["id"] for r in results) == sorted(r["id"] for r in iris_records(120))


async def test_cancel_stops_shards_and_marks_the_summary(client, run_worker, tmp_path):
    """Cancel mid-batch: running shards stop, finished shards keep their final files, unfinished
    ones keep their committed parts, the summary says cancelled and counts what is final. A new
    batch into the same folder then completes with every id exactly once."""
    import asyncio

    from temporalio.exceptions import CancelledError

    ids = list(range(3_000))
    tuning = Tuning(
        shard_size=500,
        checkpoint_every=50,
        micro_batch_size=1,
        max_in_flight=1,
        max_concurrent_shards=2,
        heartbeat_timeout_s=2,  # heartbeats (which deliver the cancellation) every ~0.7 s
    )
    _, output, batch = jsonl_batch(tmp_path, [{"id": i, "input": i} for i in ids], "echo", tuning)
    async with run_worker() as queue:
        handle = await start_batch(client, queue, batch, "cancel")

        def running_with_parts() -> list:
            # Shards early in their run: 1-3 of their 10 parts committed, so the cancellation
            # reaches them (at their next heartbeat) well before they could finish.
            return [
                d
                for d in (output / "_parts").glob("*/")
                if not (output / f"{d.name}.jsonl").exists()
                and 1 <= len(list(d.glob("part-*.ckpt.jsonl"))) <= 3
            ]

        # Wait for the moment itself, however slow the machine: a fixed 30 s was not always
        # enough under the whole suite's load (one request per record), and cancelling after it
        # anyway could find no shard running.
        deadline = time.monotonic() + 180
        while not ((output / "shard-00000.jsonl").exists() and running_with_parts()):
            assert time.monotonic() < deadline, "never a finished shard and a running one at once"
            await asyncio.sleep(0.05)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as err:
            await handle.result()
        assert isinstance(err.value.cause, CancelledError)

        def snapshot():
            return sorted((p.name, p.stat().st_mtime_ns) for p in output.rglob("*.jsonl"))

        before = snapshot()
        await asyncio.sleep(2)
        assert snapshot() == before, "no shard writes anything after the cancellation"

        summary = json.loads((output / "_summary.json").read_text())
        assert summary["status"] == "cancelled"
        finished, final_errors = read_outputs(output)
        assert not final_errors
        assert 0 < summary["succeeded"] == len(finished) < len(ids), "the summary counts the final files"
        unfinished = [d for d in (output / "_parts").iterdir() if not (output / f"{d.name}.jsonl").exists()]
        assert unfinished, "a shard was running: its committed parts are kept"
        assert len(list((output / "_parts").iterdir())) == len(unfinished), "finished shards' parts dropped"
        partial = [
            json.loads(line)["id"]
            for d in unfinished
            for f in d.glob("part-*.out.jsonl")
            for line in f.open()
        ]
        assert len(partial) == len(set(partial)) and not set(partial) & {r["id"] for r in finished}
        assert not (output / "shard-00005.jsonl").exists(), "shards not yet started never start"

        # The same batch again, into the same folder, with other tuning: complete, exactly once.
        batch.tuning = Tuning(shard_size=500, checkpoint_every=120, micro_batch_size=32)
        result = await execute(client, queue, batch)
    results, errors = read_outputs(output)
    assert sorted(r["id"] for r in results) == ids and not errors
    assert result.succeeded == len(ids) and not (output / "_parts").exists()
