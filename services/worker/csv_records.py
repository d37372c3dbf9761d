"""CSV records: a header line names the columns; each later non-blank line is a record. Parsed
by pyarrow's CSV reader a part at a time, with the column types fixed by the plan (given in
``column_types`` or inferred from the first rows; the id column is text unless given), so every
part of every shard reads a column the same way.

A row with the wrong number of fields or a value not of its column's type is a bad record (to
the errors file with its line); the rest of its part is read as usual. Values may be quoted but
may not hold newlines: one line, one record.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from services.errors import Code, Failure, RecordError, Stage
from services.worker.inputs import InputError

ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
}
_INFERRED = {pa.int64(): "int64", pa.float64(): "float64", pa.bool_(): "bool"}


def header_names(header: bytes, uri: str) -> list[str]:
    try:
        names = pacsv.read_csv(
            io.BytesIO(header), read_options=pacsv.ReadOptions(autogenerate_column_names=True)
        ).to_pylist()[0]
    except (pa.ArrowInvalid, IndexError) as exc:
        raise InputError(Failure.INPUT_UNREADABLE, f"{uri}: unreadable CSV header ({exc})") from None
    columns = [str(v) for v in names.values()]
    if len(set(columns)) != len(columns):
        raise InputError(Failure.INPUT_UNREADABLE, f"{uri}: the CSV header repeats a column name: {columns}")
    return columns


def column_types(
    header: bytes, first_lines: list[bytes], id_field: str, given: dict[str, str], uri: str
) -> dict[str, str]:
    """Each column's type, in header order: given, else inferred from ``first_lines`` (text when
    nothing better fits); the id column is text unless given."""
    names = header_names(header, uri)
    inferred: dict[str, str] = {}
    if first_lines:
        try:
            table = pacsv.read_csv(
                io.BytesIO(b"".join(line if line.endswith(b"\n") else line + b"\n" for line in first_lines)),
                read_options=pacsv.ReadOptions(column_names=names, use_threads=False),
                parse_options=pacsv.ParseOptions(invalid_row_handler=lambda row: "skip"),
                convert_options=pacsv.ConvertOptions(column_types={id_field: pa.string()}),
            )
            inferred = {field.name: _INFERRED.get(field.type, "string") for field in table.schema}
        except pa.ArrowInvalid:
            pass  # rows too odd to infer from: text
    return {
        name: given.get(name) or ("string" if name == id_field else inferred.get(name, "string"))
        for name in names
    }


def column_values(raws: Sequence[bytes], names: list[str], column: str, kind: str) -> list[Any]:
    """One column's values of some rows (rows that do not parse give none): what the plan
    hashes to find repeated ids without reading the other columns."""
    text = b"".join(raw if raw.endswith(b"\n") else raw + b"\n" for raw in raws)
    for attempt in (ARROW_TYPES[kind], pa.string()):
        try:
            table = pacsv.read_csv(
                io.BytesIO(text),
                read_options=pacsv.ReadOptions(column_names=names, use_threads=False),
                parse_options=pacsv.ParseOptions(invalid_row_handler=lambda row: "skip"),
                convert_options=pacsv.ConvertOptions(
                    include_columns=[column], column_types={column: attempt}
                ),
            )
        except pa.ArrowInvalid:
            continue  # a value not of the column's type: that row is a bad record; ids as text
        values = table.column(0).to_pylist()
        if attempt is not ARROW_TYPES[kind]:
            values = [_as_int(v) for v in values] if kind == "int64" else []
        return values
    return []


def _as_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _options(columns: dict[str, str]) -> tuple[pacsv.ReadOptions, pacsv.ConvertOptions]:
    return (
        pacsv.ReadOptions(column_names=list(columns), use_threads=False),
        pacsv.ConvertOptions(column_types={name: ARROW_TYPES[kind] for name, kind in columns.items()}),
    )


def _read(raws: Sequence[bytes], columns: dict[str, str]) -> tuple[pa.Table, dict[int, RecordError]]:
    """The good rows of ``raws`` as a table (rows of the wrong width left out), and the errors of
    those by position; raises ``pa.ArrowInvalid`` if a value does not convert."""
    read_options, convert_options = _options(columns)
    bad: dict[int, RecordError] = {}

    def wrong_width(row: pacsv.InvalidRow) -> str:
        bad[row.number - 1] = RecordError(
            Stage.PARSE,
            Code.BAD_ROW,
            f"CSV row has {row.actual_columns} fields, the header {row.expected_columns}",
        )
        return "skip"

    text = b"".join(raw if raw.endswith(b"\n") else raw + b"\n" for raw in raws)
    table = pacsv.read_csv(
        io.BytesIO(text),
        read_options=read_options,
        parse_options=pacsv.ParseOptions(invalid_row_handler=wrong_width),
        convert_options=convert_options,
    )
    return table, bad


def read_table(raws: Sequence[bytes], columns: dict[str, str]) -> pa.Table | None:
    """The rows of ``raws`` as a table when every row is good (the usual case); None when some
    row has the wrong width or a value that does not convert (``parse_rows`` then says which)."""
    try:
        table, bad = _read(raws, columns)
    except pa.ArrowInvalid:
        return None
    return None if bad else table


def parse_rows(
    raws: Sequence[bytes], columns: dict[str, str]
) -> tuple[list[dict[str, Any]], dict[int, RecordError]]:
    """The rows of ``raws`` (one record each) as dicts, and the errors of bad ones by position."""
    try:
        table, bad = _read(raws, columns)
    except pa.ArrowInvalid:
        return _row_by_row(raws, columns)
    rows = table.to_pylist()
    if not bad:
        return rows, bad
    good = iter(rows)
    return [{} if pos in bad else next(good) for pos in range(len(raws))], bad


def _row_by_row(
    raws: Sequence[bytes], columns: dict[str, str]
) -> tuple[list[dict[str, Any]], dict[int, RecordError]]:
    """Each row on its own: for the one whose value does not convert, its own error."""
    rows: list[dict[str, Any]] = []
    bad: dict[int, RecordError] = {}
    for pos, raw in enumerate(raws):
        try:
            one, errors = parse_rows([raw], columns) if len(raws) > 1 else ([], {0: _bad_value(raw, columns)})
        except pa.ArrowInvalid:
            one, errors = [], {0: _bad_value(raw, columns)}
        rows.append(one[0] if one else {})
        if errors:
            bad[pos] = errors[0]
    return rows, bad


def _read_one(raw: bytes, columns: dict[str, str]) -> list[dict[str, Any]]:
    read_options, convert_options = _options(columns)
    return pacsv.read_csv(
        io.BytesIO(raw if raw.endswith(b"\n") else raw + b"\n"),
        read_options=read_options,
        parse_options=pacsv.ParseOptions(invalid_row_handler=lambda row: "skip"),
        convert_options=convert_options,
    ).to_pylist()


def _bad_value(raw: bytes, columns: dict[str, str]) -> RecordError:
    """The error of a row that does not convert: the first column at fault, by reading the row
    with one column typed at a time."""
    as_text = dict.fromkeys(columns, "string")
    for name, kind in columns.items():
        if kind == "string":
            continue
        try:
            _read_one(raw, {**as_text, name: kind})
        except pa.ArrowInvalid:
            value = _read_one(raw, as_text)[0][name]
            return RecordError(
                Stage.PARSE,
                Code.BAD_VALUE,
                f"column {name!r}: {value!r} is not {kind} (set 'column_types' to read it otherwise)",
            )
    return RecordError(Stage.PARSE, Code.BAD_VALUE, "CSV row does not convert to its column types")
