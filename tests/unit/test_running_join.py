"""A shard's results file written as its parts commit: the same file the join of its parts
makes, or nothing (and the join) when it cannot be."""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.worker import fs, parquet_sink
from services.worker.layout import OutputLayout
from services.worker.manifests import Checkpoint, ShardProgress


@pytest.fixture
def output_uri(tmp_path) -> str:
    return str(tmp_path / "out")


def parquet_part(ids: list[str], predictions: list) -> pa.Table:
    return parquet_sink.table(ids, predictions, None, [])


def write_parts(layout: OutputLayout, shard: int, parts: list[bytes] | list[pa.Table]) -> None:
    """The parts' files, as the pipeline writes them (a Parquet part's table as Arrow IPC)."""
    for n, results in enumerate(parts):
        checkpoint = Checkpoint(plan_id="p", progress=ShardProgress(part=n + 1, done=n + 1))
        content = results if isinstance(results, bytes) else parquet_sink.to_bytes(results)
        layout.write_part(shard, n, content, b"", checkpoint)


def test_a_running_join_writes_what_the_join_of_the_parts_writes(output_uri: str) -> None:
    layout = OutputLayout(output_uri, "parquet")
    parts = [parquet_part(["a", "b"], [1, 2]), parquet_part(["c"], [3]), parquet_part(["d", "e"], [4, 5])]
    write_parts(layout, 0, parts)
    write_parts(layout, 1, parts)
    running = layout.running_join(0)
    for n, results in enumerate(parts):
        running.add(results)
        fs.remove(layout.part_uri(0, n, "out"))  # so only the running file can give shard 0's results
    layout.commit_shard(0, len(parts), running)
    layout.commit_shard(1, len(parts))  # joined from its parts
    streamed, joined = (pq.read_table(fs.open_input(layout.shard_uri(s))) for s in (0, 1))
    assert streamed.equals(joined) and streamed.column("id").to_pylist() == ["a", "b", "c", "d", "e"]
    assert [pq.read_metadata(fs.open_input(layout.shard_uri(s))).num_row_groups for s in (0, 1)] == [3, 3]
    assert layout.final_counts(0) == (5, 0) and not fs.exists(layout.parts_uri(0))


def test_parts_of_another_schema_make_it_give_up_and_the_parts_are_joined(output_uri: str) -> None:
    """The join promotes ``int64`` and ``double`` predictions to ``double``: a file already
    written with the first part's ``int64`` would differ, so the running join gives up."""
    layout = OutputLayout(output_uri, "parquet")
    parts = [parquet_part(["a"], [1]), parquet_part(["b"], [2.5])]
    write_parts(layout, 0, parts)
    running = layout.running_join(0)
    for results in parts:
        running.add(results)
    assert running.given_up
    layout.commit_shard(0, len(parts), running)
    final = pq.read_table(fs.open_input(layout.shard_uri(0)))
    assert final.column("prediction").to_pylist() == [1.0, 2.5]
    assert str(final.schema.field("prediction").type) == "double"


def test_one_missing_part_means_the_join(output_uri: str) -> None:
    layout = OutputLayout(output_uri, "jsonl")
    parts = [b'{"id":1,"prediction":1}\n', b'{"id":2,"prediction":2}\n']
    write_parts(layout, 0, parts)
    running = layout.running_join(0)
    running.add(parts[0])  # e.g. a write that never reached it
    layout.commit_shard(0, len(parts), running)
    assert fs.read_bytes(layout.shard_uri(0)) == b"".join(parts)


def test_an_object_store_has_no_running_join_and_its_parts_are_joined() -> None:
    """There the join streams the parts into one upload at the end; a running file would be a
    local copy of the shard's results in the worker's small /tmp."""
    layout = OutputLayout(f"memory://running-{uuid.uuid4().hex[:8]}/out", "parquet")
    assert layout.running_join(0) is None
    write_parts(layout, 0, [parquet_part(["a"], [1])])
    layout.commit_shard(0, 1, None)
    assert layout.final_counts(0) == (1, 0)


def test_a_shard_that_gives_up_leaves_no_file_behind(tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path / "out"), "parquet")
    running = layout.running_join(0)
    running.add(parquet_part(["a"], [1]))
    running.give_up()
    assert not fs.exists(layout.shard_uri(0))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
