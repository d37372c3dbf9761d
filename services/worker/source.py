"""What the shard pipeline reads: a shard's records, a part at a time, from the run of files its
plan names (``Segment``s), and how a part becomes ids, model inputs and kept values, or a
``RecordFailure`` each.

Reading is blocking I/O (run in a thread): ``ShardReader.read`` hands over a part's raw records
(lines of JSONL or CSV, a table of Parquet rows), a ``RawChunk`` per file it spans. Parsing is
CPU work done where the requests are built (``parse``), so a part's parsed inputs live only until
its request bodies are encoded.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from services.errors import BatchError, Code, Failure, RecordError, Stage
from services.worker import csv_records, jsonl
from services.worker.fields import FieldReader
from services.worker.inputs import InputError
from services.worker.manifests import Plan, RecordFailure, ShardProgress
from services.worker.parquet_files import ParquetSegmentReader
from services.worker.text_files import TextSegmentReader

Location = tuple[int, int]  # (file index, line)


class ShardFailed(BatchError):
    """The shard cannot go on."""


@dataclass
class RawChunk:
    """Records of one file as read: lines (JSONL, CSV) or a table (Parquet)."""

    file: int
    lines: Sequence[int]  # each record's 1-based line (row) number
    raws: list[bytes | None] | None = None  # each line (None: over the size limit)
    table: pa.Table | None = None

    def __len__(self) -> int:
        return len(self.lines)


@dataclass
class RawPart:
    chunks: list[RawChunk]
    count: int
    end: ShardProgress  # where the records after this part are (its counters unset)

    @property
    def nbytes(self) -> int:
        """About the bytes its records take as read (a table's buffers, or the lines)."""
        return sum(
            c.table.nbytes if c.table is not None else sum(len(r) for r in c.raws or () if r)
            for c in self.chunks
        )


@dataclass
class ParsedPart:
    """A part's good records (ids, model inputs, kept values, and each one's position in the
    part) and its bad ones (by position)."""

    ids: list[Any]
    inputs: list[Any]
    keeps: list[Any] | None
    positions: range | list[int]
    failures: dict[int, RecordFailure] = field(default_factory=dict)
    _starts: list[int] = field(default_factory=list)  # each chunk's first position
    _chunks: list[tuple[int, Sequence[int]]] = field(default_factory=list)  # (file, lines)

    def where(self, pos: int) -> Location:
        """(file index, line) of the record at ``pos``."""
        index = bisect.bisect_right(self._starts, pos) - 1
        file, lines = self._chunks[index]
        return file, lines[pos - self._starts[index]]


def duplicate(first_line: int, first_file: str | None = None) -> RecordError:
    where = f"line {first_line}" + (f" of {first_file}" if first_file else "")
    return RecordError(Stage.DUPLICATE, Code.DUPLICATE_ID, f"duplicate id: {where} has the same id")


class ShardReader:
    """A shard's records in order across its segments, from ``progress`` on."""

    def __init__(self, plan: Plan, shard: int, progress: ShardProgress, batch_rows: int = 65_536):
        self.plan = plan
        self.segments = plan.shards[shard].segments
        self.segment, self.record = progress.segment, progress.record
        self._offset, self._line = progress.offset, progress.line
        self._batch_rows = batch_rows
        self._reader: TextSegmentReader | ParquetSegmentReader | None = None

    def _open(self) -> TextSegmentReader | ParquetSegmentReader:
        seg = self.segments[self.segment]
        file = self.plan.files[seg.file]
        start = seg.start + self.record
        try:
            if file.format == "parquet":
                end = seg.start + seg.records
                return ParquetSegmentReader(file, start, end, self.plan.spec, self._batch_rows)
            return TextSegmentReader(file, start, self._offset, self._line)
        except InputError as exc:
            raise ShardFailed(exc.failure, str(exc)) from None
        except FileNotFoundError:
            raise ShardFailed(
                Failure.INPUT_CHANGED, f"input changed while the batch ran: {file.uri} is gone"
            ) from None
        except PermissionError:
            raise ShardFailed(Failure.ACCESS_DENIED, f"access denied reading {file.uri}") from None

    def read(self, count: int) -> RawPart:
        """The next ``count`` records (fewer only at the shard's end), a chunk per file."""
        chunks: list[RawChunk] = []
        taken = 0
        while taken < count and self.segment < len(self.segments):
            seg = self.segments[self.segment]
            if self._reader is None:
                self._reader = self._open()
            want = min(count - taken, seg.records - self.record)
            try:
                lines, data = self._reader.read(want)
            except InputError as exc:
                raise ShardFailed(exc.failure, str(exc)) from None
            if len(lines) != want:
                raise ShardFailed(
                    Failure.INPUT_CHANGED,
                    f"input changed while the batch ran: {self.plan.files[seg.file].uri} has "
                    f"{seg.start + self.record + len(lines)} records, the plan counted more",
                )
            if isinstance(data, pa.Table):
                chunks.append(RawChunk(seg.file, lines, table=data))
            else:
                chunks.append(RawChunk(seg.file, lines, raws=data))
            taken += want
            self.record += want
            if isinstance(self._reader, TextSegmentReader):
                self._offset, self._line = self._reader.offset, self._reader.line
            if self.record == seg.records:
                self._next_segment()
        end = ShardProgress(segment=self.segment, record=self.record, offset=self._offset, line=self._line)
        return RawPart(chunks, taken, end)

    def _next_segment(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self.segment, self.record = self.segment + 1, 0
        if self.segment < len(self.segments):
            self._offset, self._line = self.segments[self.segment].offset, self.segments[self.segment].line

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


class PartParser:
    """Turns a shard's raw parts into parsed ones, as its plan says (format, fields), marking
    the records the plan found to repeat an earlier id."""

    def __init__(self, plan: Plan, duplicates: dict[Location, Location]):
        self.plan, self.duplicates = plan, duplicates
        self._fields: dict[int, FieldReader] = {}

    def fields(self, file: int) -> FieldReader:
        if file not in self._fields:
            self._fields[file] = FieldReader(self.plan.spec, self.plan.files[file].partition)
        return self._fields[file]

    def parse(self, part: RawPart) -> ParsedPart:
        out = ParsedPart([], [], [] if self.plan.spec.keep_columns else None, [])
        base = 0
        whole = len(part.chunks) == 1
        for chunk in part.chunks:
            file = self.plan.files[chunk.file]
            out._starts.append(base)
            out._chunks.append((chunk.file, chunk.lines))
            if file.format == "jsonl":
                self._jsonl(chunk, base, out, whole)
            else:
                self._rows(chunk, base, out, whole)
            base += len(chunk)
        return out

    def _mark(
        self, out: ParsedPart, pos: int, record_id: Any, file: int, line: int, error: RecordError
    ) -> None:
        out.failures[pos] = RecordFailure.of(record_id, line, error, self.plan.files[file].uri)

    def _duplicate(self, first: Location, here: Location) -> RecordError:
        where = (
            f"line {first[1]}"
            if first[0] == here[0]
            else f"line {first[1]} of {self.plan.files[first[0]].uri}"
        )
        return RecordError(Stage.DUPLICATE, Code.DUPLICATE_ID, f"duplicate id: {where} has the same id")

    def _accept(self, out: ParsedPart, pos: int, record_id: Any, model_input: Any, kept: Any) -> None:
        out.positions.append(pos)  # type: ignore[union-attr]
        out.ids.append(record_id)
        out.inputs.append(model_input)
        if out.keeps is not None:
            out.keeps.append(kept)

    def _duplicates_in(self, chunk: RawChunk) -> bool:
        return bool(self.duplicates) and any(file == chunk.file for file, _ in self.duplicates)

    def _jsonl(self, chunk: RawChunk, base: int, out: ParsedPart, whole: bool) -> None:
        """A chunk of good records is parsed in bulk (the usual case); line by line only if
        some are bad, for each bad line's own error."""
        raws, fields = chunk.raws or [], self.fields(chunk.file)
        dups = self._duplicates_in(chunk)
        parsed = None if dups or None in raws else jsonl.parse_lines(raws, fields)  # type: ignore[arg-type]
        if parsed is not None:
            self._bulk(out, base, len(raws), parsed, whole)
            return
        if isinstance(out.positions, range):
            out.positions = list(out.positions)
        for pos, (line, raw) in enumerate(zip(chunk.lines, raws, strict=True), start=base):
            if raw is None:
                self._mark(out, pos, None, chunk.file, line, jsonl.too_long())
                continue
            try:
                record_id, model_input, kept = jsonl.parse_line(raw, fields)
            except RecordError as exc:
                self._mark(out, pos, jsonl.id_hint(raw, fields.id_field), chunk.file, line, exc)
                continue
            if dups and (first := self.duplicates.get((chunk.file, line))):
                self._mark(out, pos, record_id, chunk.file, line, self._duplicate(first, (chunk.file, line)))
                continue
            self._accept(out, pos, record_id, model_input, kept)

    def _bulk(self, out: ParsedPart, base: int, count: int, parsed: Any, whole: bool) -> None:
        ids, inputs, keeps = parsed
        if whole:  # a whole part of good records: no position list at all
            out.ids, out.inputs, out.keeps, out.positions = ids, inputs, keeps, range(count)
            return
        if isinstance(out.positions, range):
            out.positions = list(out.positions)
        out.positions.extend(range(base, base + count))
        out.ids.extend(ids)
        out.inputs.extend(inputs)
        if out.keeps is not None:
            out.keeps.extend(keeps)

    def _rows(self, chunk: RawChunk, base: int, out: ParsedPart, whole: bool) -> None:
        """CSV lines or Parquet rows: split column by column when every row is good (the usual
        case), else as dicts one by one, like JSON objects, for each bad row's own error."""
        file = self.plan.files[chunk.file]
        fields = self.fields(chunk.file)
        raws: list[bytes] = chunk.raws or []  # type: ignore[assignment]
        table = chunk.table if chunk.table is not None else csv_records.read_table(raws, file.columns)
        dups = self._duplicates_in(chunk)
        if table is not None and not dups and (parsed := fields.split_table(table)) is not None:
            self._bulk(out, base, table.num_rows, parsed, whole)
            return
        if chunk.table is not None:
            rows, bad = chunk.table.to_pylist(), {}
        else:
            rows, bad = csv_records.parse_rows(raws, file.columns)
        if isinstance(out.positions, range):
            out.positions = list(out.positions)
        for offset, (line, row) in enumerate(zip(chunk.lines, rows, strict=True)):
            pos = base + offset
            if offset in bad:
                self._mark(out, pos, None, chunk.file, line, bad[offset])
                continue
            try:
                record_id, model_input, kept = fields.split(row)
            except RecordError as exc:
                self._mark(out, pos, row.get(fields.id_field), chunk.file, line, exc)
                continue
            if dups and (first := self.duplicates.get((chunk.file, line))):
                self._mark(out, pos, record_id, chunk.file, line, self._duplicate(first, (chunk.file, line)))
                continue
            self._accept(out, pos, record_id, model_input, kept)
