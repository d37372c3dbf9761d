"""The benchmark harness runs end to end on 200 records, so it cannot rot (figures not checked)."""

from __future__ import annotations

import asyncio

import pytest

from bench import harness
from bench.__main__ import markdown, ratios, table

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
