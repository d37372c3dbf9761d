"""The Parquet result sink: a part's results as one Arrow IPC stream (``id``, ``prediction``
and the kept columns), and a shard's parts joined into its final Parquet file, so each result
is encoded as Parquet once. Errors files stay JSONL.

Column types come from the values (pyarrow's inference): a prediction that is a number, a list
or an object becomes a number, list or struct column. Parts whose types differ only in width or
nulls are joined with pyarrow's permissive promotion; values no single Arrow type can hold
(e.g. a prediction that is sometimes a string, sometimes an object) are written as JSON text.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from services import json_codec
from services.worker import fs

_MIXED = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)
PARQUET_MAGIC = b"PAR1"
# A column is dictionary-encoded when its first rows hold at most this many distinct values per
# row. Parquet's writer otherwise encodes every column so, and falls back only once a row
# group's dictionary passes 1 MiB, which a part's rows never reach: unique ids and scores were
# hashed into dictionaries that made the writer slower and the file larger.
DICTIONARY_DISTINCT_SHARE = 0.5


def _array(values: list[Any]) -> pa.Array:
    try:
        return pa.array(values)
    except _MIXED:
        return pa.array([None if v is None else json_codec.dumps(v).decode() for v in values], pa.string())


def table(
    ids: list[Any], predictions: list[Any], keeps: list[dict[str, Any]] | None, keep: list[str]
) -> pa.Table:
    """Results of some records as a table."""
    columns = {"id": _array(ids), "prediction": _array(predictions)}
    for name in keep:
        columns[name] = _array([k[name] for k in keeps or []])
    return pa.table(columns)


def _leaves(name: str, column: pa.ChunkedArray) -> list[tuple[str, pa.ChunkedArray]]:
    """A column's Parquet leaf columns by path (a struct's fields as ``name.field``); none for
    lists and maps, whose leaves are left plain."""
    if pa.types.is_struct(column.type):
        return [
            leaf
            for i, field in enumerate(column.type)
            for leaf in _leaves(f"{name}.{field.name}", pc.struct_field(column, [i]))
        ]
    if pa.types.is_nested(column.type):
        return []
    return [(name, column)]


def _few_distinct(values: pa.ChunkedArray) -> bool:
    if pa.types.is_dictionary(values.type):
        return True  # categories already
    try:
        distinct = pc.count_distinct(values).as_py()
    except pa.ArrowNotImplementedError:  # e.g. an all-null column: nothing to encode
        return False
    return distinct <= DICTIONARY_DISTINCT_SHARE * max(1, len(values))


def dictionary_columns(first: pa.Table) -> list[str]:
    """The leaf columns worth a dictionary, judged by the first rows written (see
    ``DICTIONARY_DISTINCT_SHARE``)."""
    return [
        path
        for name in first.column_names
        for path, values in _leaves(name, first.column(name))
        if _few_distinct(values)
    ]


def results_writer(sink: Any, first: pa.Table) -> pq.ParquetWriter:
    """A Parquet writer for tables like ``first``, dictionary-encoding only the columns where it
    pays (``dictionary_columns``)."""
    return pq.ParquetWriter(sink, first.schema, use_dictionary=dictionary_columns(first))


def part_table(tables: list[pa.Table]) -> pa.Table:
    """A part's result tables as one (an empty one for none)."""
    return _concat(tables) if tables else table([], [], None, [])


def to_bytes(t: pa.Table) -> bytes:
    """A part's results table (``part_table``) as an Arrow IPC stream, its part file's content:
    no encoding beyond the buffers themselves, and the join reads it back without decoding."""
    out = pa.BufferOutputStream()
    with pa.ipc.new_stream(out, t.schema) as writer:
        writer.write_table(t)
    return out.getvalue().to_pybytes()


def _read_part(data: bytes) -> pa.Table:
    # A part written before parts were Arrow IPC is a Parquet file (a shard resumed by a newer worker).
    if data[:4] == PARQUET_MAGIC:
        return pq.read_table(io.BytesIO(data))
    return pa.ipc.open_stream(data).read_all()


def _read_part_schema(uri: str) -> pa.Schema:
    with fs.open_arrow_input(uri) as fh:
        if fh.read(4) == PARQUET_MAGIC:
            fh.seek(0)
            return pq.read_schema(fh)
        fh.seek(0)
        return pa.ipc.open_stream(fh).schema


def _find_part(names: Sequence[str]) -> tuple[str, pa.Schema]:
    """The first of a part's names that exists, and its schema."""
    for name in names[:-1]:
        try:
            return name, _read_part_schema(name)
        except FileNotFoundError:
            continue
    return names[-1], _read_part_schema(names[-1])


def _concat(tables: list[pa.Table]) -> pa.Table:
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except _MIXED:
        return pa.concat_tables([_as_json_text(t) for t in tables])


def _as_json_text(t: pa.Table) -> pa.Table:
    """Every column but ``id`` as JSON text: what parts of irreconcilable types are joined as."""
    columns = {"id": t.column("id")}
    for name in t.column_names[1:]:
        values = t.column(name).to_pylist()
        columns[name] = pa.array(
            [
                None if v is None else v if isinstance(v, str) else json_codec.dumps(v).decode()
                for v in values
            ],
            pa.string(),
        )
    return pa.table(columns)


def join(target: str, parts: list[Sequence[str]]) -> None:
    """Write the parts as one Parquet file at ``target`` (atomically), a row group per part,
    reading one part at a time. Each part is given by its names, current first: the first that
    exists is read (an earlier release named parts otherwise)."""
    sources, schemas = zip(*(_find_part(names) for names in parts), strict=True) if parts else ((), ())
    try:
        schema = pa.unify_schemas(schemas, promote_options="permissive")
        convert = None
    except _MIXED:
        schema, convert = None, _as_json_text
    with fs.atomic_writer(target, arrow=True) as out:
        writer: pq.ParquetWriter | None = None
        for src in sources:
            part = _read_part(fs.read_bytes(src))
            part = convert(part) if convert else part.cast(schema)
            if writer is None:
                writer = results_writer(out, part)
            writer.write_table(part)
        if writer is None:
            writer = pq.ParquetWriter(
                out, schema or pa.schema([("id", pa.string()), ("prediction", pa.null())])
            )
        writer.close()


def count_rows(uri: str) -> int:
    with fs.open_arrow_input(uri) as fh:
        return pq.read_metadata(fh).num_rows
