"""The Parquet case: Iris records as a Parquet file (an id and the four measurements, one float
column each) read and written as Parquet, side by side:

A: the project, ``input_columns`` = the four measurements, ``output_format="parquet"``: ``iris``
   has a columnar predict, so A sends the four columns as Arrow (the Arrow path).
B: a tuned direct client reading the file with pyarrow (only the columns it needs), sending them
   as Arrow as A does and writing the same ``shard-NNNNN.parquet`` files (one per A shard)
   without plan, parts, checkpoints or joins: ``arrow_case.run_b_arrow`` on ``read_send_write``.
D: Ray Data ``read_parquet`` -> ``map_batches`` (the same model class) -> ``write_parquet``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench import harness
from services import constants as c
from services.local.paths import SAMPLE_DATASET
from services.serve.models import BUILTIN_MODELS, IrisClassifier
from services.worker import fs, parquet_sink
from services.worker.contracts import COLUMNAR_SHARD_SIZE, Tuning
from services.worker.layout import OutputLayout
from services.worker.plan import shard_sizes

MODEL = "iris"
FEATURES = list(IrisClassifier.FEATURES)
ID = "id"
# pyarrow's default largest row group (``pq.write_table`` with no row_group_size): what a file
# written without thought has, and the worst case for a shard starting inside one.
ROW_GROUP_ROWS = 1024 * 1024
WRITE_CHUNK = 1024 * 1024  # rows generated and written at a time (one row group each)


def batch_fields() -> dict[str, Any]:
    """A's ``BatchInferenceInput`` fields for this case."""
    return {"input_columns": FEATURES, "output_format": "parquet"}


def _features() -> np.ndarray:
    with SAMPLE_DATASET.open() as fh:
        return np.array([json.loads(line)["features"] for line in fh], dtype=np.float64)


