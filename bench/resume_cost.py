"""What resuming a stopped batch costs: records sent twice.

Starts its own Temporal dev server and local Ray Serve (the shared Serve config, auth on) and an
in-process worker whose Serve client counts every record it sends. Runs one batch of echo
records with the default tuning, cancels it once ``--stop-at`` of its records are done, then
starts it again under the same workflow id and folder (what ``batch-inference resume`` does)
and reports how many records the two runs sent beyond the batch's size, against the bound of
one part per shard that was running. A script, not a test:

    .venv/bin/python -m bench.resume_cost [--records 1000000] [--stop-at 0.8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path

from temporalio.client import Client, WorkflowFailureError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.contrib.pydantic import pydantic_data_converter

from bench.local_stack import local_stack, stop_on_sigterm
from services import constants as c
from services.worker.config import WorkerSettings
from services.worker.contracts import SHARD_SIZE, BatchInferenceInput, BatchInferenceOutput, Progress, Tuning
from services.worker.serve_client import ServeClient, TokenSource
from services.worker.worker import build_worker


def write_input(path: Path, n: int) -> Path:
    with path.open("w") as fh:
        for start in range(0, n, 10_000):
            fh.write(
                "".join(
                    json.dumps({"id": f"r{i:08d}", "input": {"n": i}}) + "\n"
                    for i in range(start, min(n, start + 10_000))
                )
            )
    return path


class SentRecords:
    """Records in requests Serve answered 200 (every request holds ``micro_batch_size`` of them:
    the batch size is a multiple of it)."""

    def __init__(self, per_request: int) -> None:
        self.per_request, self.records = per_request, 0

    def __call__(self, outcome: str, seconds: float, model: str | None) -> None:
        if outcome == "200":
            self.records += self.per_request


async def run(records: int, stop_at: float) -> dict:
    tuning = Tuning()
    assert records % tuning.micro_batch_size == 0 and SHARD_SIZE % tuning.checkpoint_every == 0
    with tempfile.TemporaryDirectory(prefix="bi-resume-", dir="/tmp") as tmp:
        work = Path(tmp)
        async with local_stack(work) as (temporal, serve):
            source = write_input(work / "in.jsonl", records)
            client = await Client.connect(temporal.address, data_converter=pydantic_data_converter)
            queue = f"resume-{uuid.uuid4().hex[:8]}"
            sent = SentRecords(tuning.micro_batch_size)
            serve_client = ServeClient(
                serve.url, TokenSource(token_file=str(serve.token_file)), on_attempt=sent
            )
            worker = build_worker(client, WorkerSettings(task_queue=queue, serve_url=serve.url), serve_client)
            batch = BatchInferenceInput(input_uri=str(source), output_uri=str(work / "out"), model="echo")
            workflow_id = f"resume-{uuid.uuid4().hex[:8]}"
            async with worker:
                handle = await client.start_workflow(
                    c.WORKFLOW_NAME, batch, id=workflow_id, task_queue=queue, result_type=BatchInferenceOutput
                )
                while True:
                    progress = await handle.query(c.PROGRESS_QUERY, result_type=Progress)
                    if progress.total_records and progress.succeeded >= stop_at * progress.total_records:
                        break
                    await asyncio.sleep(0.05)
                running = progress.shards_running
                await handle.cancel()
                try:
                    await handle.result()
                except WorkflowFailureError:
                    pass
                before = sent.records
                summary = json.loads((work / "out" / c.SUMMARY_FILE).read_text())
                started = time.monotonic()
                again = await client.start_workflow(
                    c.WORKFLOW_NAME, batch, id=workflow_id, task_queue=queue,
                    result_type=BatchInferenceOutput, id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                )  # fmt: skip
                result = await again.result()
                resumed_s = time.monotonic() - started
            await serve_client.aclose()
    return {
        "records": records,
        "stopped_at_records": summary["succeeded"] + summary["failed"],
        "shards": result.shards,
        "shards_running_when_stopped": running,
        "sent_before_stop": before,
        "sent_after_resume": sent.records - before,
        "sent_twice": sent.records - records,
        "bound_one_part_per_running_shard": running * tuning.checkpoint_every,
        "resumed_records": result.resumed_records,
        "resume_wall_s": round(resumed_s, 1),
    }


def main() -> None:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--stop-at", type=float, default=0.8)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.records, args.stop_at)), indent=2))


if __name__ == "__main__":
    main()
