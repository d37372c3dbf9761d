"""Side-by-side benchmark on one machine, one Serve deployment, one run.

A: the project end to end (submit -> outputs written -> summary), default settings, worker as
   its own process (its peak RSS is measured).
B: a tuned direct asyncio client on the same Serve endpoint (small sweep of micro-batch size
   and concurrency), writing the same outputs: the practical upper bound.
C: the original example's design, one activity per record gathered in one workflow.
D: Ray Data ``map_batches`` calling the same model class in-process, on the same Ray cluster.
F: the workflow's shape with activities that do nothing (``bench/floor.py``): Temporal's own
   cost per batch, which no worker code can remove.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from services import constants as c
from services import json_codec
from services import metrics as m
from services.local.paths import SAMPLE_DATASET
from services.local.processes import LOOPBACK, free_port, marked_pids
from services.local.ray_serve import CLUSTER_MARKER, LocalRayServe
from services.serve.models import BUILTIN_MODELS
from services.worker import fs, jsonl, jsonl_sink
from services.worker.contracts import BatchInferenceInput, BatchInferenceOutput, Tuning
from services.worker.layout import OutputLayout
from services.worker.serve_client import ServeClient


@dataclass
class BenchEnv:
    temporal_address: str
    serve_url: str
    token_file: Path
    workdir: Path
    ray_marker: str | None = None  # sums Ray's PSS over this cluster's processes
    ray_address: str | None = None  # GCS address, for Ray Data
    ray_env: dict[str, str] | None = None
    worker_metrics_port: int = 0  # set by run_project: A's latencies come from the worker's metrics
    temporal_pid: int | None = None  # the dev server's process, whose CPU A's batches cost too

    @property
    def worker_metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.worker_metrics_port}/metrics"

    @classmethod
    def for_stack(
        cls, temporal_address: str, serve: LocalRayServe, token_file: Path, workdir: Path
    ) -> BenchEnv:
        """Everything the harness needs to know about one running local stack."""
        return cls(
            temporal_address=temporal_address,
            serve_url=serve.url,
            token_file=token_file,
            workdir=workdir,
            ray_marker=serve.marker,
            ray_address=serve.gcs_address,
            ray_env=serve.auth_env(),
        )

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()


# --- measurements ----------------------------------------------------------------------------


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ray_pss_mb(marker: str | None) -> float | None:
    if not marker:
        return None
    total = 0
    for pid in marked_pids(CLUSTER_MARKER, marker):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1)


def histogram_quantiles(metrics_text: str, name: str, qs: tuple[float, ...]) -> list[float | None]:
    """Quantiles of a Prometheus histogram (all label sets summed), interpolated within buckets
    as PromQL's histogram_quantile does: as coarse as the buckets."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0
    out: list[float | None] = []
    for q in qs:
        if not total:
            out.append(None)
            continue
        rank, lower, below = q * total, 0.0, 0.0
        for le in bounds:
            if buckets[le] >= rank:
                upper = le if le != float("inf") else lower
                share = (rank - below) / (buckets[le] - below) if buckets[le] > below else 0.0
                out.append(lower + (upper - lower) * share)
                break
            lower, below = le, buckets[le]
    return out


def counter_by_label(metrics_text: str, metric: m.Metric, label: str) -> dict[str, int]:
    """A worker counter's totals by one label (the others summed), from its /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, int] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == metric.prom:
                key = sample.labels[label]
                totals[key] = totals.get(key, 0) + int(sample.value)
    return totals


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


# --- data ------------------------------------------------------------------------------------


def make_dataset(path: Path, n: int, model: str) -> Path:
    """``n`` records for ``model``; the iris records reuse the bundled sample's measurements."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    features = []
    if model == "iris":
        with SAMPLE_DATASET.open() as fh:
            features = [json.loads(line)["features"] for line in fh]
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as fh:
        for i in range(n):
            if model == "iris":
                record = {"id": f"r{i}", "features": features[i % len(features)]}
            else:
                record = {"id": f"r{i}", "input": {"text": f"record number {i}", "n": i}}
            fh.write(json.dumps(record, separators=(",", ":")) + "\n")
    tmp.rename(path)
    return path


