"""The Arrow path (issue 21), side by side in one run on the Parquet case's input (Iris rows as
Parquet in, Parquet out; ``bench/parquet_case.py``):

A-json:  the project with the worker forced to JSON (``SERVE_WIRE=json``): what A was before.
A-arrow: the project as it is: the worker sends the four columns as Arrow IPC, the iris model's
         columnar predict answers in Arrow, the results are written from the reply's arrays.
B-arrow: a direct client reading the file with pyarrow, sending Arrow bodies as A-arrow does and
         writing the same shard files from the replies. Each round runs B at every setting in
         ``B_SETTINGS`` (A's own among them: a request per part of 16,384 rows) and B-arrow is
         the fastest of the round, so that A/B > 1 would mean noise, not a weak B.
D:       Ray Data ``read_parquet`` -> ``map_batches`` -> ``write_parquet`` (parquet_case.run_ray_data).

Beside records/s: the worker's (or B's client's) CPU-seconds and Serve's (every process of the
local Ray cluster: replicas, proxy, controller, raylet, GCS; and the replicas + proxy alone) per
batch, the Temporal dev server's, and all of them together (``all_cpu_s``): a batch that keeps
both cores busy takes about ``all_cpu_s`` / 2 seconds, so A/B is near B's ``all_cpu_s`` over
A's. ``--profile`` records a py-spy profile of A's worker and of the iris replica per path.

    python -m bench.arrow_case [--rows 1000000] [--rounds 2] [--profile] [--out docs/]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa

from bench import harness, parquet_case
from bench.local_stack import local_stack, stop_on_sigterm
from services import arrow_wire
from services import constants as c
from services.local.processes import marked_pids
from services.local.ray_serve import CLUSTER_MARKER
from services.worker.contracts import COLUMNAR_PART_ROWS, BatchInferenceInput, BatchInferenceOutput

MODEL = parquet_case.MODEL
FEATURES = parquet_case.FEATURES
ID = parquet_case.ID


# --- Serve's CPU -------------------------------------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def ray_cpu(marker: str | None) -> dict[int, tuple[str, float]]:
    """CPU-seconds so far of every process of this Ray cluster: pid -> (command line, seconds)."""
    out = {}
    for pid in marked_pids(CLUSTER_MARKER, marker or ""):
        with contextlib.suppress(OSError, IndexError, ValueError):
            out[pid] = (_cmdline(pid), harness.cpu_seconds(pid))
    return out


def _role(cmdline: str) -> str:
    if "ProxyActor" in cmdline:
        return "proxy"
    if "ServeReplica" in cmdline:
        return "ingress" if ":Ingress" in cmdline else "model"
    return "other"


def temporal_cpu(env: harness.BenchEnv) -> float:
    """CPU-seconds of the Temporal dev server so far (0 when the bench did not start it)."""
    return harness.cpu_seconds(env.temporal_pid) if env.temporal_pid else 0.0


def cpu_totals(own: float, ray: dict[str, float], temporal: float) -> dict[str, float]:
    """A batch's Temporal server CPU-seconds, and all its CPU-seconds: ``own`` (the worker's or
    B's client's), Ray's (``cpu_spent``) and Temporal's."""
    return {"temporal_cpu_s": round(temporal, 2), "all_cpu_s": round(own + ray["ray_cpu_s"] + temporal, 2)}


def cpu_spent(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU-seconds between two ``ray_cpu`` snapshots: all of Ray's, Serve's (replicas and
    proxy) and each role's."""
    roles = {"proxy": 0.0, "ingress": 0.0, "model": 0.0, "other": 0.0}
    for pid, (cmd, seconds) in after.items():
        roles[_role(cmd)] += seconds - before.get(pid, (cmd, 0.0))[1]
    serve = roles["proxy"] + roles["ingress"] + roles["model"]
    return {
        "ray_cpu_s": round(sum(roles.values()), 2),
        "serve_cpu_s": round(serve, 2),
        **{f"{role}_cpu_s": round(spent, 2) for role, spent in roles.items()},
    }


def replica_pid(marker: str | None, model: str) -> int | None:
    for pid, (cmd, _) in ray_cpu(marker).items():
        if "ServeReplica" in cmd and f":{model}" in cmd:
            return pid
    return None


# Samples per second: enough for a 2 s batch to show its parts; the profiled round runs slower
# (py-spy reads the process's memory), so throughput comes from the other rounds.
PROFILE_RATE_HZ = 200


def _thread_of(frames: list[str]) -> str:
    """Which of the worker's threads a stack is on: the event loop's (requests, the Temporal
    SDK), the pool's (``asyncio.to_thread``: reads, part files, Parquet encoding) or another."""
    if any("run_forever" in frame for frame in frames):
        return "event loop"
    if any(frame.startswith("_worker (concurrent/futures/thread.py") for frame in frames):
        return "thread pool"
    return "other"


