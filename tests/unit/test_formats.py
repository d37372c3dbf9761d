"""Every input format and both output formats through the real plan and shard activity (Serve
mocked in-process, local files): each id exactly once across results and errors, bad records
with their file and line, resumes inside compressed and Parquet files, and the inputs the plan
refuses, each with a clear message. (The same on real object stores: tests/integration.)"""

from __future__ import annotations

import bz2
import gzip
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from temporalio.exceptions import ApplicationError

from services.errors import Failure
from services.worker.contracts import BatchInferenceInput, PlanInput
from services.worker.layout import OutputLayout
from services.worker.manifests import DataSpec
from services.worker.parquet_files import ParquetSegmentReader
from services.worker.plan import PlanError, make_plan
from tests.helpers.local_shards import echo_handler, echo_serve, plan_batch, run_shards, serve_client
from tests.helpers.records import corrupt_parquet_page

OPENERS = {"": open, ".gz": gzip.open, ".bz2": bz2.open, ".zst": zstandard.open}


def write_jsonl(path: Path, records: list[dict], suffix: str = "") -> Path:
    path = path.with_name(path.name + suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    with OPENERS[suffix](path, "wb") as fh:
        fh.write(b"".join(json.dumps(r).encode() + b"\n" for r in records))
    return path


def outputs(output: Path, fmt: str = "jsonl") -> tuple[list[dict], list[dict]]:
    layout = OutputLayout(str(output), fmt)
    if fmt == "parquet":
        results = pq.read_table(output).to_pylist() if list(output.glob("shard-*.parquet")) else []
    else:
        results = [json.loads(line) for f in sorted(output.glob("shard-*.jsonl")) for line in f.open()]
    errors = [
        json.loads(line) for f in sorted(Path(layout.errors_uri()).glob("*.jsonl")) for line in f.open()
    ]
    return results, errors


async def test_many_jsonl_files_plain_and_compressed_with_partitions_kept(tmp_path):
    root = tmp_path / "in"
    expected = []
    for n, suffix in enumerate(["", ".gz", ".bz2", ".zst"]):
        records = [{"id": f"f{n}-{i}", "x": i} for i in range(n + 5)]
        write_jsonl(root / f"date=2026-12-0{n + 1}" / "part.jsonl", records, suffix)
        expected += [r["id"] for r in records]
    (root / "_SUCCESS").write_bytes(b"")
    output = tmp_path / "out"
    plan = plan_batch(str(root), str(output), DataSpec(keep_columns=["date"]), shard_size=4)
    assert plan.total_records == len(expected) and len(plan.files) == 4
    assert any(len(shard.segments) > 1 for shard in plan.shards), "shards run across files"
    await run_shards(plan, str(output), checkpoint_every=3)
    results, errors = outputs(output)
    assert [r["id"] for r in results] == expected and errors == []
    assert results[0] == {"id": "f0-0", "prediction": {"x": 0}, "date": "2026-12-01"}
    assert results[-1]["date"] == "2026-12-04", "the partition key of each record's own file"


async def test_id_field_input_field_and_bad_records_with_file_and_line(tmp_path):
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [{"key": 1, "text": "a"}, {"key": 2}, {"key": 1, "text": "again"}, {"key": 3, "text": "c"}],
    )
    output = tmp_path / "out"
    plan = plan_batch(str(source), str(output), DataSpec(id_field="key", input_field="text"))
    await run_shards(plan, str(output))
    results, errors = outputs(output)
    assert results == [{"id": 1, "prediction": "a"}, {"id": 3, "prediction": "c"}]
    assert [(e["id"], e["file"], e["line"], e["code"]) for e in errors] == [
        (2, str(source), 2, "missing_field"),
        (1, str(source), 3, "duplicate_id"),
    ]


