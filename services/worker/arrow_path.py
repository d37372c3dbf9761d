"""The columnar path of a shard: Parquet or CSV rows go to Serve as Arrow record batches and the
predictions come back as Arrow arrays, written to the results without a Python object per
record (services/arrow_wire.py is the wire format).

A shard takes it when its model has a columnar predict (Serve's models listing says so), every
input file is Parquet or CSV, and the model input is an object of columns (``input_columns``,
or the default: every column but the id and the kept ones). A part that needs a row's own error
(a bad row, a repeated id, a file whose columns do not line up with the others') goes the JSON
way, as before; so does everything when ``SERVE_WIRE=json``.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import pyarrow as pa
import pyarrow.compute as pc

from services import arrow_wire
from services import metrics as m
from services.worker import csv_records, jsonl_sink, parquet_sink, telemetry
from services.worker.contracts import ShardInput
from services.worker.fields import FieldReader
from services.worker.manifests import COLUMNAR_FORMATS, Plan, RecordFailure
from services.worker.serve_client import ServeClient, model_error
from services.worker.source import PartParser, RawPart

if TYPE_CHECKING:
    from services.worker.pipeline import PartResult

log = logging.getLogger(__name__)


def input_is_columnar(plan: Plan) -> bool:
    """Whether this plan's records can go as columns: Parquet or CSV files whose model input is
    an object of columns (not one field's value)."""
    return plan.spec.input_field is None and all(f.format in COLUMNAR_FORMATS for f in plan.files)


async def use_arrow(serve: ServeClient, plan: Plan, model: str | None) -> int | None:
    """The rows per request a shard of ``plan`` sends as Arrow, or None for JSON: Arrow when its
    input is columnar and Serve lists its model as columnar. Serve not answering the listing (or
    an older Serve) means JSON; so does a client told to send JSON (``serve.wire``, the worker's
    SERVE_WIRE)."""
    if serve.wire == "json" or not input_is_columnar(plan):
        return None
    try:
        listing = await serve.list_models()
    except (httpx.HTTPError, ValueError) as exc:  # ValueError: not a listing (pydantic's, JSON's)
        log.info("Serve's models listing did not answer (%s): sending JSON", type(exc).__name__)
        return None
    return listing.max_arrow_rows if (model or listing.default) in listing.columnar else None


@dataclass
class ColumnarPart:
    """A part whose every row is good, as columns: ids, the model inputs, the kept values."""

    ids: pa.ChunkedArray
    inputs: pa.Table
    keeps: pa.Table | None
    starts: list[int]  # each chunk's first row in the part
    chunks: list[tuple[int, Sequence[int]]]  # (file index, line numbers)

    def where(self, pos: int) -> tuple[int, int]:
        index = bisect.bisect_right(self.starts, pos) - 1
        file, lines = self.chunks[index]
        return file, lines[pos - self.starts[index]]


def split_columns(
    fields: FieldReader, table: pa.Table
) -> tuple[pa.ChunkedArray, pa.Table, pa.Table | None] | None:
    """(ids, model inputs, kept values) of a table's rows as columns, as ``split_table`` makes
    them as objects; None when a row needs its own error or the input is not columns."""
    names = set(table.column_names)
    if fields.id_field not in names or fields.input_field is not None:
        return None
    ids = table.column(fields.id_field)
    if ids.null_count or not (pa.types.is_integer(ids.type) or pa.types.is_string(ids.type)):
        return None
    if fields.input_columns is not None:
        if not names.issuperset(fields.input_columns):
            return None
        inputs = table.select(fields.input_columns)
    elif "input" in names:  # the record's "input" value is the model input: not columns
        return None
    else:
        left_out = {fields.id_field, *fields.keep_columns}
        inputs = table.select([n for n in table.column_names if n not in left_out])
    keeps = None
    if fields.keep_columns:
        columns = [
            table.column(name)
            if name in names
            else pa.array([fields.partition.get(name)] * table.num_rows, pa.string())
            for name in fields.keep_columns
        ]
        keeps = pa.table(columns, names=fields.keep_columns)
    return ids, inputs, keeps


def columnar_part(parser: PartParser, raw: RawPart) -> ColumnarPart | None:
    """``raw`` as columns, or None when some row needs its own error (the JSON way then)."""
    ids, inputs, keeps, starts, chunks = [], [], [], [], []
    base = 0
    for chunk in raw.chunks:
        file = parser.plan.files[chunk.file]
        if any(where[0] == chunk.file for where in parser.duplicates):
            return None
        table = (
            chunk.table if chunk.table is not None else csv_records.read_table(chunk.raws or [], file.columns)
        )  # type: ignore[arg-type]
        if table is None or (split := split_columns(parser.fields(chunk.file), table)) is None:
            return None
        ids.append(split[0])
        inputs.append(split[1])
        keeps.append(split[2])
        starts.append(base)
        chunks.append((chunk.file, chunk.lines))
        base += len(chunk)
    if not ids:
        return None
    try:
        if len(ids) == 1:
            joined_ids, joined_inputs, joined_keeps = ids[0], inputs[0], keeps[0]
        else:
            joined_ids = pa.chunked_array([c for a in ids for c in a.chunks], ids[0].type)
            joined_inputs = pa.concat_tables(inputs, promote_options="permissive")
            joined_keeps = None if keeps[0] is None else pa.concat_tables(keeps, promote_options="permissive")  # type: ignore[arg-type]
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # files whose columns do not line up
        return None
    return ColumnarPart(joined_ids, joined_inputs, joined_keeps, starts, chunks)


async def _send(serve: ServeClient, model: str | None, body: bytes, count: int) -> pa.Table:
    """``serve.predict_arrow`` with the micro-batch size and in-flight gauge recorded."""
    label = m.model_label(model)
    telemetry.MICRO_BATCH_SIZE.labels(label).observe(count)
    with telemetry.SERVE_IN_FLIGHT.labels(label).track_inprogress():
        return await serve.predict_arrow(model, body, count)


Body = tuple[int, int, bytes]  # (first row, rows, Arrow IPC stream)


def bodies(inputs: pa.Table, micro_batch_size: int, max_bytes: int) -> list[Body] | None:
    """The part's request bodies: ``micro_batch_size`` rows each, halved where a body would pass
    ``max_bytes`` (Serve's limit, with room); None if one row alone passes it (the JSON way then
    gives that record its own ``too_large`` error)."""
    out: list[Body] = []
    pending = [
        (start, min(micro_batch_size, inputs.num_rows - start))
        for start in range(0, inputs.num_rows, micro_batch_size)
    ]
    pending.reverse()
    while pending:
        start, count = pending.pop()
        body = arrow_wire.encode(inputs.slice(start, count))
        if len(body) <= max_bytes:
            out.append((start, count, body))
        elif count == 1:
            return None
        else:
            half = count // 2
            pending += [(start + half, count - half), (start, half)]
    return out


def prepare(
    parser: PartParser, raw: RawPart, rows: int, shard: ShardInput
) -> tuple[ColumnarPart, list[Body]] | None:
    """A part as columns and its request bodies of up to ``rows`` rows (Serve's Arrow limit: a
    part usually goes in one request, since Serve's cost is per request, not per row); None for
    the JSON way (see ``columnar_part`` and ``bodies``)."""
    if (part := columnar_part(parser, raw)) is None:
        return None
    if (out := bodies(part.inputs, rows, shard.max_request_bytes)) is None:
        return None
    return part, out


async def predict_part(
    serve: ServeClient,
    plan: Plan,
    part: ColumnarPart,
    batches: list[Body],
    model: str | None,
    limit: asyncio.Semaphore,
) -> PartResult:
    """Results and errors of one columnar part, in input order: its bodies (``bodies``) sent,
    each reply's prediction column joined to the ids and kept columns as they are."""
    from services.worker.pipeline import PartResult  # the pipeline imports this module

    spans = [(start, count) for start, count, _ in batches]

    async def send(count: int, body: bytes) -> pa.Table:
        async with limit:
            return await _send(serve, model, body, count)

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(send(count, body)) for _, count, body in batches]
            del batches[:]  # the bodies go with their requests
    except BaseExceptionGroup as group_error:
        raise group_error.exceptions[0] from None  # as itself, for Temporal's retry policy
    tables: list[pa.Table] = []
    failures: list[RecordFailure] = []
    for (start, count), task in zip(spans, tasks, strict=True):
        reply = task.result()
        columns = {"id": part.ids.slice(start, count), "prediction": reply.column(arrow_wire.PREDICTION)}
        if part.keeps is not None:
            for name in part.keeps.column_names:
                columns[name] = part.keeps.column(name).slice(start, count)
        table = pa.table(columns)
        codes = reply.column(arrow_wire.ERROR_CODE)
        if codes.null_count != count:  # some rows refused: each its error, the rest results
            refused = codes.is_valid()
            messages = reply.column(arrow_wire.ERROR_MESSAGE)
            for offset in pc.indices_nonzero(refused).to_pylist():
                file, line = part.where(start + offset)
                error = {"code": codes[offset].as_py(), "message": messages[offset].as_py()}
                failures.append(
                    RecordFailure.of(
                        table.column("id")[offset].as_py(), line, model_error(error), plan.files[file].uri
                    )
                )
            table = table.filter(pc.invert(refused))
        tables.append(table)
    succeeded = sum(t.num_rows for t in tables)
    if plan.spec.output_format == "parquet":
        body: bytes | pa.Table = parquet_sink.part_table(tables)
    else:
        body = b"".join(_jsonl(t, part.keeps is not None) for t in tables)
    return PartResult(body, succeeded, jsonl_sink.failures(failures), failures)


def _jsonl(table: pa.Table, keeps: bool) -> bytes:
    kept = table.select(table.column_names[2:]).to_pylist() if keeps else None
    return jsonl_sink.results(table.column("id").to_pylist(), table.column("prediction").to_pylist(), kept)
