"""Running a batch end to end and checking its outcome: every input id exactly once."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle

from services import constants as c
from services.worker.contracts import BatchInferenceInput, BatchInferenceOutput, Tuning
from services.worker.lineage import report, verify
from tests.helpers.records import echo_records, read_outputs, write_jsonl


async def start_batch(
    client: Client, queue: str, batch, prefix: str = "it", workflow_id: str | None = None
) -> WorkflowHandle[Any, BatchInferenceOutput]:
    """Start a BatchInference workflow on ``queue``, its id ``workflow_id`` or ``<prefix>-<random>``;
    the handle's result is typed."""
    return await client.start_workflow(
        c.WORKFLOW_NAME,
        batch,
        id=workflow_id or f"{prefix}-{uuid.uuid4().hex[:8]}",
        task_queue=queue,
        result_type=BatchInferenceOutput,
    )


async def execute_batch(client: Client, queue: str, batch, prefix: str = "it"):
    """Run a BatchInference workflow to its end on ``queue`` and return its typed result."""
    return await (await start_batch(client, queue, batch, prefix)).result()


def jsonl_batch(
    tmp_path: Path, records: list, model: str | None, tuning: Tuning | None = None, **fields: Any
) -> tuple[Path, Path, BatchInferenceInput]:
    """``records`` (objects, or lines as text) in ``tmp_path/in.jsonl`` and a batch of ``model``
    writing to ``tmp_path/out``: (input file, output folder, batch input). ``fields``: the
    input's other fields (``max_error_ratio``, ...)."""
    source = write_jsonl(tmp_path / "in.jsonl", records)
    output = tmp_path / "out"
    batch = BatchInferenceInput(
        input_uri=str(source), output_uri=str(output), model=model, tuning=tuning or Tuning(), **fields
    )
    return source, output, batch


def echo_batch(
    tmp_path: Path, total: int, prefix: str = "e", **tuning
) -> tuple[list[dict], Path, BatchInferenceInput]:
    """``total`` echo records in ``tmp_path/in.jsonl`` and a batch writing to ``tmp_path/out``:
    (records, output folder, batch input)."""
    records = echo_records(total, prefix)
    _, output, batch = jsonl_batch(tmp_path, records, "echo", Tuning(**tuning))
    return records, output, batch


async def run_and_read(
    client: Client, run_worker: Callable[[], AbstractAsyncContextManager[str]], batch, prefix: str = "it"
) -> tuple[BatchInferenceOutput, list[dict], list[dict]]:
    """Run ``batch`` to its end on a fresh worker (the ``run_worker`` fixture) and read its JSONL
    output folder: (workflow result, results, errors)."""
    async with run_worker() as queue:
        result = await execute_batch(client, queue, batch, prefix=prefix)
    results, errors = read_outputs(Path(batch.output_uri))
    return result, results, errors


def assert_exactly_once(output: Path, ids: list, result: BatchInferenceOutput | None = None) -> None:
    """Every input id exactly once across the results and errors (``batch-inference verify``'s
    check), and the summary (and the workflow result) counting what the files hold."""
    verdict = verify(str(output))
    assert verdict.ok, report(verdict)
    assert verdict.input_records == len(ids)
    summary = json.loads((output / c.SUMMARY_FILE).read_text())
    assert summary["status"] == "completed"
    counts = (len(ids), verdict.results, verdict.errors)
    assert (summary["total_records"], summary["succeeded"], summary["failed"]) == counts
    if result is not None:
        assert (result.total_records, result.succeeded, result.failed) == counts
    assert not (output / c.PARTS_DIR).exists(), "a completed batch leaves no parts behind"