async def test_csv_types_from_the_plan_and_bad_rows_to_errors(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("id,sepal,label\n007,5.1,a\n2,4.9\n3,4.7,c\n\n4,oops,d\n5,5.0,e\n")
    output = tmp_path / "out"
    plan = plan_batch(
        str(source), str(output), DataSpec(column_types={"sepal": "float64"}, keep_columns=["label"])
    )
    assert plan.files[0].columns == {"id": "string", "sepal": "float64", "label": "string"}
    await run_shards(plan, str(output), checkpoint_every=2)
    results, errors = outputs(output)
    assert results == [
        {"id": "007", "prediction": {"sepal": 5.1}, "label": "a"},
        {"id": "3", "prediction": {"sepal": 4.7}, "label": "c"},
        {"id": "5", "prediction": {"sepal": 5.0}, "label": "e"},
    ], "the id stays text (007), the kept column is not model input"
    assert [(e["line"], e["code"]) for e in errors] == [(3, "bad_row"), (6, "bad_value")]
    assert "'oops' is not float64" in errors[1]["reason"]


def parquet_files(root: Path, files: int = 3, rows: int = 50, group: int = 16) -> list[int]:
    root.mkdir(parents=True, exist_ok=True)
    ids = []
    for n in range(files):
        first = n * rows
        table = pa.table(
            {
                "id": list(range(first, first + rows)),
                "f1": [float(i) for i in range(rows)],
                "f2": [0.5] * rows,
                "note": [f"n{i}" for i in range(rows)],
            }
        )
        pq.write_table(table, root / f"part-{n}.parquet", row_group_size=group)
        ids += table.column("id").to_pylist()
    return ids


async def test_parquet_in_parquet_out_with_only_the_needed_columns(tmp_path):
    ids = parquet_files(tmp_path / "in")
    output = tmp_path / "out"
    spec = DataSpec(input_columns=["f1", "f2"], keep_columns=["note"], output_format="parquet")
    plan = plan_batch(str(tmp_path / "in" / "*.parquet"), str(output), spec, shard_size=35)
    assert plan.files[0].row_groups == [16, 16, 16, 2]
    serve, _ = echo_serve(reject=lambda x: x["f1"] == 7.0)
    await run_shards(plan, str(output), serve, checkpoint_every=10)
    results, errors = outputs(output, "parquet")
    assert Counter([r["id"] for r in results] + [e["id"] for e in errors]) == Counter(ids)
    assert results[0] == {"id": 0, "prediction": {"f1": 0.0, "f2": 0.5}, "note": "n0"}
    assert [(e["line"], e["code"], e["file"].rsplit("/", 1)[-1]) for e in errors] == [
        (8, "model_error", f"part-{n}.parquet") for n in range(3)
    ]
    names = sorted(p.name for p in output.iterdir())
    assert "_errors" in names and "_plan.json" in names
    assert [n for n in names if not n.startswith("_")] == [
        f"shard-{n:05d}.parquet" for n in range(len(plan.shards))
    ]
    assert pq.read_table(output).num_rows == len(results), "errors and plan are _-prefixed: one dataset"


@pytest.mark.parametrize("kind", ["gz", "parquet"])
async def test_a_shard_resumes_inside_a_file_that_cannot_seek(tmp_path, kind):
    """A shard that failed after some parts resumes from its last checkpoint: records read and
    skipped inside a compressed or Parquet file, none sent again."""
    if kind == "gz":
        ids = [f"r{i}" for i in range(40)]
        write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": i, "x": 1} for i in ids], ".gz")
    else:
        ids = parquet_files(tmp_path / "in", files=1, rows=40, group=7)
    output = tmp_path / "out"
    plan = plan_batch(str(tmp_path / "in"), str(output), shard_size=30)
    assert [s.segments[0].start for s in plan.shards] == [0, 20], "the second shard starts inside"
    echo, calls = echo_handler()

    def dies_on_the_fourth_request(request):
        if len(calls) == 3:
            raise RuntimeError("the worker died")
        return echo(request)

    with pytest.raises(RuntimeError, match="the worker died"):
        await run_shards(plan, str(output), serve_client(dies_on_the_fourth_request), checkpoint_every=3)
    done_before = sum(calls)
    retried = await run_shards(plan, str(output), serve_client(echo), checkpoint_every=3, attempt=2)
    results, errors = outputs(output)
    assert Counter(r["id"] for r in results) == Counter(ids) and errors == []
    assert retried[0].resumed_from > 0
    assert sum(calls) - done_before <= len(ids) - retried[0].resumed_from


def test_bad_inputs_fail_the_plan_naming_the_file(tmp_path):
    output = str(tmp_path / "out")
    cases: list[tuple[str, Failure, str]] = []
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 not really")
    cases.append((str(corrupt), Failure.INPUT_UNREADABLE, "corrupt.parquet: not a readable Parquet file"))
    truncated = write_jsonl(tmp_path / "t.jsonl", [{"id": i} for i in range(2000)], ".gz")
    truncated.write_bytes(truncated.read_bytes()[:-40])
    cases.append((str(truncated), Failure.INPUT_UNREADABLE, "t.jsonl.gz: truncated or corrupt gzip data"))
    pq.write_table(pa.table({"key": [1]}), tmp_path / "noid.parquet")
    cases.append(
        (str(tmp_path / "noid.parquet"), Failure.INPUT_UNREADABLE, "no column 'id' (its columns: key)")
    )
    parquet_files(tmp_path / "mixed", files=1)
    pq.write_table(
        pa.table({"id": ["x"], "f1": ["text"], "f2": [1.0], "note": ["n"]}), tmp_path / "mixed" / "z.parquet"
    )
    cases.append((str(tmp_path / "mixed"), Failure.INPUT_UNREADABLE, "z.parquet: its schema differs"))
    cases.append((str(tmp_path / "*.nothing"), Failure.INPUT_NOT_FOUND, "no input files match"))
    for uri, failure, message in cases:
        with pytest.raises(PlanError) as exc:
            plan_batch(uri, output)
        assert exc.value.failure == failure and message in str(exc.value), str(exc.value)


def test_the_output_folder_must_be_writable(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": 1}])
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(PlanError) as exc:
        plan_batch(str(source), str(tmp_path / "file" / "out"))
    assert exc.value.failure == Failure.OUTPUT_NOT_WRITABLE


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"output_format": "csv"}, "output_format"),
        ({"input_format": "xml"}, "input_format"),
        ({"input_field": "a", "input_columns": ["b"]}, "at most one of 'input_field' and 'input_columns'"),
        ({"keep_columns": ["prediction"]}, "'keep_columns' cannot name"),
        ({"input_uri": []}, "empty list"),
    ],
)
def test_bad_options_are_refused_before_the_batch_starts(fields, message):
    with pytest.raises(ValueError, match=message):
        BatchInferenceInput.model_validate({"input_uri": "in.jsonl", "output_uri": "out", **fields})


