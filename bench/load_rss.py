"""Worker memory under load: does peak RSS stay flat as the batch grows?

Starts its own Temporal dev server and local Ray Serve (the shared Serve config, auth on), then
for each size runs one batch of Iris records through the real ``iris`` model with default
tuning, each in a fresh worker process (``python -m services.worker``), and prints that
process's peak RSS (``VmHWM`` in /proc/<pid>/status), its RSS when idle before the batch, and
records/s. A script, not a test:

    .venv/bin/python bench/load_rss.py [--sizes 10000 100000] [--set checkpoint_every=1000] [--json out.json]
    .venv/bin/python bench/load_rss.py --format parquet [--ten-million] [--json out.json]
    .venv/bin/python bench/load_rss.py --format parquet --sizes 1000000 --profile bench/results/profiles

``--format parquet``: the Parquet case of the bench (``bench/parquet_case.py``: an id and the four
measurements as float columns, row groups of pyarrow's default 1,048,576 rows, Parquet results),
at 100k and 1M rows by default; ``--ten-million`` adds 10M rows (minutes on two cores; the input
is ~0.1 GB in the temp folder). Each row also gives the worker's CPU seconds over the batch.

Peak RSS follows what the worker holds in flight (``max_concurrent_shards`` shards, each with up
to ``parts_in_flight`` parts of ``checkpoint_every`` records), not the batch size; a batch smaller than that
window (e.g. 10k: four shards of 2,500) holds less. Other tuning: ``--set key=value``.

``--profile DIR``: py-spy samples the worker over each batch (100 Hz, idle threads left out) and
writes its stacks to ``DIR/worker-<format>-<records>.txt`` (py-spy's raw format: one line per
stack with its sample count, for flame graphs), plus the top functions by own and total time.
Sampling costs the worker some CPU: profile runs are not the figures.
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
from typing import Any

if __package__ in (None, ""):  # run as a script: the repository root, for ``bench``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from bench import parquet_case
from bench.local_stack import local_stack, stop_on_sigterm
from services import constants as c
from services.local.paths import REPO_ROOT
from services.local.ray_serve import LocalRayServe
from services.local.temporal_dev import TemporalDevServer
from services.worker.contracts import BatchInferenceInput, BatchInferenceOutput, Tuning

BASE = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5], [6.3, 2.5, 4.9, 1.5]]


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_input(path: Path, n: int) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"iris-{i:07d}", "features": BASE[i % len(BASE)]}) + "\n")
    return path


def start_profiler(pid: int, out: Path) -> subprocess.Popen:
    """py-spy sampling ``pid`` until it is sent SIGINT (see ``stop_profiler``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen(
        [str(spy), "record", "--pid", str(pid), "--rate", "100", "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_profiler(spy: subprocess.Popen, out: Path) -> None:
    spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    try:
        spy.wait(30)
    except subprocess.TimeoutExpired:
        spy.kill()
    if out.exists():
        out.with_suffix(".top.txt").write_text(top_functions(out.read_text()))


def top_functions(raw: str, count: int = 25) -> str:
    """The functions with the most samples in a py-spy raw profile: own (the innermost frame)
    and total (anywhere in the stack), as shares of all samples."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        samples += int(n)
        own[frames[-1]] = own.get(frames[-1], 0) + int(n)
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + int(n)
    lines = [f"{samples} samples"]
    for title, table in (("own", own), ("total", total)):
        lines.append(f"\n-- by {title} samples --")
        for frame, n in sorted(table.items(), key=lambda kv: -kv[1])[:count]:
            lines.append(f"{100 * n / max(samples, 1):5.1f}%  {frame}")
    return "\n".join(lines) + "\n"


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
    temporal: TemporalDevServer,
    serve: LocalRayServe,
    size: int,
    work: Path,
    tuning: dict,
    fmt: str,
    row_group_rows: int = parquet_case.ROW_GROUP_ROWS,
    profile: Path | None = None,
    wire: str = "auto",
) -> dict:
    fields: dict[str, Any] = {}
    if fmt == "parquet":
        path = work / f"in-{size}-{row_group_rows}.parquet"
        source = await asyncio.to_thread(parquet_case.make_parquet_dataset, path, size, row_group_rows)
        fields = parquet_case.batch_fields()
    else:
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
            c.ENV_SERVE_WIRE: wire,
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
        idle_file_kb = status_kb(worker.pid, "RssFile")
        idle_cpu = cpu_seconds(worker.pid)
        client = await Client.connect(temporal.address, data_converter=pydantic_data_converter)
        batch = BatchInferenceInput(
            input_uri=str(source),
            output_uri=str(work / f"out-{size}-{queue}"),
            model="iris",
            tuning=Tuning(**tuning),
            **fields,
        )
        spy = profile_out = None
        if profile:
            profile_out = profile / f"worker-{fmt}-{size}.txt"
            spy = start_profiler(worker.pid, profile_out)
        started = time.monotonic()
        result = await client.execute_workflow(
            c.WORKFLOW_NAME, batch, id=f"rss-{size}-{uuid.uuid4().hex[:6]}", task_queue=queue,
            result_type=BatchInferenceOutput,
        )  # fmt: skip
        wall = time.monotonic() - started
        if spy and profile_out:
            await asyncio.to_thread(stop_profiler, spy, profile_out)
        peak_kb = status_kb(worker.pid, "VmHWM")
        # RSS now, by kind: the heap (anonymous) and mapped files (the libraries' code pages)
        anon_kb, file_kb = status_kb(worker.pid, "RssAnon"), status_kb(worker.pid, "RssFile")
        cpu = cpu_seconds(worker.pid) - idle_cpu
        assert result.succeeded == size and result.failed == 0, result
        return {
            "format": fmt,
            "wire": wire,
            "records": size,
            "shards": result.shards,
            "wall_s": round(wall, 2),
            "records_per_s": round(size / wall),
            "worker_idle_rss_mb": round(idle_kb / 1024, 1),
            "worker_peak_rss_mb": round(peak_kb / 1024, 1),
            "worker_cpu_s": round(cpu, 2),
            "worker_idle_rss_file_mb": round(idle_file_kb / 1024, 1),
            "worker_rss_anon_mb_after": round(anon_kb / 1024, 1),
            "worker_rss_file_mb_after": round(file_kb / 1024, 1),
        }
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(worker.wait, 60)
        except subprocess.TimeoutExpired:
            worker.kill()


async def main_async(
    sizes: list[int],
    tuning: dict,
    out: Path | None,
    fmt: str = "jsonl",
    row_group_rows: int = parquet_case.ROW_GROUP_ROWS,
    profile: Path | None = None,
    wire: str = "auto",
) -> None:
    with tempfile.TemporaryDirectory(prefix="bi-rss-", dir="/tmp") as tmp:
        work = Path(tmp)
        async with local_stack(work) as (temporal, serve):
            rows = []
            for size in sizes:
                row = await one_batch(temporal, serve, size, work, tuning, fmt, row_group_rows, profile, wire)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(
        f"\n{'records':>9} {'shards':>6} {'wall s':>7} {'rec/s':>6} {'idle RSS MB':>11} {'peak RSS MB':>11}"
        f" {'CPU s':>7}"
    )
    for r in rows:
        print(
            f"{r['records']:>9} {r['shards']:>6} {r['wall_s']:>7} {r['records_per_s']:>6} "
            f"{r['worker_idle_rss_mb']:>11} {r['worker_peak_rss_mb']:>11} {r['worker_cpu_s']:>7}"
        )
    if len(rows) > 1:
        growth = rows[-1]["worker_peak_rss_mb"] - rows[0]["worker_peak_rss_mb"]
        print(f"peak RSS {rows[-1]['records'] // rows[0]['records']}x records: {growth:+.1f} MB")
    if out:
        payload = {
            "machine_cpus": os.cpu_count(),
            "format": fmt,
            "row_group_rows": row_group_rows if fmt == "parquet" else None,
            "arrow_memory_pool": os.environ.get(c.ENV_ARROW_DEFAULT_MEMORY_POOL, "worker default: system"),
            "wire": wire,
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "tuning": Tuning(**tuning).model_dump(),
            "runs": rows,
        }
        out.write_text(json.dumps(payload, indent=2) + "\n")


def main() -> None:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", help="default: 10k 100k (jsonl), 100k 1M (parquet)")
    parser.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl", help="input and output")
    parser.add_argument("--ten-million", action="store_true", help="add 10,000,000 records (minutes)")
    parser.add_argument(
        "--row-group-rows",
        type=int,
        default=parquet_case.ROW_GROUP_ROWS,
        help="Parquet input's rows per row group (a file smaller than this is one row group)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="tuning, e.g. shard_size=2500"
    )
    parser.add_argument(
        "--wire",
        choices=("auto", "json"),
        default="auto",
        help="the worker's SERVE_WIRE (json: no Arrow path)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy the worker over each batch")
    args = parser.parse_args()
    tuning = {k: json.loads(v) for k, _, v in (item.partition("=") for item in args.set)}
    sizes = args.sizes or ([100_000, 1_000_000] if args.format == "parquet" else [10_000, 100_000])
    if args.ten_million and 10_000_000 not in sizes:
        sizes.append(10_000_000)
    asyncio.run(
        main_async(sizes, tuning, args.json, args.format, args.row_group_rows, args.profile, args.wire)
    )


if __name__ == "__main__":
    main()
