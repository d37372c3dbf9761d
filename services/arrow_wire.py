"""The columnar wire format of the batch routes, shared by the worker and the Serve ingress.

A request body (content type ``ARROW_CONTENT_TYPE``) is an Arrow IPC stream of the model inputs:
one column per input field, one row per record, no ids (they stay in the worker, as with JSON).
The reply is an IPC stream of as many rows, in order: ``prediction`` (whatever Arrow type the
model returns) and, per row, ``error_code``/``error_message`` (null for a row that succeeded;
the code is a ``services.errors.Code`` value). Values are never turned into Python objects on
either side.
"""

from __future__ import annotations

import pyarrow as pa

PREDICTION = "prediction"
ERROR_CODE = "error_code"
ERROR_MESSAGE = "error_message"


class WireError(ValueError):
    """A body that is not an Arrow IPC stream of the expected shape (a 400, or a protocol
    error on the worker's side)."""


class TooManyRows(WireError):
    """More rows than the receiver takes in one request (a 413)."""


def encode(table: pa.Table | pa.RecordBatch) -> bytes:
    """One IPC stream of ``table``'s rows."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write(table)
    return sink.getvalue().to_pybytes()


def decode(body: bytes | pa.Buffer, max_rows: int | None = None) -> pa.Table:
    """The table in an IPC stream (zero-copy over ``body``); ``WireError`` for anything else,
    or for more than ``max_rows`` rows (counted from the batch headers before any is used)."""
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(body) if isinstance(body, bytes) else body)
        batches, rows = [], 0
        for batch in reader:
            rows += batch.num_rows
            if max_rows is not None and rows > max_rows:
                raise TooManyRows(f"more than {max_rows} rows in one request; the limit is {max_rows}")
            batches.append(batch)
        table = pa.Table.from_batches(batches, schema=reader.schema)
        table.validate(full=True)  # offsets and lengths within the buffers: a crafted body fails here
    except (pa.ArrowException, OSError) as exc:
        raise WireError(f"not an Arrow IPC stream: {exc}") from None
    return table


def results(predictions: pa.Array, codes: pa.Array, messages: pa.Array) -> pa.Table:
    """A reply's table: one row per input row."""
    return pa.table(
        {
            PREDICTION: predictions,
            ERROR_CODE: codes.cast(pa.string()),
            ERROR_MESSAGE: messages.cast(pa.string()),
        }
    )


def decode_results(body: bytes, rows: int) -> pa.Table:
    """A reply's table, checked to hold ``rows`` rows and the three columns; ``WireError`` if not."""
    table = decode(body)
    if table.num_rows != rows or table.column_names != [PREDICTION, ERROR_CODE, ERROR_MESSAGE]:
        raise WireError(
            f"expected {rows} rows of {PREDICTION}, {ERROR_CODE}, {ERROR_MESSAGE}; got "
            f"{table.num_rows} rows of {', '.join(table.column_names)}"
        )
    return table
