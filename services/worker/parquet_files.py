"""Parquet inputs: the plan reads each file's footer (rows per row group, schema) and its id
column (for repeated ids), never the other columns; a shard streams its row groups in record
batches of only the columns it needs, so memory follows the part size, not the file.

A record's "line" is its 1-based row number in the file.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq

from services.errors import Failure
from services.worker import fs
from services.worker.inputs import FoundFile, InputError
from services.worker.manifests import InputFile, RecordFields


def unreadable(uri: str, exc: BaseException) -> InputError:
    return InputError(Failure.INPUT_UNREADABLE, f"{uri}: not a readable Parquet file ({exc})")


def open_parquet(uri: str) -> tuple[pq.ParquetFile, IO[bytes] | pa.NativeFile]:
    fh = fs.open_arrow_input(uri)
    try:
        return pq.ParquetFile(fh), fh
    except (pa.ArrowException, OSError) as exc:
        fh.close()
        if isinstance(exc, FileNotFoundError | PermissionError):
            raise
        raise unreadable(uri, exc) from None


def needed_columns(names: list[str], fields: RecordFields) -> list[str]:
    """The columns a shard reads: the id, the model input's and the kept ones (those not a
    Hive partition key), in file order."""
    if fields.input_columns is not None:
        wanted = {fields.id_field, *fields.input_columns, *fields.keep_columns}
    elif fields.input_field is not None:
        wanted = {fields.id_field, fields.input_field, *fields.keep_columns}
    else:
        return names
    return [name for name in names if name in wanted]


@dataclass
class ScannedParquet:
    row_groups: list[int]
    schema: pa.Schema  # of the columns a shard reads


def scan(found: FoundFile, fields: RecordFields, on_ids: Callable[[pa.Array], None]) -> ScannedParquet:
    """One file's footer (rows per row group, schema), checking that the columns the batch
    needs are there, and its id column a record batch at a time (``on_ids``): one open."""
    file, fh = open_parquet(found.uri)
    with fh:
        schema = file.schema_arrow
        groups = [file.metadata.row_group(i).num_rows for i in range(file.num_row_groups)]
        names = schema.names
        if missing := [c for c in fields.required(found.partition) if c not in names]:
            raise InputError(
                Failure.INPUT_UNREADABLE,
                f"{found.uri}: no column {missing[0]!r} (its columns: {', '.join(names)})",
            )
        try:
            for batch in file.iter_batches(batch_size=65_536, columns=[fields.id_field]):
                on_ids(batch.column(0))
        except (pa.ArrowException, OSError) as exc:
            raise unreadable(found.uri, exc) from None
    kept = needed_columns(names, fields)
    return ScannedParquet(groups, pa.schema([schema.field(name) for name in kept]))


class ParquetSegmentReader:
    """Rows ``start`` to ``end`` (0-based, end exclusive) of a Parquet file: only the row groups
    holding them, streamed in record batches; rows before ``start`` in its group are dropped.

    Naming only the groups the run spans matters for memory: pyarrow reads ahead whole groups,
    so an open-ended range holds the next shard's group as well."""

    def __init__(self, file: InputFile, start: int, end: int, fields: RecordFields, batch_rows: int):
        self.file = file
        self._file, self._fh = open_parquet(file.uri)
        columns = needed_columns(self._file.schema_arrow.names, fields)
        bounds = list(itertools.accumulate(file.row_groups, initial=0))
        first = bisect.bisect_right(bounds, start) - 1
        last = max(first, bisect.bisect_left(bounds, end) - 1)
        self._skip = start - bounds[first]
        self.row = start
        self._batches = self._file.iter_batches(
            batch_size=batch_rows, row_groups=range(first, last + 1), columns=columns
        )
        self._held: list[pa.RecordBatch] = []

    def read(self, count: int) -> tuple[range, pa.Table]:
        """(row numbers, table) of up to ``count`` rows."""
        rows, taken = 0, []
        try:
            while rows < count:
                batch = self._held.pop() if self._held else next(self._batches, None)
                if batch is None:
                    break
                if self._skip:
                    cut = min(self._skip, batch.num_rows)
                    batch, self._skip = batch.slice(cut), self._skip - cut
                want = count - rows
                if batch.num_rows > want:
                    self._held.append(batch.slice(want))
                    batch = batch.slice(0, want)
                if batch.num_rows:
                    taken.append(batch)
                    rows += batch.num_rows
        except (pa.ArrowException, OSError) as exc:
            raise unreadable(self.file.uri, exc) from None
        first = self.row + 1
        self.row += rows
        table = pa.Table.from_batches(taken) if taken else None
        return range(first, first + rows), table  # type: ignore[return-value]

    def close(self) -> None:
        self._fh.close()
