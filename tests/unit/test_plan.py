"""Shard bounds."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.worker import plan
from services.worker.contracts import COLUMNAR_SHARD_SIZE, SHARD_SIZE, PlanInput


@pytest.mark.parametrize(
    ("total", "shard_size", "window", "sizes"),
    [
        (100_000, 10_000, 4, [8334] * 4 + [8333] * 8),
        (10_000, 10_000, 4, [2500] * 4),
        (1_000_000, 10_000, 4, [10_000] * 100),
        (10, 4, 4, [3, 3, 2, 2]),
        (3, 10, 4, [1, 1, 1]),
        (25, 10, 1, [9, 8, 8]),
    ],
)
def test_shard_sizes_are_equal_and_fill_the_window(total, shard_size, window, sizes):
    assert plan.shard_sizes(total, shard_size, window) == sizes


@pytest.mark.parametrize("seed", range(5))
def test_shard_sizes_cover_every_record_within_the_limit(seed):
    rng = random.Random(seed)
    for _ in range(2000):
        total, window = rng.randint(1, 10**6), rng.randint(1, 20)
        shard_size = rng.randint(1, total + 5)
        sizes = plan.shard_sizes(total, shard_size, window)
        assert sum(sizes) == total and 1 <= min(sizes) and max(sizes) - min(sizes) <= 1
        assert max(sizes) <= shard_size and len(sizes) >= -(-total // shard_size)
        assert len(sizes) % window == 0 or len(sizes) == total  # fills the window when it can


@pytest.mark.parametrize(
    ("files", "given", "expected"),
    [
        ({"a.parquet": "parquet"}, None, COLUMNAR_SHARD_SIZE),
        ({"a.csv": "csv", "b.csv": "csv"}, None, COLUMNAR_SHARD_SIZE),
        ({"a.jsonl": "jsonl"}, None, SHARD_SIZE),
        ({"a.parquet": "parquet"}, 1_000, 1_000),
    ],
)
def test_shard_size_by_default_is_larger_for_parquet_and_csv(tmp_path, files, given, expected):
    for name, fmt in files.items():
        rows = [{"id": f"{name}-{i}", "x": float(i)} for i in range(5)]
        path = tmp_path / "in" / name
        path.parent.mkdir(exist_ok=True)
        if fmt == "parquet":
            pq.write_table(pa.Table.from_pylist(rows), path)
        elif fmt == "csv":
            path.write_text("id,x\n" + "".join(f"{r['id']},{r['x']}\n" for r in rows))
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    made = plan.make_plan(
        PlanInput(input_uri=str(tmp_path / "in"), output_uri=str(tmp_path / "out"), shard_size=given)
    )
    assert made.shard_size == expected
    assert made.total_records == 5 * len(files)
