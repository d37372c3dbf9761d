"""The Arrow-path bench (bench/arrow_case.py) runs end to end on a few hundred rows, so it cannot
rot (figures not checked), and its accounting of Serve's CPU and of profiles is right."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import arrow_case, harness


@pytest.fixture
def bench_env(temporal_server, serve_stack, serve_token_file, tmp_path):
    env = harness.BenchEnv.for_stack(temporal_server.address, serve_stack, serve_token_file, tmp_path)
    env.temporal_pid = temporal_server.proc.pid
    return env


@pytest.mark.integration
async def test_arrow_case_smoke(bench_env):
    temporal = []
    for wire in ("json", "auto"):
        row = await arrow_case.run_a(bench_env, 300, wire, None)
        assert row["run"] == f"A-{wire}" and row["records"] == 300
        assert row["serve_cpu_s"] > 0, "Serve's processes were found and did the work"
        # The dev server's process was found and ran the batch's workflow (0.09-0.17 s here).
        assert row["temporal_cpu_s"] > 0
        temporal.append(row["temporal_cpu_s"])
    row = await arrow_case.run_b_arrow(bench_env, 300, micro_batch=10)
    # Serve's processes together, over 30 requests (one request of 300 rows can cost all of
    # Serve under the 10 ms that /proc counts and the figures round to).
    assert row["records"] == 300 and row["serve_cpu_s"] > 0
    assert row["temporal_cpu_s"] < min(temporal), "B runs no workflow: Temporal idles"


def test_serve_cpu_is_split_by_role_and_new_processes_count_from_zero():
    before = {1: ("ray::ProxyActor", 1.0), 2: ("ray::ServeReplica:app:Ingress", 2.0), 3: ("raylet", 5.0)}
    after = {
        1: ("ray::ProxyActor", 1.5),
        2: ("ray::ServeReplica:app:Ingress.handle_request", 3.0),
        3: ("raylet", 5.25),
        4: ("ray::ServeReplica:app:iris", 0.75),  # started between the two
    }
    spent = arrow_case.cpu_spent(before, after)
    assert (spent["proxy_cpu_s"], spent["ingress_cpu_s"], spent["model_cpu_s"], spent["other_cpu_s"]) == (
        0.5,
        1.0,
        0.75,
        0.25,
    )
    assert (spent["serve_cpu_s"], spent["ray_cpu_s"]) == (2.25, 2.5)


def test_a_profile_is_summarised_per_function(tmp_path: Path):
    folded = tmp_path / "p.txt"
    folded.write_text(
        "main (w.py:1);run_forever (asyncio/base_events.py:607);send (w.py:5);encode (arrow_wire.py:30) 3\n"
        "main (w.py:1);run_forever (asyncio/base_events.py:607);send (w.py:6);encode (arrow_wire.py:31) 1\n"
        "main (w.py:1);_worker (concurrent/futures/thread.py:83);write (w.py:9) 4\n"
    )
    summary = arrow_case.summarize(folded)
    assert summary["samples"] == 8
    assert dict(summary["self"]) == {"encode (arrow_wire.py)": 50.0, "write (w.py)": 50.0}
    assert dict(summary["total"])["main (w.py)"] == 100.0 and dict(summary["total"])["send (w.py)"] == 50.0
    assert dict(summary["threads"]) == {"event loop": 50.0, "thread pool": 50.0}