def count_outputs(output: Path) -> int:
    results, errors = 0, 0
    for f in output.glob("shard-*.jsonl"):
        with f.open("rb") as fh:
            results += sum(1 for _ in fh)
    for f in (output / "errors").glob("shard-*.jsonl"):
        with f.open("rb") as fh:
            errors += sum(1 for _ in fh)
    return results + errors


async def history_events(client: Client, workflow_id: str, first_run_id: str) -> list[int]:
    """Event count of every run in the continue-as-new chain."""
    counts, run_id = [], first_run_id
    while run_id:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        counts.append(len(history.events))
        last = history.events[-1]
        run_id = (
            last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
            if last.HasField("workflow_execution_continued_as_new_event_attributes")
            else ""
        )
    return counts


async def connect(env: BenchEnv) -> Client:
    return await Client.connect(env.temporal_address, data_converter=pydantic_data_converter)


# --- A: the project ----------------------------------------------------------------------------


def start_worker_process(
    env: BenchEnv, queue: str, extra_env: dict[str, str] | None = None
) -> subprocess.Popen:
    proc_env = dict(os.environ)
    proc_env.update(
        {
            c.ENV_TEMPORAL_ADDRESS: env.temporal_address,
            c.ENV_TEMPORAL_TASK_QUEUE: queue,
            c.ENV_SERVE_URL: env.serve_url,
            c.ENV_SERVE_TOKEN_FILE: str(env.token_file),
            c.ENV_WORKER_METRICS_PORT: str(env.worker_metrics_port),
            **(extra_env or {}),
        }
    )
    log_path = env.workdir / f"worker-{queue}.log"
    log = log_path.open("w")
    # stderr to a file, not a pipe: a pipe nobody reads blocks the worker once it is full.
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.worker"], env=proc_env, stderr=log, stdout=subprocess.DEVNULL
    )
    log.close()
    deadline = time.monotonic() + 60
    while c.WORKER_POLLING_LOG not in log_path.read_text():  # ready once it polls
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker not polling (exit {proc.poll()}): {log_path.read_text()[-2000:]}")
        time.sleep(0.1)
    return proc


WARM_UP_RECORDS = 2000


async def warm_up_batch(
    env: BenchEnv, client: Client, queue: str, source: Path, model: str, **batch: Any
) -> None:
    """One small batch on a fresh worker before the timed one, as a long-lived worker has run
    batches before: the first batch after a worker starts also pays the imports its activities
    make on first use and the workflow sandbox's first load of the workflow code
    (docs/performance.md gives the figure). Its output is removed."""
    output = env.workdir / "out" / f"warm-up-{uuid.uuid4().hex[:6]}"
    await client.execute_workflow(
        c.WORKFLOW_NAME,
        BatchInferenceInput(input_uri=str(source), output_uri=str(output), model=model, **batch),
        id=f"bench-warm-up-{uuid.uuid4().hex[:8]}",
        task_queue=queue,
        result_type=BatchInferenceOutput,
    )
    shutil.rmtree(output, ignore_errors=True)


async def scrape_worker(env: BenchEnv) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        return (await http.get(env.worker_metrics_url)).text


