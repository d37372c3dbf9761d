"""process_shard on real files with Serve mocked in-process: what a shard leaves behind and how
a retry after its final commit behaves. (The real Serve and Temporal run in tests/faults/.)"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import httpx
from temporalio.testing import ActivityEnvironment

from services.worker import pipeline
from services.worker.activities import BatchActivities
from services.worker.contracts import PlanInput, ShardInput
from services.worker.layout import OutputLayout
from services.worker.plan import make_plan
from services.worker.serve_client import ServeClient, TokenSource


def echo_serve() -> tuple[ServeClient, list[int]]:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        inputs = json.loads(request.content)["inputs"]
        calls.append(len(inputs))
        return httpx.Response(200, json={"predictions": inputs, "errors": [None] * len(inputs)})

    return ServeClient("http://serve.test", TokenSource("t"), transport=httpx.MockTransport(handler)), calls


def planned(tmp_path, ids) -> tuple[str, str]:
    source, output = tmp_path / "in.jsonl", tmp_path / "out"
    source.write_text("".join(json.dumps({"id": i, "input": {"n": n}}) + "\n" for n, i in enumerate(ids)))
    make_plan(PlanInput(input_uri=str(source), output_uri=str(output), shard_size=100))
    return str(source), str(output)


def shard_input(source: str, output: str) -> ShardInput:
    return ShardInput(
        input_uri=source, output_uri=output, shard=0, model="echo",
        micro_batch_size=2, max_in_flight=4, checkpoint_every=2,
    )  # fmt: skip


async def test_a_shard_writes_its_final_files_and_drops_its_parts(tmp_path):
    source, output = planned(tmp_path, ["a", "b", "a", "c", "d"])
    serve, calls = echo_serve()
    result = await ActivityEnvironment().run(
        BatchActivities(serve).process_shard, shard_input(source, output)
    )
    layout = OutputLayout(output)
    results = Path(layout.shard_uri(0)).read_text().splitlines()
    errors = Path(layout.errors_uri(0)).read_text().splitlines()
    assert [json.loads(line)["id"] for line in results] == ["a", "b", "c", "d"]
    assert [json.loads(line)["stage"] for line in errors] == ["duplicate"]
    assert (result.succeeded, result.failed, sum(calls)) == (4, 1, 4), "the repeat is never sent"
    assert not Path(layout.parts_uri(0)).exists()


async def test_a_retry_after_the_final_commit_reports_the_final_files(tmp_path):
    """The worker died after writing the final files, before Temporal heard of it: the retry
    has no parts left to join and sends nothing; it counts what the final files hold."""
    source, output = planned(tmp_path, ["a", "b", "c"])
    serve, calls = echo_serve()
    await ActivityEnvironment().run(BatchActivities(serve).process_shard, shard_input(source, output))
    retry = ActivityEnvironment()
    retry.info = dataclasses.replace(retry.info, attempt=2)
    result = await retry.run(BatchActivities(serve).process_shard, shard_input(source, output))
    assert (result.succeeded, result.failed, result.resumed_from) == (3, 0, 3)
    assert sum(calls) == 3, "nothing sent again"


async def test_the_heap_is_trimmed_every_few_committed_parts(tmp_path, monkeypatch):
    """Counted over the worker's parts, whichever shard they belong to."""
    monkeypatch.setattr(pipeline, "TRIM_EVERY_PARTS", 3)
    trims: list[int] = []
    worker = BatchActivities(echo_serve()[0])
    monkeypatch.setattr(pipeline, "release_free_memory", lambda: trims.append(worker.trimmer.parts_committed))
    source, output = planned(tmp_path, [f"r{i}" for i in range(8)])  # 4 parts of 2 records
    await ActivityEnvironment().run(worker.process_shard, shard_input(source, output))
    assert trims == [3]
    (tmp_path / "again").mkdir()
    second, output2 = planned(tmp_path / "again", [f"s{i}" for i in range(6)])  # 3 more parts
    await ActivityEnvironment().run(worker.process_shard, shard_input(second, output2))
    assert trims == [3, 6]
