"""process_shard on real files with Serve mocked in-process: how a shard meets repeated ids
that are found while it runs. (The real Serve and Temporal run in tests/faults/.)"""

from __future__ import annotations

import json

import httpx
from temporalio.testing import ActivityEnvironment

from services.worker import activities, storage
from services.worker.activities import BatchActivities
from services.worker.models import DuplicatesInput, PlanInput, ShardInput
from services.worker.serve_client import ServeClient, TokenSource


def echo_serve(on_request=None) -> tuple[ServeClient, list[int]]:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        inputs = json.loads(request.content)["inputs"]
        calls.append(len(inputs))
        if on_request:
            on_request(len(calls))
        return httpx.Response(200, json={"predictions": inputs, "errors": [None] * len(inputs)})

    return ServeClient("http://serve.test", TokenSource("t"), transport=httpx.MockTransport(handler)), calls


def write_input(path, ids) -> None:
    path.write_text("".join(json.dumps({"id": i, "input": {"n": n}}) + "\n" for n, i in enumerate(ids)))


def shard_input(source, output, shard: int = 0) -> ShardInput:
    return ShardInput(
        input_uri=str(source), output_uri=str(output), shard=shard, model="echo",
        micro_batch_size=2, max_in_flight=4, checkpoint_every=2,
    )  # fmt: skip


def outputs(output, shard: int = 0) -> tuple[list[dict], list[dict]]:
    def read(uri: str) -> list[dict]:
        with open(uri) as fh:
            return [json.loads(line) for line in fh]

    return read(storage.shard_uri(str(output), shard)), read(storage.errors_uri(str(output), shard))


async def test_a_shard_that_committed_a_repeated_id_before_knowing_starts_over(tmp_path):
    """The repeated-id search finishes only after the shard committed the part holding line 4
    (a repeat of line 1): the shard redoes its records and the repeat ends up an error."""
    source, output = tmp_path / "in.jsonl", tmp_path / "out"
    write_input(source, ["a", "b", "c", "a", "d", "e", "f", "g"])
    activities._plan(PlanInput(input_uri=str(source), output_uri=str(output), shard_size=100))

    def late_search(calls: int) -> None:
        if calls == 3:  # parts 0 and 1 are out; the third request: the search is done
            activities._find_duplicates(DuplicatesInput(output_uri=str(output)))

    serve, calls = echo_serve(late_search)
    result = await ActivityEnvironment().run(
        BatchActivities(serve).process_shard, shard_input(source, output)
    )
    results, errors = outputs(output)
    assert [r["id"] for r in results] == ["a", "b", "c", "d", "e", "f", "g"]
    assert errors == [
        {"id": "a", "line": 4, "stage": "duplicate", "reason": "duplicate id: line 1 has the same id"}
    ]
    assert (result.succeeded, result.failed, result.records) == (7, 1, 8)
    assert sum(calls) > 8, "the shard started over"
    assert not any((output / "_parts").iterdir()), (
        "the shard drops its parts once its final files are written"
    )


async def test_a_shard_that_knows_the_repeated_ids_from_the_start_sends_no_repeat(tmp_path):
    source, output = tmp_path / "in.jsonl", tmp_path / "out"
    write_input(source, ["a", "b", "a", "c"])
    activities._plan(PlanInput(input_uri=str(source), output_uri=str(output), shard_size=100))
    activities._find_duplicates(DuplicatesInput(output_uri=str(output)))
    serve, calls = echo_serve()
    result = await ActivityEnvironment().run(
        BatchActivities(serve).process_shard, shard_input(source, output)
    )
    assert sum(calls) == 3 and (result.succeeded, result.failed) == (3, 1)


async def test_an_earlier_batchs_repeated_ids_are_not_taken_for_this_ones(tmp_path):
    source, output = tmp_path / "in.jsonl", tmp_path / "out"
    write_input(source, ["a", "a"])
    activities._plan(PlanInput(input_uri=str(source), output_uri=str(output), shard_size=100))
    activities._find_duplicates(DuplicatesInput(output_uri=str(output)))
    write_input(source, ["a", "b"])  # a new batch into the same folder: a new plan, a new search
    activities._plan(PlanInput(input_uri=str(source), output_uri=str(output), shard_size=100))
    assert not (output / "_duplicates.json").exists()
    serve, _ = echo_serve(lambda calls: activities._find_duplicates(DuplicatesInput(output_uri=str(output))))
    result = await ActivityEnvironment().run(
        BatchActivities(serve).process_shard, shard_input(source, output)
    )
    assert (result.succeeded, result.failed) == (2, 0)