async def run_project(
    env: BenchEnv,
    n: int,
    model: str,
    source: Path | None = None,
    count: Callable[[Path], int] = count_outputs,
    worker_env: dict[str, str] | None = None,
    warm_up: Path | None = None,
    timed: asyncio.Event | None = None,
    **batch: Any,
) -> dict[str, Any]:
    """A on ``source`` (default: the JSONL records for ``model``); ``count`` counts what it
    wrote; ``worker_env``: more worker settings; ``warm_up``: an input the worker runs first,
    untimed (see ``warm_up_batch``; its requests are left out of ``serve_requests``, not out of
    the latency quantiles); ``timed``: set as the timed batch starts; ``batch``: more
    ``BatchInferenceInput`` fields."""
    source = source or make_dataset(env.workdir / "data" / f"{model}-{n}.jsonl", n, model)
    output = env.workdir / "out" / f"A-{model}-{n}-{uuid.uuid4().hex[:6]}"
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    client = await connect(env)
    env.worker_metrics_port = free_port()
    worker = start_worker_process(env, queue, worker_env)
    try:
        before: dict[str, int] = {}
        if warm_up is not None:
            await warm_up_batch(env, client, queue, warm_up, model, **batch)
            before = counter_by_label(await scrape_worker(env), m.SERVE_REQUESTS, m.CODE)
        idle_cpu = cpu_seconds(worker.pid)
        if timed is not None:
            timed.set()
        started = time.perf_counter()
        handle = await client.start_workflow(
            c.WORKFLOW_NAME,
            BatchInferenceInput(input_uri=str(source), output_uri=str(output), model=model, **batch),
            id=f"bench-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
            result_type=BatchInferenceOutput,
        )
        result = await handle.result()
        seconds = time.perf_counter() - started
        rss = peak_rss_mb(worker.pid)
        cpu = cpu_seconds(worker.pid) - idle_cpu
        metrics = await scrape_worker(env)
        p50, p99 = histogram_quantiles(metrics, m.SERVE_REQUEST_DURATION.name, (0.5, 0.99))
        requests = counter_by_label(metrics, m.SERVE_REQUESTS, m.CODE)
        requests = dict(collections.Counter(requests) - collections.Counter(before))
    finally:
        worker.terminate()
        worker.wait(60)
    assert result.succeeded == n and count(output) == n, (result, count(output))
    events = await history_events(client, handle.id, handle.first_execution_run_id or "")
    return {
        "records": n,
        "seconds": round(seconds, 2),
        "records_per_s": round(n / seconds),
        "micro_batch": Tuning.model_validate(batch.get("tuning") or {}).micro_batch_size,
        # from the worker's request-duration histogram, interpolated within its buckets
        "p50_batch_ms": round(p50 * 1000, 1) if p50 is not None else None,
        "p99_batch_ms": round(p99 * 1000, 1) if p99 is not None else None,
        "worker_peak_rss_mb": round(rss, 1),
        # the worker's CPU over the batch: on two shared cores, what it spends Serve cannot
        "cpu_s": round(cpu, 2),
        "ray_pss_mb": ray_pss_mb(env.ray_marker),
        "runs": len(events),
        "history_events_max_run": max(events),
        "history_events_per_1k": round(sum(events) / (n / 1000), 1),
        # the worker's own count of its HTTP attempts to Serve, by status (retries included)
        "serve_requests": requests,
    }


# --- B: tuned direct client ------------------------------------------------------------------


