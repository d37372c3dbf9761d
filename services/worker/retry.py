"""Re-run a finished batch's failed records: read its errors files, pick the failures asked for
(all, or some stages and codes), and copy those records from the original input into the retry's
own input folder, one file per original file, keeping its Hive partition folders. The retry is
then an ordinary batch over that folder with the original's data options.

A record is found by its file and line: a plain text file is read from the planned shard start
nearest before the first wanted line (seeking), a compressed one from its start, a Parquet file
one row group at a time (only the groups holding wanted rows).
"""

from __future__ import annotations

import bisect
import io
from collections import defaultdict
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq

from services.worker import fs, jsonl, text_files
from services.worker.layout import OutputLayout
from services.worker.lineage import errors
from services.worker.manifests import InputFile, Plan, RecordFailure
from services.worker.parquet_files import open_parquet

RETRY_INPUT_DIR = "_input"  # "_": skipped by readers of the retry's results as a dataset


def wanted(failure: RecordFailure, only: list[str]) -> bool:
    return not only or failure.stage in only or failure.code in only


def failed_lines(original: Plan, layout: OutputLayout, only: list[str]) -> dict[int, list[int]]:
    """Lines (rows) of the failed records to retry, sorted, by the index of their file."""
    index = {f.uri: n for n, f in enumerate(original.files)}
    found: dict[int, set[int]] = defaultdict(set)
    for failure in errors(layout, len(original.shards)):
        if wanted(failure, only) and failure.file in index and failure.line:
            found[index[failure.file]].add(failure.line)
    return {file: sorted(lines) for file, lines in sorted(found.items())}


def input_folder(retry_output: str) -> str:
    return fs.join(retry_output, RETRY_INPUT_DIR)


def extract(original: Plan, original_uri: str, retry_output: str, only: list[str]) -> int:
    """Copy the records to retry into ``input_folder(retry_output)``; returns how many."""
    layout = OutputLayout(original_uri, original.spec.output_format)
    total = 0
    for file, lines in failed_lines(original, layout, only).items():
        source = original.files[file]
        folders = "/".join(f"{k}={v}" for k, v in source.partition.items())
        name = f"part-{file:05d}.{source.format}"
        target = fs.join(input_folder(retry_output), *([folders] if folders else []), name)
        with fs.atomic_writer(target) as out:
            if source.format == "parquet":
                _copy_rows(source, lines, out)
            else:
                _copy_lines(original, file, lines, out)
        total += len(lines)
    return total


def _anchors(original: Plan, file: int) -> list[tuple[int, int]]:
    """(line, byte offset) of every planned shard start in a plain text file."""
    return sorted({(s.line, s.offset) for shard in original.shards for s in shard.segments if s.file == file})


def _copy_lines(original: Plan, file: int, lines: list[int], out: IO[bytes]) -> None:
    source = original.files[file]
    anchors = _anchors(original, file) if source.seekable else []
    with text_files.open_text(source.uri, source.compression) as fh:
        line = 1
        if source.format == "csv":
            header = fh.readline()
            out.write(header if header.endswith(b"\n") else header + b"\n")
            line = 2
        for target in lines:
            at = bisect.bisect_right(anchors, (target, float("inf"))) - 1
            if at >= 0 and anchors[at][0] > line:  # a planned shard start between here and there
                line, offset = anchors[at]
                fh.seek(offset)
            while line < target:
                if not fh.readline():
                    break
                line += 1
            raw = fh.readline()
            line += 1
            if len(raw) > jsonl.MAX_RECORD_BYTES:
                continue  # an overlong line fails again the same way: not copied
            out.write(raw if raw.endswith(b"\n") else raw + b"\n")


def _copy_rows(source: InputFile, rows: list[int], out: IO[bytes]) -> None:
    parquet, fh = open_parquet(source.uri)
    with fh:
        starts = [0]
        for count in source.row_groups:
            starts.append(starts[-1] + count)
        by_group: dict[int, list[int]] = defaultdict(list)
        for row in rows:
            group = bisect.bisect_right(starts, row - 1) - 1
            by_group[group].append(row - 1 - starts[group])
        tables = [parquet.read_row_group(g).take(pa.array(picks)) for g, picks in sorted(by_group.items())]
    buffer = io.BytesIO()
    pq.write_table(pa.concat_tables(tables), buffer)
    out.write(buffer.getvalue())
