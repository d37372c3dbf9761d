"""The output layout's protocol (part -> checkpoint -> final files -> summary) on a local folder
and on fsspec's in-memory filesystem, which, like an object store, has no rename."""

from __future__ import annotations

import io
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.worker import fs, parquet_sink
from services.worker.layout import OutputLayout
from services.worker.manifests import (
    BatchSummary,
    Checkpoint,
    DataSpec,
    InputFile,
    Plan,
    Segment,
    ShardPlan,
    ShardProgress,
)


@pytest.fixture(params=["local", "memory"])
def output_uri(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    return f"memory://layout-{uuid.uuid4().hex[:8]}/out"


def plan(shards: int = 2) -> Plan:
    file = InputFile(uri="in.jsonl", format="jsonl", size=10, records=5 * shards)
    segments = [[Segment(file=0, start=5 * n, offset=n, line=5 * n + 1, records=5)] for n in range(shards)]
    return Plan(
        plan_id="p1", input_uri="in.jsonl", spec=DataSpec(), files=[file], input_bytes=10, shard_size=5,
        total_records=5 * shards, shards=[ShardPlan(segments=s, records=5) for s in segments],
    )  # fmt: skip


def summary(layout: OutputLayout, status: str) -> BatchSummary:
    return BatchSummary(
        status=status, workflow_id="wf", input_uri="in.jsonl", output_uri=layout.uri,
        errors_uri=layout.errors_uri(), model=None, total_records=10, succeeded=9, failed=1, shards=2,
        shards_done=None, runs=1, resumed_records=0, duration_s=1.0, records_per_second=10.0,
    )  # fmt: skip


def test_parts_join_into_final_files_and_a_retry_finds_them(output_uri: str) -> None:
    layout = OutputLayout(output_uri)
    layout.start(plan())
    assert layout.read_plan() == plan()
    progress = ShardProgress(offset=0, line=1)
    for part, (out, err) in enumerate([(b'{"id":1}\n', b""), (b'{"id":2}\n', b'{"id":3}\n')]):
        progress = ShardProgress(part=part + 1, offset=part + 1, line=part + 2, done=part + 1)
        layout.write_part(0, part, out, err, Checkpoint(plan_id="p1", progress=progress))
    # a retry that heard of no heartbeat follows the checkpoints to the last committed part
    assert layout.last_checkpoint(0, "p1", ShardProgress(offset=0, line=1)) == progress
    # an earlier batch's checkpoints (another plan id) are not followed
    assert layout.last_checkpoint(0, "other", ShardProgress(offset=0, line=1)).part == 0
    assert layout.final_counts(0) is None
    layout.commit_shard(0, 2)
    assert fs.read_bytes(layout.shard_uri(0)) == b'{"id":1}\n{"id":2}\n'
    assert layout.final_counts(0) == (2, 1) and layout.count_final([0, 1]) == (2, 1)
    assert not fs.exists(layout.parts_uri(0))


def test_a_new_batch_clears_final_files_and_a_failed_one_keeps_unfinished_parts(output_uri: str) -> None:
    layout = OutputLayout(output_uri)
    for uri in (layout.shard_uri(7), layout.errors_uri(7), fs.join(output_uri, "notes.txt")):
        fs.write_bytes(uri, b"earlier\n")
    layout.start(plan())
    assert not fs.exists(layout.shard_uri(7)) and not fs.exists(layout.errors_uri(7))
    assert fs.exists(fs.join(output_uri, "notes.txt")), "only shard files are the batch's"
    checkpoint = Checkpoint(plan_id="p1", progress=ShardProgress(part=1, offset=1, line=2, done=1))
    for shard in (0, 1):
        layout.write_part(shard, 0, b'{"id":1}\n', b"", checkpoint)
    layout.commit_shard(0, 1)
    layout.write_part(0, 0, b'{"id":1}\n', b"", checkpoint)  # a leftover of a finished shard
    layout.finish(summary(layout, "failed"))
    assert layout.read_summary().status == "failed"
    assert not fs.exists(layout.parts_uri(0)) and fs.exists(layout.part_uri(1, 0, "ckpt"))
    layout.finish(summary(layout, "completed"))
    assert not fs.exists(layout.parts_uri())


def test_parquet_parts_are_arrow_joined_into_parquet_even_beside_parts_of_an_earlier_release(
    output_uri: str,
) -> None:
    """Parquet results are Arrow IPC while a shard runs and encoded as Parquet once, at the join.
    A shard retried across an upgrade finds its first parts in the earlier release's form (a
    Parquet file named ``.out.parquet``): they are joined in order with the new ones."""
    layout = OutputLayout(output_uri, "parquet")
    layout.start(plan())
    old_part = io.BytesIO()
    pq.write_table(parquet_sink.table(["a", "b"], [1, 2], None, []), old_part)
    fs.write_bytes(fs.join(layout.parts_uri(0), "part-00000.out.parquet"), old_part.getvalue())
    new_part = parquet_sink.to_bytes(parquet_sink.table(["c"], [3.5], None, []))
    assert new_part[:4] != b"PAR1" and pa.ipc.open_stream(new_part).read_all().num_rows == 1
    checkpoint = Checkpoint(plan_id="p1", progress=ShardProgress(part=2, done=3))
    layout.write_part(0, 1, new_part, b"", checkpoint)
    assert layout.part_uri(0, 1, "out").endswith("part-00001.out.arrow")
    layout.commit_shard(0, 2)
    with fs.open_input(layout.shard_uri(0)) as fh:
        final = pq.read_table(fh)
    assert final.to_pylist() == [
        {"id": "a", "prediction": 1.0},
        {"id": "b", "prediction": 2.0},
        {"id": "c", "prediction": 3.5},
    ]
    assert layout.final_counts(0) == (3, 0) and not fs.exists(layout.parts_uri(0))
