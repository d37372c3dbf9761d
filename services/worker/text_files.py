"""Line-oriented input files (JSONL, CSV), plain or compressed: opening them, the planning scan
of one file, and a shard's reader of a run of its records.

A record is a non-blank line (after a CSV file's header). A plain file is found by byte offset:
the plan notes where each shard starts and a shard seeks there. A compressed file cannot seek:
a shard starting inside it reads and drops the records before its first one (what a resume or a
later shard of a big compressed file costs: decompressing the file up to there).
"""

from __future__ import annotations

import bz2
import gzip
import io
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import fsspec

from services.errors import Failure
from services.worker import duplicates, fs, jsonl, jsonl_scan
from services.worker.inputs import FoundFile, InputError
from services.worker.manifests import InputFile

try:  # fsspec's zstd codec; without it .zst inputs say so when opened
    from zstandard import ZstdError
except ImportError:  # pragma: no cover
    ZstdError = EOFError  # type: ignore[misc,assignment]

# A CSV file's first rows: what its column types are inferred from.
TYPE_SAMPLE_ROWS = 1000
# Truncated or corrupt compressed data, as each codec reports it.
CORRUPT_DATA: tuple[type[BaseException], ...] = (EOFError, zlib.error, gzip.BadGzipFile, ZstdError)


def corrupt(uri: str, compression: str | None, exc: BaseException) -> InputError:
    return InputError(
        Failure.INPUT_UNREADABLE,
        f"{uri}: truncated or corrupt {compression} data ({type(exc).__name__}: {exc})",
    )


def open_text(uri: str, compression: str | None) -> IO[bytes]:
    """A binary file positioned at the start, with the whole ``io`` reading API."""
    if compression is None:
        return fs.open_input(uri)
    stream = fsspec.open(uri, "rb", compression=compression).open()
    if isinstance(stream, gzip.GzipFile | bz2.BZ2File):
        return stream  # already buffered readers
    return io.BufferedReader(stream, buffer_size=fs.COPY_CHUNK)  # type: ignore[arg-type]


def read_header(fh: IO[bytes], uri: str) -> bytes:
    """A CSV file's header line (its first line)."""
    header = fh.readline(jsonl.MAX_RECORD_BYTES + 1)
    if not header.strip() or len(header) > jsonl.MAX_RECORD_BYTES:
        raise InputError(Failure.INPUT_UNREADABLE, f"{uri}: a CSV file needs a header line first")
    return header


@dataclass
class ScannedText:
    """What the plan learns from a text file's scan."""

    records: int
    short_lines: bool
    header: bytes | None
    first_lines: list[bytes]  # a CSV file's first records, for its column types
    index: jsonl_scan.RecordIndex | None  # where records start (plain files only)
    data_offset: int  # where the records start (after a CSV header)


def scan_text(
    found: FoundFile,
    key_hashes: Callable[[jsonl_scan.Records], Any] | None,
    ids: duplicates.DuplicateIds,
    lock: threading.Lock,
) -> ScannedText:
    """Count a file's records, index their starts (plain files) and note their id hashes
    (``key_hashes`` of each chunk; None: the caller hashes ids another way)."""
    index = jsonl_scan.RecordIndex() if found.compression is None else None
    long_lines, first_lines, header = False, [], None
    records = 0
    try:
        with open_text(found.uri, found.compression) as fh:
            if found.format == "csv":
                header = read_header(fh, found.uri)
            data_offset = len(header or b"")
            for chunk in jsonl_scan.scan_records(fh, line=2 if header else 1, offset=data_offset):
                if index is not None:
                    index.add(chunk)
                records += len(chunk)
                long_lines = long_lines or chunk.long_lines
                if header is not None and len(first_lines) < TYPE_SAMPLE_ROWS:
                    first_lines.extend(
                        raw for raw in chunk.raws[: 1000 - len(first_lines)] if raw is not None
                    )
                if key_hashes is not None:
                    hashes = key_hashes(chunk)
                    with lock:
                        ids.add(hashes)
    except CORRUPT_DATA as exc:
        raise corrupt(found.uri, found.compression, exc) from None
    return ScannedText(records, not long_lines, header, first_lines, index, data_offset)


class TextSegmentReader:
    """A run of a text file's records from record ``start`` (0-based), at byte ``offset`` and
    ``line`` when the file is plain (a compressed one is read from its start)."""

    def __init__(self, file: InputFile, start: int, offset: int, line: int):
        self.file = file
        self._fh = open_text(file.uri, file.compression)
        try:
            if file.compression is None:
                self._fh.seek(offset)
                self.offset, self.line = offset, line
            else:
                self.offset, self.line = 0, 1
                if file.format == "csv":
                    self._fh.readline(jsonl.MAX_RECORD_BYTES + 1)
                    self.line = 2
                if start:
                    _, _, self.line = jsonl.read_records(self._fh, start, self.line)
        except CORRUPT_DATA as exc:
            self._fh.close()
            raise corrupt(file.uri, file.compression, exc) from None
        except BaseException:
            self._fh.close()
            raise

    def read(self, count: int) -> tuple[Any, list[bytes | None]]:
        """(line numbers, raw lines) of up to ``count`` records."""
        try:
            lines, raws, consumed, self.line = jsonl.read_part(
                self._fh, count, self.line, self.file.short_lines
            )
        except CORRUPT_DATA as exc:
            raise corrupt(self.file.uri, self.file.compression, exc) from None
        self.offset += consumed
        return lines, raws

    def close(self) -> None:
        self._fh.close()
