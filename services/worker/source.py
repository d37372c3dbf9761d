"""What the shard pipeline needs from an input format: a reader that hands over a part's raw
records from where the shard stands, and a parser that turns them into ids and model inputs,
or a ``RecordFailure`` each. JSONL is the one format today (``JsonlShardReader``); another
format adds a reader with the same two steps.

Reading is blocking I/O (run in a thread); parsing is CPU work done where the requests are
built, so a part's parsed inputs live only until its request bodies are encoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from services.errors import Code, RecordError, Stage
from services.worker import fs, jsonl
from services.worker.manifests import RecordFailure


@dataclass
class RawPart:
    """Up to ``count`` records as read, before parsing."""

    lines: Sequence[int]  # each record's 1-based line number
    raws: list[bytes | None]  # each record's bytes (None: over the size limit)
    consumed: int  # bytes read: the next part starts this far on
    next_line: int


@dataclass
class ParsedPart:
    """A part's good records (ids and model inputs, with each one's position in the part) and
    its bad ones (by position)."""

    lines: Sequence[int]
    ids: list[Any]
    inputs: list[Any]
    positions: range | list[int]
    failures: dict[int, RecordFailure] = field(default_factory=dict)


class ShardReader(Protocol):
    def read(self, count: int, line: int) -> RawPart: ...

    def parse(self, part: RawPart, duplicates: dict[int, int]) -> ParsedPart: ...

    def close(self) -> None: ...


def duplicate(first_line: int) -> RecordError:
    return RecordError(Stage.DUPLICATE, Code.DUPLICATE_ID, f"duplicate id: line {first_line} has the same id")


class JsonlShardReader:
    """A shard's records of a JSONL input, from a byte offset on."""

    def __init__(self, uri: str, offset: int, short_lines: bool):
        self._fh: IO[bytes] = fs.open_input(uri)
        self._fh.seek(offset)
        self._short_lines = short_lines

    def read(self, count: int, line: int) -> RawPart:
        return RawPart(*jsonl.read_part(self._fh, count, line, self._short_lines))

    @staticmethod
    def parse(part: RawPart, duplicates: dict[int, int]) -> ParsedPart:
        """A part of good records is parsed in bulk (the usual case); line by line only if some
        are bad, for each bad line's own error."""
        raws, lines = part.raws, part.lines
        parsed = None if duplicates or None in raws else jsonl.parse_lines(raws)  # type: ignore[arg-type]
        if parsed is not None:
            return ParsedPart(lines, parsed[0], parsed[1], range(len(raws)))
        positions: list[int] = []
        out = ParsedPart(lines, [], [], positions)
        for pos, (line, raw) in enumerate(zip(lines, raws, strict=True)):
            if raw is None:
                out.failures[pos] = RecordFailure.of(None, line, jsonl.too_long())
                continue
            try:
                record_id, model_input = jsonl.parse_line(raw)
            except RecordError as exc:
                out.failures[pos] = RecordFailure.of(jsonl.id_hint(raw), line, exc)
                continue
            if duplicates and line in duplicates:
                out.failures[pos] = RecordFailure.of(record_id, line, duplicate(duplicates[line]))
                continue
            positions.append(pos)
            out.ids.append(record_id)
            out.inputs.append(model_input)
        return out

    def close(self) -> None:
        self._fh.close()
