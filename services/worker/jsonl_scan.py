"""The planning scan of a JSONL input: every record's line number and byte offset, read in big
chunks, and an index of where every ``stride``-th record starts, so the planner can cut shards
and a shard can seek to its first record without a second pass.

It finds the same records as ``jsonl.read_records`` (the shard reader), so the plan and the
shards agree on what a record is.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from typing import IO, Any

import numpy as np

from services.worker.jsonl import MAX_RECORD_BYTES, read_records


class Records:
    """Records found by ``scan_records``: each one's line number and byte offset and, as
    ``raws``, the raw lines without their newline (None if longer than the limit). A chunk
    without blank or overlong lines keeps its text whole (``text``) and splits it only if
    ``raws`` is asked for: the planning scan never asks."""

    __slots__ = ("_raws", "lines", "offsets", "text")

    def __init__(
        self,
        raws: list[bytes | None] | None,
        lines: Sequence[int],
        offsets: Sequence[int],
        text: bytes | None = None,
    ) -> None:
        self._raws, self.lines, self.offsets, self.text = raws, lines, offsets, text

    @property
    def raws(self) -> list[bytes | None]:
        if self._raws is None:
            self._raws = self.text.split(b"\n") if self.text else []  # type: ignore[assignment]
        return self._raws  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.lines)

    @property
    def long_lines(self) -> bool:
        """Whether a line is longer than the scan's limit."""
        return self.text is None and None in self.raws


def scan_records(
    fh: IO[bytes],
    max_bytes: int = MAX_RECORD_BYTES,
    chunk_bytes: int = 1 << 20,
    line: int = 1,
    offset: int = 0,
) -> Iterator[Records]:
    """Every record from ``fh``'s start, one ``Records`` per chunk read: the records
    ``read_records`` gives, read in big chunks for the planning scan. A chunk without blank or
    overlong lines (the usual case) costs no Python step per line: its newlines are found by
    numpy, its lines never split. A line past ``max_bytes`` is never held whole. ``line`` and
    ``offset`` are those of ``fh``'s current position."""
    carry: list[bytes] = []  # the start of a line continued in the next chunk
    carry_len = 0
    while chunk := fh.read(chunk_bytes):
        cut = chunk.rfind(b"\n")
        if cut < 0:  # no line ends in this chunk
            tail, body = chunk, b""
        else:
            tail, body = chunk[cut + 1 :], chunk[:cut]
        if cut >= 0 and carry_len <= max_bytes and (fast := _clean_lines(carry, body, max_bytes)):
            text, starts = fast
            yield Records(None, range(line, line + len(starts)), offset + starts, text)
            line, offset = line + len(starts), offset + len(text) + 1
            carry, carry_len = [], 0
        elif cut >= 0:
            parts = body.split(b"\n")
            head_len = -1  # the first line's length when it started in an earlier chunk
            if carry:
                head_len = carry_len + len(parts[0])
                parts[0] = b"".join(carry) + parts[0] if head_len <= max_bytes else b""
                carry, carry_len = [], 0
            lengths = list(map(len, parts))
            if head_len >= 0:
                lengths[0] = head_len
            found = Records([], [], [])
            for part, size in zip(parts, lengths, strict=True):
                if size > max_bytes or (part and not part.isspace()):
                    found.raws.append(None if size > max_bytes else part)
                    found.lines.append(line)  # type: ignore[attr-defined]
                    found.offsets.append(offset)  # type: ignore[attr-defined]
                line += 1
                offset += size + 1
            if found.raws:
                yield found
        if tail:
            carry_len += len(tail)
            if carry_len <= max_bytes:
                carry.append(tail)
            else:
                carry = [b"x"]  # too long already: keep only the fact that the line has content
    if carry_len:
        if carry_len > max_bytes:
            yield Records([None], [line], [offset])
        else:
            raw = b"".join(carry)
            if not raw.isspace():
                yield Records([raw], [line], [offset])


def _clean_lines(carry: list[bytes], body: bytes, max_bytes: int) -> tuple[bytes, Any] | None:
    """(text, where each of its lines starts) when ``carry + body`` holds only lines that are
    records for sure: none empty, none starting with whitespace (no byte at or below b" " at a
    line's start), none over ``max_bytes``; else None, and the caller goes line by line."""
    text = b"".join((*carry, body)) if carry else body
    if not text or text.endswith(b"\n"):  # the last line empty
        return None
    data = np.frombuffer(text, dtype=np.uint8)
    newlines = np.flatnonzero(data == 10)
    starts = np.concatenate(([0], newlines + 1))
    if (data[starts] <= 32).any():
        return None
    ends = np.append(newlines, len(text))
    if int((ends - starts).max()) > max_bytes:
        return None
    return text, starts


class RecordIndex:
    """Where every ``stride``-th record starts (16 bytes per ``stride`` records), filled by the
    planning scan: any record is then found by reading fewer than ``stride`` lines."""

    def __init__(self, stride: int = 256) -> None:
        self.stride = stride
        self.total = 0
        self._lines = array("q")
        self._offsets = array("q")

    def add(self, records: Records) -> None:
        first = (-self.total) % self.stride
        self._lines.extend(records.lines[first :: self.stride])
        self._offsets.extend(records.offsets[first :: self.stride])
        self.total += len(records)

    def locate(self, fh: IO[bytes], index: int, max_bytes: int = MAX_RECORD_BYTES) -> tuple[int, int]:
        """(line number, byte offset) of record ``index`` (from 0)."""
        mark, skip = divmod(index, self.stride)
        line, offset = self._lines[mark], self._offsets[mark]
        if not skip:
            return line, offset
        fh.seek(offset)
        _, consumed, line = read_records(fh, skip, line, max_bytes)
        offset += consumed
        while raw := fh.readline(max_bytes + 1):  # blank lines before the record: not its start
            if (len(raw) > max_bytes and not raw.endswith(b"\n")) or not raw.isspace():
                break
            offset, line = offset + len(raw), line + 1
        return line, offset
