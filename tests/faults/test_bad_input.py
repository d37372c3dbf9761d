"""Bad input: each kind gets a clear, specific error and nothing else is lost.

Already covered elsewhere (not repeated here): malformed JSON, a missing ``id`` and records the
model rejects in the errors file, and a plain budget overrun (tests/integration/test_batches.py);
a missing input file and an unknown model name (same file); oversize lines and bad ids at the
parser (tests/unit/test_jsonl.py); invalid tuning values failing the workflow
(tests/unit/test_workflow.py).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.testing import ActivityEnvironment

from services import constants as c
from services.cli import describe_failure
from services.cli import main as cli_main
from services.local.processes import venv_bin
from services.worker import duplicates, jsonl, plan
from services.worker.activities import BatchActivities
from services.worker.contracts import (
    INLINE_LIMIT_BYTES,
    BatchInferenceInput,
    BatchInferenceOutput,
    PlanInput,
    Tuning,
)
from services.worker.layout import OutputLayout
from tests.helpers.batches import execute_batch, run_and_read
from tests.helpers.records import read_outputs

IRIS = {"features": [5.1, 3.5, 1.4, 0.2]}


def line(obj) -> bytes:
    return json.dumps(obj).encode() + b"\n"


async def execute(client, queue: str, batch: BatchInferenceInput) -> BatchInferenceOutput:
    return await execute_batch(client, queue, batch, prefix="bad")


@pytest.mark.integration
async def test_every_bad_record_kind_lands_in_the_errors_file_with_its_line(client, run_worker, tmp_path):
    """Duplicates (in one shard and across shards), non-UTF-8 bytes, a line over 1 MiB, a JSON
    array, a boolean id: each an error with its line and reason; every good record exactly once."""
    lines = [
        line({"id": "a", **IRIS}),  # 1
        line({"id": "b", **IRIS}),  # 2
        line({"id": "a", **IRIS}),  # 3 duplicate of line 1, same shard
        b"\n",  # 4 blank: skipped, not a record
        line({"id": 1, **IRIS}),  # 5 the integer 1: not the same id as the string "1"
        line({"id": "1", **IRIS}),  # 6
        b'{"id": "latin", "note": "caf\xe9", "features": [1, 2, 3, 4]}\n',  # 7 not UTF-8
        b'{"id": "big", "pad": "' + b"x" * (jsonl.MAX_RECORD_BYTES + 10) + b'"}\n',  # 8 > 1 MiB
        b"[1, 2, 3]\n",  # 9 not an object
        line({"id": True, **IRIS}),  # 10 boolean id
        line({"id": "b", **IRIS}),  # 11 duplicate of line 2, another shard
        line({"id": "c", **IRIS}),  # 12
    ]
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(lines))
    output = tmp_path / "out"
    batch = BatchInferenceInput(
        input_uri=str(source),
        output_uri=str(output),
        model="iris",
        max_error_ratio=0.7,
        tuning=Tuning(shard_size=4, checkpoint_every=2),
    )
    result, results, errors = await run_and_read(client, run_worker, batch, prefix="bad")
    assert Counter(r["id"] for r in results) == Counter(["a", "b", 1, "1", "c"])
    by_line = {e["line"]: e for e in errors}
    assert sorted(by_line) == [3, 7, 8, 9, 10, 11]
    assert by_line[3] == {
        "id": "a", "file": str(source), "line": 3, "stage": "duplicate", "code": "duplicate_id",
        "reason": "duplicate id: line 1 has the same id",
    }  # fmt: skip
    assert by_line[11]["stage"] == "duplicate" and "line 2 has the same id" in by_line[11]["reason"]
    assert by_line[7]["stage"] == "parse" and "not UTF-8" in by_line[7]["reason"]
    assert (
        by_line[8]["stage"] == "parse"
        and f"longer than {jsonl.MAX_RECORD_BYTES} bytes" in by_line[8]["reason"]
    )
    assert "must be a JSON object" in by_line[9]["reason"]
    codes = {line: by_line[line]["code"] for line in (7, 8, 9, 10)}
    assert codes == {7: "not_utf8", 8: "too_long", 9: "not_an_object", 10: "bad_id"}
    assert by_line[10]["id"] is True and "'id' must be a string or an integer" in by_line[10]["reason"]
    assert (result.total_records, result.succeeded, result.failed) == (11, 5, 6)
    summary = json.loads((output / c.SUMMARY_FILE).read_text())
    assert (summary["status"], summary["succeeded"], summary["failed"]) == ("completed", 5, 6)
    assert json.loads((output / c.PLAN_FILE).read_text())["duplicate_records"] == 2


@pytest.mark.integration
async def test_over_budget_fails_says_so_and_the_summary_agrees(client, run_worker, tmp_path):
    records = [{"id": f"r{i}", **IRIS} for i in range(30)]
    records[12] = {"id": "r12", "features": [1, 2]}  # the model rejects it
    records[17] = {"id": "r17", "features": ["x", 1, 2, 3]}
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(line(r) for r in records))
    output = tmp_path / "out"
    batch = BatchInferenceInput(
        input_uri=str(source),
        output_uri=str(output),
        model="iris",
        max_error_ratio=0.05,  # 1 of 30 allowed
        tuning=Tuning(shard_size=10, max_concurrent_shards=1),
    )
    async with run_worker() as queue:
        with pytest.raises(WorkflowFailureError) as err:
            await execute(client, queue, batch)
    text = describe_failure(err.value)
    assert "error budget exceeded: 2 of 30 records failed (max_error_ratio=0.05 allows 1)" in text
    assert f"see {output}/errors" in text
    summary = json.loads((output / c.SUMMARY_FILE).read_text())
    assert (summary["status"], summary["failed"], summary["succeeded"]) == ("failed", 2, 18)
    _, errors = read_outputs(output)
    assert sorted(e["id"] for e in errors) == ["r12", "r17"]
    assert not (output / "shard-00002.jsonl").exists(), "no shard starts once over budget"


@pytest.mark.integration
@pytest.mark.parametrize("content", [b"", b"\n\n  \n"], ids=["empty", "blank-lines"])
async def test_empty_input_fails_at_once(client, run_worker, tmp_path, content):
    source = tmp_path / "in.jsonl"
    source.write_bytes(content)
    batch = BatchInferenceInput(input_uri=str(source), output_uri=str(tmp_path / "out"), model="echo")
    async with run_worker() as queue:
        with pytest.raises(WorkflowFailureError) as err:
            await execute(client, queue, batch)
    assert f"input has no records (empty file): {source}" in describe_failure(err.value)


@pytest.mark.integration
async def test_unwritable_output_location_fails_at_once(client, run_worker, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_bytes(line({"id": 1, "input": 1}))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    batch = BatchInferenceInput(input_uri=str(source), output_uri=str(blocker / "out"), model="echo")
    async with run_worker() as queue:
        with pytest.raises(WorkflowFailureError) as err:
            await execute(client, queue, batch)
    expected = f"cannot write to output location {blocker / 'out'}: Not a directory"
    assert expected in describe_failure(err.value)


async def temporal_cli(server, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        venv_bin("temporal"), *args, "--address", server.address,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return proc.returncode, out.decode()


@pytest.mark.integration
@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"input_uri": "/data/in.jsonl"}, "'output_uri' is required with 'input_uri'"),
        (
            {"input_uri": "/in.jsonl", "output_uri": "/o", "modle": "iris"},
            "modle\n  Extra inputs are not permitted",
        ),
        ({"records": [{"x": "y" * 1000}] * 300}, "Write them to a JSONL file and pass 'input_uri'"),
    ],
    ids=["missing-output", "typo-in-a-field", "oversize-inline"],
)
async def test_invalid_input_through_the_temporal_cli_fails_the_workflow_clearly(
    client, run_worker, temporal_server, tmp_path, payload, expected
):
    workflow_id = f"cli-bad-{uuid.uuid4().hex[:8]}"
    input_file = tmp_path / "input.json"
    input_file.write_text(json.dumps(payload))
    async with run_worker() as queue:
        code, out = await temporal_cli(
            temporal_server, "workflow", "start", "--type", c.WORKFLOW_NAME, "--task-queue", queue,
            "--workflow-id", workflow_id, "--input-file", str(input_file),
        )  # fmt: skip
        assert code == 0, out
        with pytest.raises(WorkflowFailureError) as err:
            await client.get_workflow_handle(workflow_id).result()
    assert expected in describe_failure(err.value)


@pytest.mark.integration
async def test_malformed_json_is_refused_by_the_temporal_cli_before_anything_starts(temporal_server):
    code, out = await temporal_cli(
        temporal_server, "workflow", "start", "--type", c.WORKFLOW_NAME, "--task-queue", "nobody",
        "--workflow-id", f"cli-bad-{uuid.uuid4().hex[:8]}", "--input", "{bad}",
    )  # fmt: skip
    assert code != 0 and "input #1 is not valid JSON" in out, out


def test_oversize_inline_input_is_refused_by_the_project_cli_with_advice(tmp_path, capsys):
    records = tmp_path / "records.json"
    records.write_text(json.dumps([{"text": "x" * 1000}] * (INLINE_LIMIT_BYTES // 1000 + 50)))
    assert cli_main(["submit", "--inline", f"@{records}"]) == 2
    err = capsys.readouterr().err
    assert "the limit is 256 KiB. Write them to a JSONL file and pass 'input_uri'" in err


async def test_a_mostly_duplicated_input_fails_planning_with_an_example(tmp_path, monkeypatch):
    """Past MAX_DUPLICATE_RECORDS the input is taken to be broken (e.g. concatenated twice)."""
    monkeypatch.setattr(plan, "MAX_DUPLICATE_RECORDS", 3)
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(line({"id": i % 5}) for i in range(10)))
    with pytest.raises(
        Exception,
        match=r"more than 3 records repeat an earlier id \(e.g. id \d at line \d+ repeats line \d\)",
    ) as err:
        await ActivityEnvironment().run(
            BatchActivities(None).plan_batch,  # type: ignore[arg-type]  # planning calls no Serve
            PlanInput(input_uri=str(source), output_uri=str(tmp_path / "out"), shard_size=4),
        )
    assert err.value.type == "DuplicateIds" and err.value.non_retryable


def test_duplicate_detection_spills_to_disk_and_stays_exact(tmp_path, monkeypatch):
    """The id hashes spill to temp files past a small threshold; the result is the same."""
    monkeypatch.setattr(duplicates.DuplicateIds, "SPILL_AT", 4)
    source = tmp_path / "in.jsonl"
    ids = [f"id-{i}" for i in range(3_000)] + ["id-7", "id-2999", 7]
    source.write_bytes(b"".join(line({"id": i}) for i in ids))
    made = plan.make_plan(
        PlanInput(input_uri=str(source), output_uri=str(tmp_path / "out"), shard_size=1_000)
    )
    marked = {d.line: d.first_line for s in made.shards for d in s.duplicates}
    assert marked == {3001: 8, 3002: 3000}
    assert made.duplicate_records == 2 and made.total_records == 3_003
    assert Counter(len(s.duplicates) for s in made.shards) == Counter({0: 3, 2: 1})


def test_a_new_batch_drops_the_final_files_an_earlier_batch_left_in_its_folder(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(line({"id": i}) for i in range(10)))
    out = tmp_path / "out"
    (out / "errors").mkdir(parents=True)
    for name in ("shard-00001.jsonl", "shard-00007.jsonl", "errors/shard-00009.jsonl", "notes.jsonl"):
        (out / name).write_text("earlier\n")
    made = plan.make_plan(PlanInput(input_uri=str(source), output_uri=str(out), shard_size=5))
    assert len(made.shards) == 2
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.jsonl")) == ["notes.jsonl"]


def test_final_files_of_stopped_shards_are_counted_only_when_whole(tmp_path):
    (tmp_path / "errors").mkdir()
    (tmp_path / "shard-00001.jsonl").write_text('{"id":1}\n{"id":2}\n')
    (tmp_path / "errors" / "shard-00001.jsonl").write_text('{"id":3}\n')
    (tmp_path / "shard-00002.jsonl").write_text('{"id":4}\n')  # no errors file: not committed
    assert OutputLayout(str(tmp_path)).count_final([1, 2, 3]) == (2, 1)