@contextlib.contextmanager
def profiled(pid: int | None, path: Path | None):
    """py-spy sampling ``pid`` into ``path`` (folded stacks, its "raw" format) while the block runs."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if pid is None or path is None or spy is None:
        yield
        return
    proc = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            str(PROFILE_RATE_HZ),
            "--output",
            str(path),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.send_signal(2)  # SIGINT: py-spy writes what it has
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.poll() is None:
            proc.kill()


def summarize(path: Path, top: int = 12) -> dict[str, list[tuple[str, float]]]:
    """A py-spy folded-stack file's top frames by own samples ("self") and by samples anywhere
    on the stack ("total"), as shares of all samples (idle included: an idle worker waits in
    epoll/select, which shows as such), and the shares of each kind of thread ("threads")."""
    own: dict[str, int] = {}
    anywhere: dict[str, int] = {}
    threads: dict[str, int] = {}
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]  # per function
        own[frames[-1]] = own.get(frames[-1], 0) + n
        thread = _thread_of(frames)
        threads[thread] = threads.get(thread, 0) + n
        for frame in set(frames):
            anywhere[frame] = anywhere.get(frame, 0) + n

    def share(counts: dict[str, int]) -> list[tuple[str, float]]:
        best = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return [(frame, round(100 * k / max(samples, 1), 1)) for frame, k in best]

    return {"samples": samples, "threads": share(threads), "self": share(own), "total": share(anywhere)}  # type: ignore[dict-item]


# --- A -----------------------------------------------------------------------------------------


def results_mb(output: Path) -> float:
    """The size of a batch's results files (its Parquet shards), in MB."""
    return round(sum(f.stat().st_size for f in output.rglob("*.parquet")) / 1e6, 1)


async def run_a(env: harness.BenchEnv, n: int, wire: str, profile_dir: Path | None) -> dict[str, Any]:
    source = parquet_case.dataset(env, n)
    output = env.workdir / "out" / f"A-{wire}-{n}-{uuid.uuid4().hex[:6]}"
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    client = await harness.connect(env)
    env.worker_metrics_port = harness.free_port()
    worker = harness.start_worker_process(env, queue, {c.ENV_SERVE_WIRE: wire})
    try:
        warm_up = parquet_case.dataset(env, harness.WARM_UP_RECORDS)
        await harness.warm_up_batch(env, client, queue, warm_up, MODEL, **parquet_case.batch_fields())
        idle_cpu = harness.cpu_seconds(worker.pid)
        ray_before, temporal_before = ray_cpu(env.ray_marker), temporal_cpu(env)
        worker_profile = profile_dir / f"A-{wire}-worker.txt" if profile_dir else None
        serve_profile = profile_dir / f"A-{wire}-replica.txt" if profile_dir else None
        started = time.perf_counter()
        with (
            profiled(worker.pid, worker_profile),
            profiled(replica_pid(env.ray_marker, MODEL), serve_profile),
        ):
            result = await client.execute_workflow(
                c.WORKFLOW_NAME,
                BatchInferenceInput(
                    input_uri=str(source), output_uri=str(output), model=MODEL, **parquet_case.batch_fields()
                ),
                id=f"bench-{uuid.uuid4().hex[:8]}",
                task_queue=queue,
                result_type=BatchInferenceOutput,
            )
        seconds = time.perf_counter() - started
        cpu = harness.cpu_seconds(worker.pid) - idle_cpu
        ray = cpu_spent(ray_before, ray_cpu(env.ray_marker))
        temporal = temporal_cpu(env) - temporal_before
        rss = harness.peak_rss_mb(worker.pid)
    finally:
        worker.terminate()
        worker.wait(60)
    assert result.succeeded == n and parquet_case.count_outputs(output) == n, result
    output_mb = results_mb(output)
    shutil.rmtree(output, ignore_errors=True)
    return {
        "run": f"A-{wire}",
        "records": n,
        "seconds": round(seconds, 2),
        "records_per_s": round(n / seconds),
        "worker_cpu_s": round(cpu, 2),
        **ray,
        **cpu_totals(cpu, ray, temporal),
        "worker_peak_rss_mb": round(rss, 1),
        "output_mb": output_mb,
    }


# --- B-arrow -----------------------------------------------------------------------------------


# B's (rows per request, requests in flight): A's bodies at 32 and 8 in flight, and the smaller
# bodies B used when A's parts were 2,000 rows.
B_SETTINGS = [(COLUMNAR_PART_ROWS, 32), (COLUMNAR_PART_ROWS, 8), (2_000, 32)]


