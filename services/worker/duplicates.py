"""Duplicate ids in bounded memory: a 64-bit hash per record while the plan scans the input,
spilled to a temp file past a bound, then an exact comparison only of the ids whose hash
repeats. The first occurrence of an id is processed; later ones become errors.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator, Sequence
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.lib.stride_tricks import sliding_window_view

from services import json_codec
from services.worker.jsonl_scan import Records


def id_key(record_id: Any) -> bytes | None:
    """An id as canonical JSON (``1`` and ``"1"`` differ), or None if it is not a valid id
    (that record becomes a parse error instead)."""
    if isinstance(record_id, bool) or not isinstance(record_id, str | int):
        return None
    return json_codec.dumps(record_id)


def record_key(raw: bytes | None, id_field: str = "id") -> bytes | None:
    """The ``id_key`` of a raw JSONL line, or None for a line that is not a valid record."""
    if raw is None:
        return None
    try:
        obj = json_codec.loads_strict(raw)
    except ValueError:  # malformed JSON or not UTF-8
        return None
    return id_key(obj.get(id_field)) if isinstance(obj, dict) else None


# An id that comes first, as a plain string (no escapes) or a short integer, is its own
# canonical JSON: the bytes between the colon and the next comma are the key. Nothing in it
# crosses a newline, so on many lines at once it matches at most once per line.
_SPACE = rb"[ \t\r\f\v]*"  # JSON whitespace but the newline
_ID_FIRST = (
    _SPACE + rb"\{" + _SPACE + rb'"id"' + _SPACE + rb":" + _SPACE
    + rb'("[^"\\\x00-\x1f]*"|-?[1-9][0-9]{0,17}|0)' + _SPACE + rb"[,}]"
)  # fmt: skip
_LEADING_ID = re.compile(_ID_FIRST)
# The same after a newline: on many lines, the regex engine jumps from newline to newline
# (a literal first) instead of trying every byte.
_LINE_ID = re.compile(rb"\n" + _ID_FIRST)


def candidate_key(raw: bytes | None, id_field: str = "id") -> bytes | None:
    """``record_key`` without parsing the line in the usual layout (the id first, once, named
    ``id``): the planning scan's first pass. Equal to ``record_key`` for every valid record; a
    broken line may get a key here, which at worst triggers the exact second pass."""
    if id_field == "id" and raw is not None and (match := _LEADING_ID.match(raw)) and raw.count(b'"id"') == 1:
        return match.group(1)
    return record_key(raw, id_field)


def _keys_in_text(text: bytes, count: int) -> list[bytes] | None:
    """The keys of ``count`` newline-separated lines in one regex pass, if every line has the
    usual layout (matched once, holding ``"id"`` once); None otherwise."""
    text = b"\n" + text
    keys = _LINE_ID.findall(text)
    return keys if len(keys) == count and text.count(b'"id"') == count else None


def chunk_keys(records: Records, id_field: str = "id") -> list[bytes]:
    """``candidate_keys`` of a scanned chunk, its text searched whole when it has one."""
    if (
        id_field == "id"
        and records.text is not None
        and (keys := _keys_in_text(records.text, len(records))) is not None
    ):
        return keys
    return candidate_keys(records.raws, id_field)


# 64-bit FNV-1a over 8-byte words, then the length and murmur3's final mix (so the low bits,
# which pick a spill bucket, depend on every byte). numpy does it for many keys at once. A key
# is hashed by its content with a seed per kind: a string's bytes between its quotes, an
# integer's digits. So an Arrow string column is hashed where its values lie, without a copy of
# each in quotes.
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_STRING_SEED = np.uint64(0x84222325CBF29CE4)
_FNV_PRIME = np.uint64(0x100000001B3)
_MIX = np.uint64(0xFF51AFD7ED558CCD)
_SHIFT = np.uint64(33)
_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


def _block_hashes(block: Any, lengths: Any, quoted: Any) -> Any:
    """int64 hashes of the contents laid out one per row of ``block`` (uint8, C order, width a
    multiple of 8, what follows each content's ``lengths`` bytes ignored); ``quoted``: which
    are strings."""
    words = block.view(np.uint64)
    hashes = np.where(quoted, _STRING_SEED, _FNV_OFFSET).astype(np.uint64)
    for column in range(words.shape[1]):
        left = lengths - 8 * column  # content bytes from this word on
        bits = (8 * left.clip(1, 8)).astype(np.uint64)
        keep = _ALL_ONES >> (np.uint64(64) - bits)  # the content's bytes (little-endian: the low ones)
        hashes = np.where(left > 0, (hashes ^ (words[:, column] & keep)) * _FNV_PRIME, hashes)
    hashes ^= lengths.astype(np.uint64)
    hashes ^= hashes >> _SHIFT
    hashes *= _MIX
    hashes ^= hashes >> _SHIFT
    return hashes.view(np.int64)


def _rows(padded: Any, starts: Any, width: int) -> Any:
    """``width`` bytes from each of ``starts``, one per row (``padded``: data then at least
    ``width`` zeros, so that a row may run past the end)."""
    return sliding_window_view(padded, width)[starts]


def _word_width(lengths: Any) -> int:
    """Bytes per row that hold the longest content in whole 8-byte words."""
    return max(8, -(-int(lengths.max()) // 8) * 8)


def key_hashes(keys: Sequence[bytes]) -> Any:
    """int64 hash of each key: what ``DuplicateIds`` compares. Equal keys, equal hashes, in any
    batch; stable within a process (enough for one planning activity)."""
    if not keys:
        return np.empty(0, dtype=np.int64)
    lengths = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    data = np.frombuffer(b"".join(keys), dtype=np.uint8)
    first = np.concatenate((data, np.zeros(1, dtype=np.uint8)))[starts]  # an empty last key: 0
    quoted = (first == ord('"')) & (lengths >= 2)
    return _laid_out_hashes(data, starts + quoted, lengths - 2 * quoted, quoted)


def _laid_out_hashes(data: Any, starts: Any, lengths: Any, quoted: Any) -> Any:
    """Hashes of the contents at ``starts`` (``lengths`` bytes each) in ``data`` (uint8);
    ``quoted``: which are strings (an array, or one bool for all)."""
    width = _word_width(lengths)
    padded = np.concatenate((data, np.zeros(width, dtype=np.uint8)))
    return _block_hashes(_rows(padded, starts, width), lengths, quoted)


def _escapes(data: Any) -> bool:
    """Whether UTF-8 bytes hold what JSON escapes in a string: a control character, a quote or
    a backslash (ids holding one are keyed one by one)."""
    return bool((data < 0x20).any() or (data == ord('"')).any() or (data == ord("\\")).any())


def _laid_out(text: pa.Array) -> tuple[Any, Any]:
    """The bytes of a string array's values end to end (uint8) and each value's start in them."""
    _, offsets_buffer, data_buffer = text.buffers()
    width = np.int64 if pa.types.is_large_string(text.type) else np.int32
    offsets = np.frombuffer(offsets_buffer, dtype=width)[text.offset : text.offset + len(text) + 1]
    offsets = offsets.astype(np.int64, copy=False)
    return np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0] : offsets[-1]], offsets - offsets[0]


def column_key_hashes(column: pa.Array) -> Any:
    """``key_hashes`` of the valid ids in an Arrow id column (a Parquet file's). Integers are
    their own canonical JSON, and so are strings with nothing JSON escapes (in quotes): both are
    hashed from Arrow's buffers without a Python object per id; any other column goes value by
    value through ``id_key``."""
    column = column.drop_null()
    if pa.types.is_integer(column.type):
        text, quoted = pc.cast(column, pa.large_string()), False
    elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        text, quoted = column, True
        if len(column) and _escapes(_laid_out(column)[0]):
            return key_hashes([k for v in column.to_pylist() if (k := id_key(v)) is not None])
    else:
        return key_hashes([k for v in column.to_pylist() if (k := id_key(v)) is not None])
    if not len(text):
        return np.empty(0, dtype=np.int64)
    data, offsets = _laid_out(text)
    return _laid_out_hashes(data, offsets[:-1], np.diff(offsets), quoted)


def chunk_key_hashes(records: Records, id_field: str = "id") -> Any:
    """The ``key_hashes`` of a scanned chunk's ids."""
    return key_hashes(chunk_keys(records, id_field))


def candidate_keys(raws: list[bytes | None], id_field: str = "id") -> list[bytes]:
    """``candidate_key`` of many lines with one regex pass when all have the usual layout;
    line by line otherwise."""
    if (
        id_field == "id"
        and None not in raws
        and (keys := _keys_in_text(b"\n".join(raws), len(raws))) is not None  # type: ignore[arg-type]
    ):
        return keys
    return [key for raw in raws if (key := candidate_key(raw, id_field)) is not None]


class DuplicateIds:
    """Finds the records whose id repeats an earlier record's id, in bounded memory.

    Pass 1 (``add`` for every chunk of records, during the planning scan): a 64-bit hash of each
    id (8 bytes per record) is kept in memory up to ``SPILL_AT`` hashes (1 MiB), then spilled,
    ordered by bucket (256 of them, by numpy), to an anonymous temp file, so memory stays
    bounded however large the input. ``repeated_hashes`` then sorts one bucket at a time (or
    all that is in memory, if nothing spilled) and compares neighbours. Only when a hash
    repeats does the caller rescan the input and compare those ids exactly: a hash collision
    of two different ids is not a duplicate. Hashes are ``key_hashes`` of the ids.
    """

    BUCKETS = 256
    SPILL_AT = 1 << 17  # hashes held in memory (1 MiB) before spilling

    def __init__(self) -> None:
        self._memory: list[Any] = []  # numpy int64 arrays
        self._held = 0
        self._spilled: list[tuple[IO[bytes], Any]] = []  # (file, where each bucket starts in it)
        self._spill = True

    def add(self, hashes: Any) -> None:
        """Note the ``key_hashes`` of some records."""
        self._memory.append(np.asarray(hashes, dtype=np.int64))
        self._held += len(hashes)
        if self._held >= self.SPILL_AT and self._spill:
            try:
                fh = tempfile.TemporaryFile()
            except OSError:  # no writable temp dir (read-only root fs): keep them in memory
                self._spill = False
                return
            hashes, bounds = self._by_bucket()
            fh.write(hashes.tobytes())
            self._spilled.append((fh, bounds))
            self._memory, self._held = [], 0

    def _by_bucket(self) -> tuple[Any, Any]:
        """The hashes in memory ordered by bucket, and where each bucket starts among them."""
        hashes = np.concatenate(self._memory) if self._memory else np.empty(0, dtype=np.int64)
        buckets = (hashes & (self.BUCKETS - 1)).astype(np.uint8)
        order = np.argsort(buckets, kind="stable")
        return hashes[order], np.searchsorted(buckets[order], np.arange(self.BUCKETS + 1))

    def _bucket(self, index: int, held: Any, held_bounds: Any) -> Any:
        parts = [held[held_bounds[index] : held_bounds[index + 1]]]
        for fh, bounds in self._spilled:
            fh.seek(int(bounds[index]) * 8)
            parts.append(np.frombuffer(fh.read(int(bounds[index + 1] - bounds[index]) * 8), dtype=np.int64))
        return np.concatenate(parts)

    def repeated_hashes(self, limit: int) -> tuple[set[int], int]:
        """(hashes seen more than once, number of records repeating an earlier hash). Stops
        collecting once more than ``limit`` records repeat."""
        if self._spilled:
            held, bounds = self._by_bucket()
            groups: Iterator[Any] = (self._bucket(index, held, bounds) for index in range(self.BUCKETS))
        else:
            groups = iter([np.concatenate(self._memory)] if self._memory else [])
        repeated: set[int] = set()
        extra = 0
        for hashes in groups:
            hashes = np.sort(hashes)
            again = hashes[1:][hashes[1:] == hashes[:-1]]  # a hash once per extra record
            if len(again):
                extra += len(again)
                repeated.update(np.unique(again)[: limit + 1].tolist())
            if extra > limit:
                break
        return repeated, extra

    def close(self) -> None:
        for fh, _ in self._spilled:
            fh.close()
        self._spilled.clear()
        self._memory, self._held = [], 0
