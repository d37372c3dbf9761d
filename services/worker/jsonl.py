"""The JSONL record source: what a record is (a non-blank line), how a shard reads its lines,
and how a line becomes (id, model input) or a ``RecordError`` with a code.

A record is one JSON object per line with an id (string or integer); ``fields.py`` says which
fields are its id and model input.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence
from typing import IO, Any

from services import json_codec
from services.errors import Code, RecordError, Stage
from services.worker.fields import FieldReader
from services.worker.manifests import RecordFields

MAX_RECORD_BYTES = 1 << 20  # a longer line is a bad record, not an out-of-memory worker


DEFAULT_FIELDS = FieldReader(RecordFields())


def split_record(obj: Any) -> tuple[Any, Any]:
    """(id, model input) of an inline record. The model input is ``input`` if present, else the
    object minus ``id``; a non-object is the model input itself, with no id."""
    if isinstance(obj, dict) and "id" in obj:
        return obj["id"], DEFAULT_FIELDS.model_input(obj)
    return None, obj


def _bad(code: Code, message: str) -> RecordError:
    return RecordError(Stage.PARSE, code, message)


def load_line(raw: bytes) -> dict[str, Any]:
    """One JSONL line as a JSON object, or ``RecordError``."""
    try:
        obj = json_codec.loads_strict(raw)
    except UnicodeDecodeError as exc:
        raise _bad(Code.NOT_UTF8, f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    except json_codec.JSONDecodeError as exc:
        where = f" at column {exc.colno}" if exc.doc else ""
        raise _bad(Code.MALFORMED_JSON, f"malformed JSON: {exc.msg}{where}") from None
    if not isinstance(obj, dict):
        raise _bad(Code.NOT_AN_OBJECT, f"a record must be a JSON object, got {type(obj).__name__}")
    return obj


def parse_line(raw: bytes, fields: FieldReader = DEFAULT_FIELDS) -> tuple[Any, Any, dict[str, Any] | None]:
    """Parse one JSONL line into (id, model input, kept values) or raise ``RecordError``."""
    return fields.split(load_line(raw))


def too_long() -> RecordError:
    return _bad(Code.TOO_LONG, f"record longer than {MAX_RECORD_BYTES} bytes")


def parse_lines(
    raws: list[bytes], fields: FieldReader = DEFAULT_FIELDS
) -> tuple[list[Any], list[Any], list[Any] | None] | None:
    """``parse_line`` of many lines at once, as (ids, model inputs, kept values), when every
    line is a good record (the usual case); None otherwise, and the caller goes line by line for
    each bad line's own error."""
    records = json_codec.loads_lines_strict(raws)
    return None if records is None else fields.split_all(records)


def id_hint(raw: bytes, id_field: str = "id") -> Any:
    """Best-effort id of a bad line, for the errors file."""
    with contextlib.suppress(Exception):
        obj = json_codec.loads(raw)
        if isinstance(obj, dict):
            return obj.get(id_field)
    return None


def read_records(
    fh: IO[bytes], count: int, line: int, max_bytes: int = MAX_RECORD_BYTES
) -> tuple[list[tuple[int, bytes | None]], int, int]:
    """Read up to ``count`` records (non-blank lines) from ``fh``'s current position.

    Returns ([(line number, raw line or None if over ``max_bytes``)], bytes consumed, next line
    number). The planner and the shard reader both use this, so they agree on what a record is.
    """
    records: list[tuple[int, bytes | None]] = []
    append, readline, limit = records.append, fh.readline, max_bytes + 1
    consumed = 0
    while len(records) < count:
        raw = readline(limit)
        if not raw:
            break
        consumed += len(raw)
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            while not raw.endswith(b"\n"):  # skip the rest of the long line
                raw = readline(1 << 20)
                if not raw:
                    break
                consumed += len(raw)
            append((line, None))
        elif not raw.isspace():
            append((line, raw))
        line += 1
    return records, consumed, line


def read_part(
    fh: IO[bytes], count: int, line: int, short_lines: bool = False, max_bytes: int = MAX_RECORD_BYTES
) -> tuple[Sequence[int], list[bytes | None], int, int]:
    """``read_records`` as (line numbers, raw lines, bytes consumed, next line number).

    With ``short_lines`` (the plan found no line longer than ``max_bytes``) lines are read in C,
    and a stretch without blank lines, the usual case, costs no Python step per line: this is
    what a shard reads its parts with."""
    if not short_lines:
        records, consumed, line = read_records(fh, count, line, max_bytes)
        return [n for n, _ in records], [raw for _, raw in records], consumed, line
    lines: list[int] | None = None  # only once a blank line breaks the run: a range till then
    raws: list[bytes | None] = []
    consumed, first = 0, line
    while len(raws) < count:
        batch = list(itertools.islice(fh, count - len(raws)))
        if not batch:
            break
        consumed += sum(map(len, batch))
        if min(batch)[:1] > b" ":  # no line empty or starting with whitespace: none is blank
            if lines is not None:
                lines.extend(range(line, line + len(batch)))
            raws.extend(batch)
            line += len(batch)
            continue
        if lines is None:
            lines = list(range(first, line))
        for raw in batch:
            if not raw.isspace():
                lines.append(line)
                raws.append(raw)
            line += 1
    return (range(first, line) if lines is None else lines), raws, consumed, line