async def run_b_arrow(
    env: harness.BenchEnv,
    n: int,
    micro_batch: int = COLUMNAR_PART_ROWS,
    concurrency: int = 32,
    keep: bool = False,
) -> dict[str, Any]:
    """B on the Parquet file with Arrow bodies (``parquet_case.read_send_write``): the replies'
    prediction columns written in order into A's shard files (removed after, unless ``keep``)."""
    source = parquet_case.dataset(env, n)
    output = env.workdir / "out" / f"B-arrow-{n}-{uuid.uuid4().hex[:6]}"
    route = c.MODEL_INFERENCE_ROUTE.format(model=MODEL)
    headers = {c.AUTH_HEADER: f"{c.AUTH_SCHEME} {env.token}", "Content-Type": c.ARROW_CONTENT_TYPE}
    limit = asyncio.Semaphore(concurrency)
    ray_before, temporal_before = ray_cpu(env.ray_marker), temporal_cpu(env)
    gc.freeze()
    started, cpu_started = time.perf_counter(), time.process_time()
    async with httpx.AsyncClient(
        base_url=env.serve_url,
        timeout=60,
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
    ) as http:

        async def send(ids: pa.Array, inputs: pa.RecordBatch) -> pa.Table:
            async with limit:
                response = await http.post(route, content=arrow_wire.encode(inputs), headers=headers)
                response.raise_for_status()
            reply = arrow_wire.decode_results(response.content, inputs.num_rows)
            return pa.table({"id": ids, "prediction": reply.column(arrow_wire.PREDICTION)})

        async def chunk(batch: pa.RecordBatch) -> pa.Table:
            inputs = batch.select(FEATURES)
            steps = range(0, batch.num_rows, micro_batch)
            parts = await asyncio.gather(
                *(send(batch.column(ID).slice(i, micro_batch), inputs.slice(i, micro_batch)) for i in steps)
            )
            return pa.concat_tables(parts)

        rows = max(micro_batch, parquet_case.CHUNK_ROWS)
        done = await parquet_case.read_send_write(
            source,
            output,
            n,
            chunk,
            parquet_case.chunks_ahead(concurrency, micro_batch, rows),
            chunk_rows=rows,
        )
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    gc.unfreeze()
    ray = cpu_spent(ray_before, ray_cpu(env.ray_marker))
    temporal = temporal_cpu(env) - temporal_before
    assert done == n and parquet_case.count_outputs(output) == n, done
    output_mb = results_mb(output)
    if not keep:
        shutil.rmtree(output, ignore_errors=True)
    return {
        "run": "B-arrow",
        "format": "parquet",
        "records": n,
        "micro_batch": micro_batch,  # the keys harness.pick_direct and make bench's table read
        "concurrency": concurrency,
        "seconds": round(seconds, 2),
        "records_per_s": round(n / seconds),
        "cpu_s": round(cpu, 2),  # the client's
        "output_mb": output_mb,
        **ray,
        **cpu_totals(cpu, ray, temporal),
    }


def run_d(env: harness.BenchEnv, n: int) -> dict[str, Any]:
    before = ray_cpu(env.ray_marker)
    started = time.perf_counter()
    figures = parquet_case.run_ray_data(env, n)
    wall = time.perf_counter() - started
    return {
        "run": "D",
        **figures,
        "wall_with_driver_s": round(wall, 2),
        **cpu_spent(before, ray_cpu(env.ray_marker)),
    }


# --- the run -----------------------------------------------------------------------------------


async def main_async(rows: int, rounds: int, profile: bool, out: Path) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-arrow-"))
    results: list[dict[str, Any]] = []
    try:
        async with local_stack(work) as (temporal, serve):
            env = harness.BenchEnv.for_stack(temporal.address, serve, serve.token_file, work)
            env.temporal_pid = temporal.proc.pid if temporal.proc else None
            parquet_case.dataset(env, rows)
            # warm-up: Serve's replicas, the worker's imports, the page cache
            await run_a(env, min(rows, 50_000), "json", None)
            await run_a(env, min(rows, 50_000), "auto", None)
            profile_dir = out / "profiles" if profile else None
            if profile_dir:
                profile_dir.mkdir(parents=True, exist_ok=True)
            for round_ in range(rounds):
                order = ["json", "auto"] if round_ % 2 == 0 else ["auto", "json"]
                for wire in order:
                    row = await run_a(env, rows, wire, profile_dir if round_ == 0 else None)
                    results.append({**row, "round": round_})
                    print(json.dumps(results[-1]), flush=True)
                tried = [await run_b_arrow(env, rows, *setting) for setting in B_SETTINGS]
                for b in tried:
                    print(json.dumps({**b, "round": round_, "candidate": True}), flush=True)
                best = max(tried, key=lambda b: b["records_per_s"])
                results.append({**best, "round": round_, "candidates": tried})
                print(json.dumps({k: v for k, v in results[-1].items() if k != "candidates"}), flush=True)
                results.append({**await asyncio.to_thread(run_d, env, rows), "round": round_})
                print(json.dumps(results[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"machine": os.cpu_count(), "rows": rows, "results": results}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.arrow_case", description=__doc__)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--profile", action="store_true", help="py-spy profiles of round 0 (worker, iris replica)")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--summarize", type=Path, nargs="*", help="only print the summary of these profiles")
    args = p.parse_args()
    if args.summarize:
        for path in args.summarize:
            print(path, json.dumps(summarize(path), indent=1))
        return
    stop_on_sigterm()
    args.out.mkdir(parents=True, exist_ok=True)
    figures = asyncio.run(main_async(args.rows, args.rounds, args.profile, args.out))
    path = args.out / f"arrow-{time.strftime('%Y%m%d-%H%M')}.json"
    path.write_text(json.dumps(figures, indent=1))
    print(path)


if __name__ == "__main__":
    main()
