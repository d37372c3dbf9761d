"""The benchmark harness runs end to end on 200 records, so it cannot rot (figures not checked)."""

from __future__ import annotations

import asyncio

import pyarrow.parquet as pq
import pytest

from bench import arrow_case, harness, parquet_case, s3_plan
from bench.__main__ import markdown, ratios, table

pytestmark = pytest.mark.integration


@pytest.fixture
def bench_env(temporal_server, serve_stack, serve_token_file, tmp_path):
    return harness.BenchEnv.for_stack(temporal_server.address, serve_stack, serve_token_file, tmp_path)


async def test_harness_smoke(bench_env):
    # A long-lived worker's batch: a warm-up of 2,000 records first (40 requests of 50), untimed and
    # left out of the timed batch's request counts (200 records: 4 requests or a few more by shard).
    warm_up = harness.make_dataset(bench_env.workdir / "warm-up.jsonl", 2000, "iris")
    tuning = {"micro_batch_size": 50}
    a = await harness.run_project(bench_env, 200, "iris", warm_up=warm_up, tuning=tuning)
    assert 4 <= sum(a["serve_requests"].values()) < 40, a["serve_requests"]
    runs = [
        {"kind": "A", "model": "iris", **a},
        {"kind": "B", "model": "iris", **await harness.run_direct(bench_env, 200, "iris", 32, 8)},
        {"kind": "C", "model": "echo", **await asyncio.to_thread(harness.run_per_record, bench_env, 20)},
        {"kind": "D", "model": "iris", **harness.run_ray_data(bench_env, 200, "iris")},
    ]
    floor = {"kind": "F", "model": "noop", **harness.run_floor(bench_env, 200, runs=2)}
    least = {"kind": "F", "model": "noop", **harness.run_floor(bench_env, 0, runs=2)}
    for run in runs:
        assert run["records"] in (200, 20)
        assert run.get("records_per_s", 0) > 0, run
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
    settings = [(64, 8), (200, 4)]  # make bench picks among arrow_case.B_SETTINGS the same way
    (micro_batch, concurrency), picks = await harness.pick_direct(
        lambda n, mb, conc: arrow_case.run_b_arrow(bench_env, n, mb, conc, keep=True), n, settings
    )
    assert len(picks) == 4 and (micro_batch, concurrency) in settings
    b = await arrow_case.run_b_arrow(bench_env, n, micro_batch, concurrency, keep=True)
    runs.append({"kind": "B", "model": "iris", **b})
    runs.append({"kind": "D", "model": "iris", **parquet_case.run_ray_data(bench_env, n)})
    for run in runs:
        assert run["records"] == n and run["format"] == "parquet" and run.get("records_per_s", 0) > 0, run
    assert runs[0]["worker_peak_rss_mb"] > 0
    # A and B wrote the same files: names, rows per file, columns and their types.
    out = bench_env.workdir / "out"
    (a_folder,) = out.glob("A-*")
    b_folders = list(out.glob("B-arrow-*"))
    assert len(b_folders) == 5  # the pick's four runs and the one above

    def files(folder):
        found = sorted(folder.glob("*.parquet"))
        return [(f.name, pq.read_metadata(f).num_rows, pq.read_schema(f)) for f in found]

    assert files(a_folder) and all(files(b) == files(a_folder) for b in b_folders)
    results = {"runs": runs}
    (row,) = ratios(results)
    assert row["model"] == "iris/parquet" and row["A/B"] > 0 and row["A/D"] > 0, row
    assert "| A | iris/parquet | 200 |" in markdown(results) and "iris/parquet" in table(results)


def test_s3_plan_smoke():
    """The plan of a few small files on moto's S3 server: timed, and its requests counted."""
    figures = s3_plan.measure(files=20, records=3, runs=1)
    assert "error" not in figures, figures
    assert figures["records"] == 60 and figures["seconds"] > 0
    by_kind = figures["requests_by_kind"]
    assert by_kind["GetObject input"] == 20  # each file read once
    assert by_kind.get("ListObjectsV2 input", 0) <= 2  # listed in bulk, not per file
