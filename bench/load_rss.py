"""Worker memory under load: does peak RSS stay flat as the batch grows?

Starts its own Temporal dev server and local Ray Serve (the shared Serve config, auth on), then
for each size runs one batch of Iris records through the real ``iris`` model with default
tuning, each in a fresh worker process (``python -m services.worker``), and prints that
process's peak RSS (``VmHWM`` in /proc/<pid>/status), its RSS when idle before the batch, and
records/s. A script, not a test:

    .venv/bin/python bench/load_rss.py [--sizes 10000 100000] [--set checkpoint_every=1000] [--json out.json]

Peak RSS follows what the worker holds in flight (``max_concurrent_shards`` shards, each with up
to ``parts_in_flight`` parts of ``checkpoint_every`` records), not the batch size; a batch smaller than that
window (e.g. 10k: four shards of 2,500) holds less. Other tuning: ``--set key=value``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from services import constants as c
from services.local.paths import REPO_ROOT
from services.local.processes import free_port
from services.local.ray_serve import LocalRayServe, ensure_token
from services.local.temporal_dev import TemporalDevServer
from services.worker.contracts import BatchInferenceInput, BatchInferenceOutput, Tuning

BASE = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5], [6.3, 2.5, 4.9, 1.5]]


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def write_input(path: Path, n: int) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"iris-{i:07d}", "features": BASE[i % len(BASE)]}) + "\n")
    return path


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.worker"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def one_batch(
    temporal: TemporalDevServer, serve: LocalRayServe, size: int, work: Path, tuning: dict
) -> dict:
    source = write_input(work / f"in-{size}.jsonl", size)
    queue = f"rss-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "SERVE_", "WORKER_"))}
    env.update(
        {
            c.ENV_TEMPORAL_ADDRESS: temporal.address,
            c.ENV_TEMPORAL_TASK_QUEUE: queue,
            c.ENV_SERVE_URL: serve.url,
            c.ENV_SERVE_TOKEN_FILE: str(serve.token_file),
            c.ENV_WORKER_METRICS_PORT: "0",
        }
    )
    log = work / f"worker-{size}.log"
    worker = start_worker(env, log)
    try:
        deadline = time.monotonic() + 60
        while c.WORKER_POLLING_LOG.encode() not in log.read_bytes():
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(log.read_text()[-2000:])
            await asyncio.sleep(0.1)
        idle_kb = status_kb(worker.pid, "VmRSS")
        client = await Client.connect(temporal.address, data_converter=pydantic_data_converter)
        batch = BatchInferenceInput(
            input_uri=str(source),
            output_uri=str(work / f"out-{size}-{queue}"),
            model="iris",
            tuning=Tuning(**tuning),
        )
        started = time.monotonic()
        result = await client.execute_workflow(
            c.WORKFLOW_NAME, batch, id=f"rss-{size}-{uuid.uuid4().hex[:6]}", task_queue=queue,
            result_type=BatchInferenceOutput,
        )  # fmt: skip
        wall = time.monotonic() - started
        peak_kb = status_kb(worker.pid, "VmHWM")
        assert result.succeeded == size and result.failed == 0, result
        return {
            "records": size,
            "shards": result.shards,
            "wall_s": round(wall, 2),
            "records_per_s": round(size / wall),
            "worker_idle_rss_mb": round(idle_kb / 1024, 1),
            "worker_peak_rss_mb": round(peak_kb / 1024, 1),
        }
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(worker.wait, 60)
        except subprocess.TimeoutExpired:
            worker.kill()


async def main_async(sizes: list[int], tuning: dict, out: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="bi-rss-", dir="/tmp") as tmp:
        work = Path(tmp)
        temporal = TemporalDevServer(work / "temporal", port=free_port(), ui_port=free_port())
        serve = LocalRayServe(
            work / "ray", ensure_token(work / "serve-token"), http_port=free_port(), gcs_port=free_port(),
            dashboard_port=free_port(), metrics_port=free_port(),
        )  # fmt: skip
        try:
            await asyncio.to_thread(temporal.start)
            await asyncio.to_thread(serve.start)
            rows = []
            for size in sizes:
                row = await one_batch(temporal, serve, size, work, tuning)
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            await asyncio.to_thread(serve.stop)
            await asyncio.to_thread(temporal.stop)
    print(
        f"\n{'records':>9} {'shards':>6} {'wall s':>7} {'rec/s':>6} {'idle RSS MB':>11} {'peak RSS MB':>11}"
    )
    for r in rows:
        print(
            f"{r['records']:>9} {r['shards']:>6} {r['wall_s']:>7} {r['records_per_s']:>6} "
            f"{r['worker_idle_rss_mb']:>11} {r['worker_peak_rss_mb']:>11}"
        )
    if len(rows) > 1:
        growth = rows[-1]["worker_peak_rss_mb"] - rows[0]["worker_peak_rss_mb"]
        print(f"peak RSS {rows[-1]['records'] // rows[0]['records']}x records: {growth:+.1f} MB")
    if out:
        payload = {"machine_cpus": os.cpu_count(), "tuning": Tuning(**tuning).model_dump(), "runs": rows}
        out.write_text(json.dumps(payload, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="tuning, e.g. shard_size=2500"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    tuning = {k: json.loads(v) for k, _, v in (item.partition("=") for item in args.set)}
    asyncio.run(main_async(args.sizes, tuning, args.json))


if __name__ == "__main__":
    main()
