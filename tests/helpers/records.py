"""Batch inputs and outputs on disk: write records as JSON Lines, read a batch's results and errors."""

from __future__ import annotations

import json
from pathlib import Path


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for record in records:
            fh.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
    return path


def read_outputs(output: Path) -> tuple[list[dict], list[dict]]:
    """All committed results and error lines of a batch's output folder."""
    results = [json.loads(line) for f in sorted(output.glob("shard-*.jsonl")) for line in f.open()]
    errors = [
        json.loads(line) for f in sorted((output / "errors").glob("shard-*.jsonl")) for line in f.open()
    ]
    return results, errors


def iris_records(n: int, prefix: str = "r") -> list[dict]:
    base = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
    return [{"id": f"{prefix}{i}", "features": base[i % 3]} for i in range(n)]


def echo_records(n: int, prefix: str = "e") -> list[dict]:
    return [{"id": f"{prefix}{i}", "input": {"n": i}} for i in range(n)]


def corrupt_parquet_page(path: Path) -> Path:
    """A Parquet file whose footer and id column read (so a plan passes), but whose other
    column's first data page header is garbage (so the shard reading it fails)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(range(100)), "features": [[5.1, 3.5, 1.4, 0.2]] * 100}), path)
    offset = pq.read_metadata(path).row_group(0).column(1).data_page_offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 12] = b"\xff" * 12
    path.write_bytes(bytes(data))
    return path