async def run_direct(
    env: BenchEnv, n: int, model: str, micro_batch: int, concurrency: int, write: bool = True
) -> dict[str, Any]:
    source = make_dataset(env.workdir / "data" / f"{model}-{n}.jsonl", n, model)
    output = env.workdir / "out" / f"B-{model}-{n}-{uuid.uuid4().hex[:6]}"
    route = c.MODEL_INFERENCE_ROUTE.format(model=model)
    headers = {c.AUTH_HEADER: f"{c.AUTH_SCHEME} {env.token}", "Content-Type": "application/json"}
    latencies: list[float] = []
    limit = asyncio.Semaphore(concurrency)
    shard_size = 2000
    gc.freeze()  # as the worker does at start: fair to B, whose process also holds much else
    started, cpu_started = time.perf_counter(), time.process_time()
    async with httpx.AsyncClient(
        base_url=env.serve_url,
        timeout=60,
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
    ) as http:

        async def send(ids: list[Any], inputs: list[Any]) -> bytes:
            async with limit:
                t0 = time.perf_counter()
                body = ServeClient.encode(inputs)  # the worker's request body, built the same way
                response = await http.post(route, content=body, headers=headers)
                response.raise_for_status()
                latencies.append(time.perf_counter() - t0)
            return jsonl_sink.results(ids, json_codec.loads(response.content)["predictions"])

        async def shard(index: int, raws: list[bytes]) -> int:
            try:
                parsed = jsonl.parse_lines(raws)  # the worker's own bulk parse: equal footing
                if parsed is None:
                    parsed = tuple(map(list, zip(*map(jsonl.parse_line, raws), strict=True)))
                ids, inputs, _ = parsed
                steps = range(0, len(ids), micro_batch)
                parts = await asyncio.gather(
                    *(send(ids[i : i + micro_batch], inputs[i : i + micro_batch]) for i in steps)
                )
                if write:
                    await asyncio.to_thread(
                        fs.write_bytes, OutputLayout(str(output)).shard_uri(index), b"".join(parts)
                    )
                return len(ids)
            finally:
                pending.release()

        # Streaming, as a tuned client would: records are read while earlier ones are in flight,
        # with enough read ahead to keep every request slot busy and memory bounded.
        pending = asyncio.Semaphore(max(4, 2 * concurrency * micro_batch // shard_size))
        tasks = []
        with source.open("rb") as fh:
            while raws := list(itertools.islice(fh, shard_size)):
                await pending.acquire()
                tasks.append(asyncio.create_task(shard(len(tasks), raws)))
        done = sum(await asyncio.gather(*tasks))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    gc.unfreeze()
    assert done == n
    return {
        "records": n,
        "seconds": round(seconds, 2),
        "records_per_s": round(n / seconds),
        "micro_batch": micro_batch,
        "concurrency": concurrency,
        "cpu_s": round(cpu, 2),  # the client's (this process's) CPU over the run
        "p50_batch_ms": round(percentile(latencies, 50) * 1000, 1),
        "p99_batch_ms": round(percentile(latencies, 99) * 1000, 1),
        "ray_pss_mb": ray_pss_mb(env.ray_marker),
    }


# B's sweep. Requests of up to 1,024 records (Serve's max_records_per_request) keep paying off
# on these cores: per-request costs dominate (docs/performance.md).
SWEEP_MICRO_BATCH = (250, 500, 1000)
SWEEP_CONCURRENCY = (4, 8, 16, 32)
Setting = tuple[int, int]  # (records per request, requests in flight)
DirectRun = Callable[[int, int, int], Awaitable[dict[str, Any]]]  # (records, micro_batch, concurrency)


async def sweep_direct(env: BenchEnv, model: str, sample: int = 20_000) -> tuple[int, int, list[dict]]:
    """B's best setting on a sample: the grid twice, the second time in reverse order, each
    setting judged by its faster run (one run on these shared cores moves by ±15%, enough to
    crown a weaker setting and so flatter A). Only a short list: ``pick_direct`` decides at
    the size measured."""
    grid = [(mb, conc) for mb in SWEEP_MICRO_BATCH for conc in SWEEP_CONCURRENCY]
    trials = []
    for micro_batch, concurrency in grid + grid[::-1]:
        trials.append(await run_direct(env, sample, model, micro_batch, concurrency, write=False))
    best = max(trials, key=lambda t: t["records_per_s"])
    return best["micro_batch"], best["concurrency"], trials


def project_setting(tuning: Tuning | None = None) -> Setting:
    """What A sends at its defaults: requests of ``micro_batch_size`` records, and as many in
    flight as the window's shards have (each: ``parts_in_flight`` parts of ``checkpoint_every``
    records, at most ``max_in_flight``). 1,000 x 32 today."""
    t = tuning or Tuning()
    per_part = -(-t.checkpoint_every // t.micro_batch_size)
    return t.micro_batch_size, min(t.max_in_flight, t.parts_in_flight * per_part) * t.max_concurrent_shards


def candidates(trials: list[dict[str, Any]], top: int = 2) -> list[Setting]:
    """B's candidates for a size: the sweep's ``top`` settings (each by its faster run) and the
    project's own, so that B is never weaker than what A itself does."""
    best: dict[Setting, float] = {}
    for t in trials:
        key = (t["micro_batch"], t["concurrency"])
        best[key] = max(best.get(key, 0.0), t["records_per_s"])
    ranked = sorted(best, key=lambda k: -best[k])[:top]
    return list(dict.fromkeys([*ranked, project_setting()]))


async def pick_direct(
    run: DirectRun, n: int, settings: list[Setting], rounds: int = 2
) -> tuple[Setting, list[dict[str, Any]]]:
    """B's setting at ``n`` records, the size measured (a sample's winner can lose at 100k or
    1M): each candidate ``rounds`` times, writing its outputs as in the pairs, the order
    reversed every round; judged by its faster run."""
    trials: list[dict[str, Any]] = []
    for r in range(rounds):
        for micro_batch, concurrency in settings if r % 2 == 0 else settings[::-1]:
            trials.append(await run(n, micro_batch, concurrency))
    best = max(trials, key=lambda t: t["records_per_s"])
    return (best["micro_batch"], best["concurrency"]), trials


def last_json_line(stdout: str) -> dict[str, Any] | None:
    """The figures a baseline's own process printed (its last JSON line), or None."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else None


# --- C: one activity per record ---------------------------------------------------------------


def run_per_record(env: BenchEnv, n: int, timeout_s: float = 120) -> dict[str, Any]:
    """C in a process of its own: a worker left with thousands of pending activities can hang
    on shutdown (the SDK cannot evict the workflow), and must not hang the whole benchmark."""
    cmd = [
        sys.executable, "-m", "bench.per_record", env.temporal_address, env.serve_url,
        str(env.token_file), str(n), str(timeout_s),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        stdout, _ = proc.communicate(timeout=timeout_s + 120)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, _ = proc.communicate()
    if (result := last_json_line(stdout)) is None:
        return {"records": n, "error": f"baseline C process ended without a result (exit {proc.returncode})"}
    return result


# --- F: what Temporal alone costs a batch ---------------------------------------------------


def run_floor(env: BenchEnv, n: int, runs: int = 15) -> dict[str, Any]:
    """F for a batch of ``n`` records: the workflow's shape with activities that do nothing
    (``bench/floor.py``), in a process of its own as A's worker is."""
    cmd = [sys.executable, "-m", "bench.floor", env.temporal_address, str(n), str(runs)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if (figures := last_json_line(result.stdout)) is None:
        tail = result.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"records": n, "error": f"floor run failed (exit {result.returncode}): {tail[0][:300]}"}
    return figures


# --- D: Ray Data ------------------------------------------------------------------------------


def run_ray_data(env: BenchEnv, n: int, model: str) -> dict[str, Any]:
    if not env.ray_address:
        return {"records": n, "skipped": "no Ray address"}
    source = make_dataset(env.workdir / "data" / f"{model}-{n}.jsonl", n, model)
    output = env.workdir / "out" / f"D-{model}-{n}-{uuid.uuid4().hex[:6]}"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.ray_data_run",
            env.ray_address,
            BUILTIN_MODELS[model],
            str(source),
            str(output),
        ],
        env={**os.environ, **(env.ray_env or {})},
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    if result.returncode != 0:
        return {
            "records": n,
            "error": result.stderr.strip().splitlines()[-1][:300] if result.stderr else "failed",
        }
    out = json.loads(result.stdout.strip().splitlines()[-1])
    out["ray_pss_mb"] = ray_pss_mb(env.ray_marker)
    return out
