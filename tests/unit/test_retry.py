"""Retrying failed records: exactly the failures asked for are copied from the original input,
whatever its format, with their partition folders, and the retry plans them as a batch."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.errors import Failure
from services.worker.contracts import BatchInferenceInput, PlanInput, retry_output
from services.worker.manifests import DataSpec
from services.worker.plan import PlanError, make_plan
from tests.helpers.local_shards import echo_serve, plan_batch, run_shards


def retry_plan(original: str, only: list[str] | None = None):
    return make_plan(
        PlanInput(
            output_uri=retry_output(original, "r1"), shard_size=4, retry_of=original, retry_only=only or []
        )
    )


@pytest.mark.parametrize("kind", ["jsonl", "gz", "csv", "parquet"])
async def test_the_failed_records_of_each_format_are_copied_and_planned(tmp_path, kind):
    folder = tmp_path / "in" / "date=2026-12-01"
    folder.mkdir(parents=True)
    if kind == "parquet":
        pq.write_table(
            pa.table({"id": list(range(40)), "x": list(range(40))}), folder / "a.parquet", row_group_size=7
        )
    elif kind == "csv":
        (folder / "a.csv").write_text("id,x\n" + "".join(f"{i},{i}\n" for i in range(40)))
    else:
        text = "".join(json.dumps({"id": i, "x": i}) + "\n" for i in range(40)).encode()
        if kind == "gz":
            (folder / "a.jsonl.gz").write_bytes(gzip.compress(text))
        else:
            (folder / "a.jsonl").write_bytes(text)
    output = str(tmp_path / "out")
    spec = DataSpec(keep_columns=["date"], column_types={"x": "int64"} if kind == "csv" else {})
    serve, _ = echo_serve(reject=lambda x: x["x"] % 9 == 0)
    await run_shards(plan_batch(str(tmp_path / "in"), output, spec, shard_size=6), output, serve)
    plan = retry_plan(output, ["model_error"])
    assert plan.total_records == 5 and plan.spec.keep_columns == ["date"]
    assert plan.files[0].partition == {"date": "2026-12-01"}, "the partition folder is kept"
    await run_shards(plan, retry_output(output, "r1"))
    again = Path(retry_output(output, "r1"))
    ids = [json.loads(line)["id"] for f in sorted(again.glob("shard-*.jsonl")) for line in f.open()]
    expected = [0, 9, 18, 27, 36]
    assert ids == (expected if kind != "csv" else [str(i) for i in expected])


async def test_only_some_failures_nothing_to_retry_and_no_batch(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "x": i}) + "\n" for i in range(10)) + "not json\n")
    output = str(tmp_path / "out")
    await run_shards(plan_batch(str(source), output), output)
    assert retry_plan(output, ["parse"]).total_records == 1
    with pytest.raises(PlanError) as exc:
        make_plan(
            PlanInput(
                output_uri=retry_output(output, "r2"), shard_size=4, retry_of=output, retry_only=["model"]
            )
        )
    assert exc.value.failure == Failure.EMPTY_INPUT and "nothing to retry" in str(exc.value)
    with pytest.raises(PlanError) as exc:
        retry_plan(str(tmp_path / "nowhere"))
    assert exc.value.failure == Failure.INPUT_NOT_FOUND and "no batch to retry" in str(exc.value)
    with pytest.raises(ValueError, match="'retry_only' names unknown"):
        BatchInferenceInput(retry_of=output, retry_only=["typo"])
