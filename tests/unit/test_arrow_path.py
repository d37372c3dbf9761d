"""The worker's columnar path (services/worker/arrow_path.py): shards of Parquet or CSV through
the real ``process_shard`` against a Serve mock answering with the real iris model's own code
(JSON record by record, Arrow column by column). The same batch the JSON way must give the same
results; only the wire differs."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services import arrow_wire
from services.constants import ARROW_CONTENT_TYPE, JSON_CONTENT_TYPE, ServeWire
from services.serve.models import IrisClassifier
from services.worker.arrow_path import bodies
from services.worker.layout import OutputLayout
from services.worker.manifests import DataSpec, ShardProgress
from services.worker.part_rows import PartRows
from services.worker.source import RawChunk, RawPart
from tests.helpers.local_shards import iris_handler, plan_batch, run_shards, serve_client, shard_input

FEATURES = list(IrisClassifier.FEATURES)


def iris_parquet(root: Path, files: int = 2, rows: int = 60, bad: tuple[int, ...] = ()) -> list[str]:
    """Files under ``root/date=2026-12-01/`` (a partition key), each row an id, the four
    features (a NaN in row ``bad`` of the first file), and a ``customer`` column."""
    folder = root / "date=2026-12-01"
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for n in range(files):
        values = {f: [4.5 + ((i * (j + 3)) % 30) / 10 for i in range(rows)] for j, f in enumerate(FEATURES)}
        if n == 0:
            for i in bad:
                values["petal_width"][i] = math.nan
        table = pa.table(
            {
                "id": [f"p{n}-{i}" for i in range(rows)],
                **values,
                "customer": [f"c{i % 3}" for i in range(rows)],
            }
        )
        pq.write_table(table, folder / f"part-{n}.parquet", row_group_size=25)
        ids += table.column("id").to_pylist()
    return ids


def read(output: Path, fmt: str) -> tuple[list[dict], list[dict]]:
    if fmt == "parquet":
        results = pq.read_table(output).to_pylist()
    else:
        results = [json.loads(line) for f in sorted(output.glob("shard-*.jsonl")) for line in f.open()]
    errors_dir = Path(OutputLayout(str(output), fmt).errors_uri())
    errors = [json.loads(line) for f in sorted(errors_dir.glob("*.jsonl")) for line in f.open()]
    return results, errors


async def run(tmp_path: Path, name: str, spec: DataSpec, source: Path, wire: ServeWire):
    output = tmp_path / name
    plan = plan_batch(str(source), str(output), spec, shard_size=70)
    handler, seen = iris_handler()
    await run_shards(
        plan, str(output), serve_client(handler, wire), model="iris", micro_batch_size=16,
        checkpoint_every=30, columnar_part_rows=30,  # parts of 30 rows both ways
    )  # fmt: skip
    return read(output, spec.output_format), seen


@pytest.mark.parametrize("output_format", ["parquet", "jsonl"])
async def test_parquet_through_arrow_gives_what_json_gives(tmp_path, output_format):
    ids = iris_parquet(tmp_path / "in", bad=(7, 41))
    spec = DataSpec(input_columns=FEATURES, keep_columns=["customer", "date"], output_format=output_format)
    (arrow_results, arrow_errors), arrow_seen = await run(tmp_path, "arrow", spec, tmp_path / "in", "auto")
    (json_results, json_errors), json_seen = await run(tmp_path, "json", spec, tmp_path / "in", "json")
    assert set(arrow_seen) == {ARROW_CONTENT_TYPE} and set(json_seen) == {JSON_CONTENT_TYPE}
    assert arrow_results == json_results, "same rows, predictions and kept values, in the same order"
    assert Counter([r["id"] for r in arrow_results] + [e["id"] for e in arrow_errors]) == Counter(ids)
    # the rejected rows: each its own error, at its own row, the rest of its request succeeded
    assert [(e["id"], e["line"], e["code"], e["stage"]) for e in arrow_errors] == [
        ("p0-7", 8, "invalid_input", "model"),
        ("p0-41", 42, "invalid_input", "model"),
    ]
    assert [e["id"] for e in json_errors] == ["p0-7", "p0-41"]
    assert arrow_results[0]["date"] == "2026-12-01" and arrow_results[0]["customer"] == "c0"
    if output_format == "parquet":
        schema = pq.read_schema(next((tmp_path / "arrow").glob("shard-*.parquet")))
        assert schema.field("prediction").type == IrisClassifier.PREDICTION_TYPE


async def test_a_part_with_a_row_needing_its_own_error_goes_the_json_way(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    table = pa.table(
        {"id": [f"r{i}" for i in range(40)], **{f: [5.0 + i / 100 for i in range(40)] for f in FEATURES}}
    )
    ids = table.column("id").to_pylist()
    ids[33] = None  # no id: a parse error of its own
    pq.write_table(table.set_column(0, "id", pa.array(ids)), folder / "a.parquet")
    spec = DataSpec(input_columns=FEATURES, output_format="parquet")
    (results, errors), seen = await run(tmp_path, "out", spec, folder, "auto")
    assert ARROW_CONTENT_TYPE in seen and JSON_CONTENT_TYPE in seen, "the part holding row 34 went as JSON"
    assert len(results) == 39 and [(e["line"], e["code"]) for e in errors] == [(34, "missing_id")]
    assert sorted(r["id"] for r in results) == sorted(i for i in ids if i is not None)


async def test_csv_goes_as_arrow_with_jsonl_results(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rows = [f"c{i},{5.0 + i / 10},{3.0},{1.0 + i / 20},{0.2}" for i in range(50)]
    (folder / "a.csv").write_text("\n".join(["id," + ",".join(FEATURES), *rows]) + "\n")
    spec = DataSpec()  # the default input: every column but the id
    (arrow_results, errors), seen = await run(tmp_path, "arrow", spec, folder, "auto")
    (json_results, _), _ = await run(tmp_path, "json", spec, folder, "json")
    assert set(seen) == {ARROW_CONTENT_TYPE} and errors == []
    assert arrow_results == json_results and len(arrow_results) == 50


async def test_a_model_serve_lists_as_not_columnar_gets_json(tmp_path):
    ids = iris_parquet(tmp_path / "in", files=1, rows=20)
    handler, seen = iris_handler()

    def listing_without_columnar(request):
        if request.method == "GET":  # an older Serve: no "columnar" in its listing
            return httpx.Response(200, json={"models": ["iris"], "default": "iris"})
        return handler(request)

    output = tmp_path / "out"
    plan = plan_batch(
        str(tmp_path / "in"), str(output), DataSpec(input_columns=FEATURES, output_format="parquet")
    )
    await run_shards(
        plan, str(output), serve_client(listing_without_columnar), model="iris", micro_batch_size=16
    )
    assert set(seen) == {JSON_CONTENT_TYPE}
    assert sorted(read(output, "parquet")[0], key=lambda r: r["id"])[0]["id"] == sorted(ids)[0]


def test_bodies_are_halved_under_the_byte_limit_and_a_row_alone_over_it_goes_json():
    table = pa.table({"text": ["x" * 1_000] * 16 + ["z"] * 4})
    assert [(start, count) for start, count, _ in bodies(table, 16, 1_000_000)] == [(0, 16), (16, 4)]
    cut = bodies(table, 16, 5_000)
    assert [(start, count) for start, count, _ in cut] == [(0, 4), (4, 4), (8, 4), (12, 4), (16, 4)]
    assert all(len(body) <= 5_000 for *_, body in cut)
    assert bodies(pa.table({"text": ["y" * 50_000, "z"]}), 16, 40_000) is None


async def test_arrow_parts_are_columnar_part_rows_from_the_first_once_its_first_rows_fit(tmp_path):
    ids = iris_parquet(tmp_path / "in", files=1, rows=140)
    spec = DataSpec(input_columns=FEATURES, output_format="parquet")
    output = tmp_path / "out"
    plan = plan_batch(str(tmp_path / "in"), str(output), spec, shard_size=140)
    iris, _ = iris_handler()
    rows: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers.get("content-type") == ARROW_CONTENT_TYPE:
            rows.append(arrow_wire.decode(request.content).num_rows)
        return iris(request)

    await run_shards(
        plan, str(output), serve_client(handler), checkpoint_every=10, model="iris", columnar_part_rows=50
    )
    # parts of 50 (its first 10 rows, the JSON way's size, tell how wide rows are; the other 40
    # are read into it: no request of 10 alone), 50, 40; each in requests of Serve's listed 16
    # rows at most
    assert Counter(rows) == Counter([16, 16, 16, 2] * 2 + [16, 16, 8])
    results, errors = read(output, "parquet")
    assert [r["id"] for r in results] == ids and not errors


def part_of(table: pa.Table) -> RawPart:
    return RawPart([RawChunk(0, range(1, table.num_rows + 1), table=table)], table.num_rows, ShardProgress())


def test_part_rows_stay_checkpoint_every_the_json_way_and_fit_a_request_the_arrow_way():
    shard = shard_input(
        "/out", 0, checkpoint_every=2_000, columnar_part_rows=16_384, max_request_bytes=1_000_000
    )
    narrow = part_of(pa.table({"x": pa.array(range(2_000), pa.float64())}))  # 8 bytes a row
    wide = part_of(
        pa.table({"x": pa.array([b"x" * 996] * 2_000, pa.binary())})
    )  # 1,000 bytes a row, offset included
    json_way = PartRows(shard, columnar=False)
    json_way.saw(narrow)
    assert json_way.rows == 2_000
    arrow_way = PartRows(shard, columnar=True)
    assert arrow_way.rows == 2_000, "the first part: the JSON way's size"
    arrow_way.saw(narrow)
    assert arrow_way.rows == 16_384, "narrow rows: columnar_part_rows"
    arrow_way.saw(wide)
    assert arrow_way.rows == 2_000, "wide rows: about a request's bytes, never under the JSON way's part"
    roomy = PartRows(shard.model_copy(update={"max_request_bytes": 4_000_000}), columnar=True)
    roomy.saw(wide)
    assert roomy.rows == 4_000
    small = PartRows(shard.model_copy(update={"columnar_part_rows": 500}), columnar=True)
    assert small.rows == 500, "columnar_part_rows under checkpoint_every: every part that size"
    small.saw(narrow)
    assert small.rows == 500