def make_parquet_dataset(path: Path, n: int, row_group_rows: int = ROW_GROUP_ROWS) -> Path:
    """``n`` rows (unique string ids ``r0``, ``r1``, ...; the bundled sample's measurements in
    turn), written in chunks so 10M rows need little memory. Made once per path."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    features = _features()
    schema = pa.schema([(ID, pa.string()), *((name, pa.float64()) for name in FEATURES)])
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, n, WRITE_CHUNK):
            rows = np.arange(start, min(n, start + WRITE_CHUNK))
            picked = features[rows % len(features)]
            columns = [pa.array([f"r{i}" for i in rows.tolist()], pa.string())]
            columns += [pa.array(picked[:, j]) for j in range(len(FEATURES))]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema), row_group_size=row_group_rows)
    tmp.rename(path)
    return path


def dataset(env: harness.BenchEnv, n: int) -> Path:
    return make_parquet_dataset(env.workdir / "data" / f"{MODEL}-{n}.parquet", n)


def count_outputs(output: Path) -> int:
    """Rows of the final Parquet shard files plus error lines."""
    rows = sum(pq.read_metadata(f).num_rows for f in output.glob("shard-*.parquet"))
    errors = 0
    for f in (output / c.PARQUET_ERRORS_DIR).glob("shard-*.jsonl"):
        with f.open("rb") as fh:
            errors += sum(1 for _ in fh)
    return rows + errors


async def run_project(env: harness.BenchEnv, n: int, **batch: Any) -> dict[str, Any]:
    figures = await harness.run_project(
        env, n, MODEL, source=dataset(env, n), count=count_outputs,
        warm_up=dataset(env, harness.WARM_UP_RECORDS), **batch_fields(), **batch,
    )  # fmt: skip
    return {**figures, "format": "parquet"}


CHUNK_ROWS = 2000  # rows B reads at a time (A's part size)
Chunk = Callable[[pa.RecordBatch], Awaitable[pa.Table]]


async def read_send_write(
    source: Path,
    output: Path,
    n: int,
    chunk: Chunk,
    chunks_ahead: int,
    write: bool = True,
    chunk_rows: int = CHUNK_ROWS,
) -> int:
    """B's loop on a Parquet file: read chunks of ``chunk_rows`` rows (the id and the four
    measurements) while up to ``chunks_ahead`` earlier ones are in flight (``chunk``: a chunk's
    rows to its results), and write the results in input order into A's shard files, each as A
    writes its own (temp file, fsync, rename). Rows written."""
    layout = OutputLayout(str(output), "parquet")
    shards = shard_sizes(n, COLUMNAR_SHARD_SIZE, Tuning().max_concurrent_shards)  # A's, for Parquet
    pending = asyncio.Semaphore(chunks_ahead)
    ready: deque[asyncio.Task[pa.Table]] = deque()
    more = asyncio.Event()  # a chunk was queued, or reading ended
    reading = True

    async def read() -> None:
        nonlocal reading
        file = pq.ParquetFile(source)
        try:
            for batch in file.iter_batches(batch_size=chunk_rows, columns=[ID, *FEATURES]):
                await pending.acquire()
                ready.append(asyncio.create_task(chunk(batch)))
                more.set()
        finally:
            file.close()
            reading = False
            more.set()

    async def write_in_order() -> int:
        written, shard, left = 0, 0, shards[0]
        files = contextlib.ExitStack()
        writer: pq.ParquetWriter | None = None
        try:
            while ready or reading:
                if not ready:
                    more.clear()
                    await more.wait()
                    continue
                table = await ready.popleft()
                pending.release()
                while table.num_rows:
                    piece, table = table.slice(0, left), table.slice(left)
                    if write:
                        if writer is None:
                            out = files.enter_context(fs.atomic_writer(layout.shard_uri(shard), arrow=True))
                            writer = parquet_sink.results_writer(out, piece)  # as A's
                        await asyncio.to_thread(writer.write_table, piece)
                    written += piece.num_rows
                    left -= piece.num_rows
                    if not left:
                        if writer is not None:
                            await asyncio.to_thread(_close, writer, files)
                            writer, files = None, contextlib.ExitStack()
                        shard += 1
                        left = shards[shard] if shard < len(shards) else 0
        finally:
            files.close()
        return written

    reader = asyncio.create_task(read())
    written = await write_in_order()
    await reader
    return written


def chunks_ahead(concurrency: int, micro_batch: int, chunk_rows: int = CHUNK_ROWS) -> int:
    """Chunks B keeps in flight: enough to fill ``concurrency`` requests twice over."""
    return max(4, 2 * concurrency * micro_batch // chunk_rows)


def _close(writer: pq.ParquetWriter, files: contextlib.ExitStack) -> None:
    writer.close()
    files.close()  # fsync and rename


def run_ray_data(env: harness.BenchEnv, n: int) -> dict[str, Any]:
    """D: ``bench/ray_data_run.py`` in its Parquet mode, on the same file."""
    if not env.ray_address:
        return {"records": n, "format": "parquet", "skipped": "no Ray address"}
    output = env.workdir / "out" / f"D-pq-{MODEL}-{n}-{uuid.uuid4().hex[:6]}"
    cmd = [
        sys.executable, "-m", "bench.ray_data_run", env.ray_address, BUILTIN_MODELS[MODEL],
        str(dataset(env, n)), str(output), ",".join([ID, *FEATURES]),
    ]  # fmt: skip
    ray_env = {**os.environ, **(env.ray_env or {})}
    result = subprocess.run(cmd, env=ray_env, capture_output=True, text=True, timeout=1800, check=False)
    if result.returncode != 0 or (out := harness.last_json_line(result.stdout)) is None:
        tail = result.stderr.strip().splitlines()[-1:] or ["failed"]
        return {"records": n, "format": "parquet", "error": tail[0][:300]}
    return {**out, "format": "parquet", "ray_pss_mb": harness.ray_pss_mb(env.ray_marker)}