async def test_a_batch_started_again_on_its_folder_resumes_and_sends_nothing_twice(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "x": i} for i in range(20)])
    output = tmp_path / "out"
    first = plan_batch(str(source), str(output), shard_size=5)
    serve, calls = echo_serve()
    await run_shards(plan_batch(str(source), str(output), shard_size=5), str(output), serve)
    again = plan_batch(str(source), str(output), shard_size=8)  # other tuning: the plan stays
    assert again.plan_id == first.plan_id and len(again.shards) == 4
    sent = sum(calls)
    outputs_again = await run_shards(again, str(output), serve)
    assert sum(calls) == sent == 20, "every shard's final files are reused"
    assert [o.resumed_from for o in outputs_again] == [5, 5, 5, 5]


def test_another_batch_or_a_changed_input_on_a_used_folder_is_refused_unless_started_over(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": i} for i in range(10)])
    output = str(tmp_path / "out")
    first = plan_batch(str(source), output)
    with pytest.raises(PlanError) as exc:
        plan_batch(str(source), output, DataSpec(id_field="key"))
    assert exc.value.failure == Failure.OUTPUT_IN_USE and "holds another batch" in str(exc.value)
    write_jsonl(tmp_path / "in.jsonl", [{"id": i} for i in range(11)])
    with pytest.raises(PlanError) as exc:
        plan_batch(str(source), output)
    assert exc.value.failure == Failure.INPUT_CHANGED and f"{source} (size" in str(exc.value)
    assert "start_over" in str(exc.value)
    anew = make_plan(PlanInput(input_uri=str(source), output_uri=output, shard_size=7, start_over=True))
    assert anew.plan_id != first.plan_id and anew.total_records == 11


async def test_a_parquet_page_that_does_not_decode_fails_its_shard_naming_the_file(tmp_path):
    """The plan reads footers and ids only: a bad data page of another column is found by the
    shard reading it, which fails at once (not retried)."""
    source = corrupt_parquet_page(tmp_path / "bad.parquet")
    output = str(tmp_path / "out")
    plan = plan_batch(str(source), output, DataSpec(input_columns=["features"]), shard_size=100)
    with pytest.raises(ApplicationError) as exc:
        await run_shards(plan, output)
    assert exc.value.type == Failure.INPUT_UNREADABLE and exc.value.non_retryable
    assert f"{source}: not a readable Parquet file" in str(exc.value)


def test_a_parquet_segment_reads_only_the_row_groups_it_spans(tmp_path):
    """pyarrow reads whole row groups ahead: a shard's reader is given only the groups holding
    its rows, so it never holds (or decodes) the next shard's group."""
    parquet_files(tmp_path, files=1)  # row groups of 16, 16, 16 and 2 rows
    spec = DataSpec(input_columns=["f1"])
    plan = plan_batch(str(tmp_path / "part-0.parquet"), str(tmp_path / "out"), spec, shard_size=50)
    file = plan.files[0]
    reader = ParquetSegmentReader(file, 20, 40, spec, batch_rows=100)
    rows, table = reader.read(100)
    reader.close()
    # Rows 21..48 (1-based): from the start in group 2 to the end of group 3, which holds row 40.
    assert rows == range(21, 49) and table.column("f1").to_pylist() == [float(i) for i in range(20, 48)]
    reader = ParquetSegmentReader(file, 0, 16, spec, batch_rows=100)
    assert reader.read(100)[0] == range(1, 17)
    reader.close()
