"""The benchmark harness runs end to end on 200 records, so it cannot rot (figures not checked)."""

from __future__ import annotations

import asyncio

import pyarrow.parquet as pq
import pytest

from bench import harness, parquet_case, s3_plan
from bench.__main__ import markdown, ratios, table
from services.serve.models import IrisClassifier
from services.worker.contracts import PlanInput
from services.worker.manifests import DataSpec
from services.worker.plan import make_plan
from services.worker.serve_client import ServeClient
from services.worker.source import PartParser, ShardReader

pytestmark = pytest.mark.integration


@pytest.fixture
def bench_env(temporal_server, serve_stack, serve_token_file, tmp_path):
    return harness.BenchEnv.for_stack(temporal_server.address, serve_stack, serve_token_file, tmp_path)


async def test_harness_smoke(bench_env):
    runs = [
        {"kind": "A", "model": "iris", **await harness.run_project(bench_env, 200, "iris")},
        {"kind": "B", "model": "iris", **await harness.run_direct(bench_env, 200, "iris", 32, 8)},
        {"kind": "C", "model": "echo", **await asyncio.to_thread(harness.run_per_record, bench_env, 20)},
        {"kind": "D", "model": "iris", **harness.run_ray_data(bench_env, 200, "iris")},
    ]
    floor = {"kind": "F", "model": "noop", **harness.run_floor(bench_env, 200, runs=2)}
    least = {"kind": "F", "model": "noop", **harness.run_floor(bench_env, 0, runs=2)}
    for run in runs:
        assert run["records"] in (200, 20)
        assert run.get("records_per_s", 0) > 0, run
    a = runs[0]
    for figure in (
        "worker_peak_rss_mb",
        "p50_batch_ms",
        "p99_batch_ms",
        "history_events_max_run",
        "ray_pss_mb",
    ):
        assert a[figure] > 0, (figure, a)
    assert floor["shards"] == 4 and 0 < floor["min_ms"] <= floor["median_ms"] <= floor["max_ms"], floor
    assert least["shards"] == 1 and least["local_activities"] is False and least["median_ms"] > 0, least
    results = {"runs": [*runs, floor, least]}
    assert "A=" not in table(results) and ratios(results)[0]["A/B"] > 0
    assert ratios(results)[0]["F/B"] > 0
    assert "| A | iris | 200 |" in markdown(results) and "4 no-op shards: median" in markdown(results)
    assert "1 activity alone: median" in table(results)


async def test_parquet_case_smoke(bench_env):
    """A, B and D on 200 Parquet rows, B's pick at that size, and the ratios by case."""
    n = 200
    runs = [{"kind": "A", "model": "iris", **await parquet_case.run_project(bench_env, n)}]
    trials = [{"micro_batch": 32, "concurrency": 8, "records_per_s": 1.0}]
    settings = harness.candidates(trials)
    assert settings == [(32, 8), harness.project_setting()] and harness.project_setting() == (1000, 32)
    (micro_batch, concurrency), picks = await harness.pick_direct(
        lambda n, mb, conc: parquet_case.run_direct(bench_env, n, mb, conc), n, settings
    )
    assert len(picks) == 4 and (micro_batch, concurrency) in settings
    b = await parquet_case.run_direct(bench_env, n, micro_batch, concurrency)
    runs.append({"kind": "B", "model": "iris", **b})
    runs.append({"kind": "D", "model": "iris", **parquet_case.run_ray_data(bench_env, n)})
    for run in runs:
        assert run["records"] == n and run["format"] == "parquet" and run.get("records_per_s", 0) > 0, run
    assert runs[0]["worker_peak_rss_mb"] > 0
    # A and B wrote the same files: names, rows per file, columns and their types.
    out = bench_env.workdir / "out"
    (a_folder,) = out.glob("A-*")
    b_folders = list(out.glob("B-pq-*"))
    assert len(b_folders) == 5  # the pick's four runs and the one above

    def files(folder):
        found = sorted(folder.glob("*.parquet"))
        return [(f.name, pq.read_metadata(f).num_rows, pq.read_schema(f)) for f in found]

    assert files(a_folder) and all(files(b) == files(a_folder) for b in b_folders)
    results = {"runs": runs}
    (row,) = ratios(results)
    assert row["model"] == "iris/parquet" and row["A/B"] > 0 and row["A/D"] > 0, row
    assert "| A | iris/parquet | 200 |" in markdown(results) and "iris/parquet" in table(results)


def test_parquet_bodies_match_the_worker(tmp_path):
    """B's request bodies are the ones the worker builds from the same rows."""
    source = parquet_case.make_parquet_dataset(tmp_path / "in.parquet", 50, row_group_rows=16)
    spec = DataSpec(input_columns=list(IrisClassifier.FEATURES), output_format="parquet")
    plan_input = PlanInput(input_uri=str(source), output_uri=str(tmp_path / "out"), spec=spec, shard_size=50)
    plan = make_plan(plan_input)
    reader = ShardReader(plan, 0, plan.shards[0].start())
    try:
        parsed = PartParser(plan, {}).parse(reader.read(50))
    finally:
        reader.close()
    ids, inputs = parquet_case.model_inputs(pq.read_table(source))
    assert parsed.ids == ids == [f"r{i}" for i in range(50)]
    assert ServeClient.encode(parsed.inputs) == ServeClient.encode(inputs)


def test_s3_plan_smoke():
    """The plan of a few small files on moto's S3 server: timed, and its requests counted."""
    figures = s3_plan.measure(files=20, records=3, runs=1)
    assert "error" not in figures, figures
    assert figures["records"] == 60 and figures["seconds"] > 0
    by_kind = figures["requests_by_kind"]
    assert by_kind["GetObject input"] == 20  # each file read once
    assert by_kind.get("ListObjectsV2 input", 0) <= 2  # listed in bulk, not per file
