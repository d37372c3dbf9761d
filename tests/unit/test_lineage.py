"""verify: every input record exactly once across results and errors, by key hashes; what it
says when a record is missing or doubled."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from services.worker.lineage import report, verify
from services.worker.manifests import DataSpec
from tests.helpers.local_shards import echo_serve, plan_batch, run_shards


async def batch(tmp_path: Path) -> Path:
    source = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": i, "x": i}) for i in range(30)] + ["garbage", json.dumps({"id": 3, "x": 0})]
    source.write_text("\n".join(lines) + "\n")
    output = tmp_path / "out"
    serve, _ = echo_serve(reject=lambda x: x["x"] == 5)
    await run_shards(plan_batch(str(source), str(output), shard_size=8), str(output), serve)
    return output


async def test_a_whole_batch_verifies_with_counts_by_stage_and_code(tmp_path):
    verdict = verify(str(await batch(tmp_path)))
    assert verdict.ok and (verdict.input_records, verdict.results, verdict.errors) == (32, 29, 3)
    assert verdict.errors_by_code == {
        "duplicate/duplicate_id": 1,
        "model/model_error": 1,
        "parse/malformed_json": 1,
    }
    assert "every input record exactly once" in report(verdict)


async def test_a_missing_and_a_doubled_record_are_counted_and_named(tmp_path):
    output = await batch(tmp_path)
    first = output / "shard-00000.jsonl"
    lines = first.read_text().splitlines()
    lines[1] = lines[0]  # id 1 lost, id 0 twice
    first.write_text("\n".join(lines) + "\n")
    verdict = verify(str(output))
    assert not verdict.ok and (verdict.missing, verdict.doubled) == (1, 1)
    assert {(m.key, m.inputs, m.outputs) for m in verdict.examples} == {("0", 1, 2), ("1", 1, 0)}
    assert "MISMATCH: 1 missing, 1 doubled" in report(verdict)


async def test_parquet_results_verify_too(tmp_path):
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(50)], "f": [1.0] * 50}), tmp_path / "in.parquet")
    output = tmp_path / "out"
    plan = plan_batch(
        str(tmp_path / "in.parquet"), str(output), DataSpec(output_format="parquet"), shard_size=20
    )
    await run_shards(plan, str(output))
    verdict = verify(str(output))
    assert verdict.ok and (verdict.input_records, verdict.results) == (50, 50)
