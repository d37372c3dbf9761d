"""Reading inputs and writing outputs through fsspec (local paths or any fsspec URL).

Every output name is fixed by a shard (and part) number and written atomically: temp file then
rename on local disks, a single object PUT (committed on close) on object stores. A retry
overwrites, never appends.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import tempfile
import uuid
from array import array
from collections.abc import Iterator, Sequence
from typing import IO, Any

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem
from numpy.lib.stride_tricks import sliding_window_view

from services import json_codec
from services.constants import ERRORS_DIR, PARTS_DIR, PLAN_FILE, SHARD_FILE, SUMMARY_FILE


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def shard_uri(output_uri: str, shard: int) -> str:
    return join(output_uri, SHARD_FILE.format(shard=shard))


def errors_uri(output_uri: str, shard: int | None = None) -> str:
    base = join(output_uri, ERRORS_DIR)
    return base if shard is None else join(base, SHARD_FILE.format(shard=shard))


def part_uri(output_uri: str, shard: int, part: int, kind: str) -> str:
    return join(shard_parts_uri(output_uri, shard), f"part-{part:05d}.{kind}.jsonl")


def plan_uri(output_uri: str) -> str:
    return join(output_uri, PLAN_FILE)


def summary_uri(output_uri: str) -> str:
    return join(output_uri, SUMMARY_FILE)


@contextlib.contextmanager
def atomic_writer(uri: str) -> Iterator[IO[bytes]]:
    """Open ``uri`` for writing so that readers see the old content or the whole new one."""
    fs, path = fsspec.core.url_to_fs(uri)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    else:
        with fs.open(path, "wb") as fh:  # object stores commit the object on close
            yield fh


def write_bytes(uri: str, data: bytes) -> None:
    with atomic_writer(uri) as fh:
        fh.write(data)


def write_json(uri: str, payload: dict[str, Any]) -> None:
    with atomic_writer(uri) as fh:
        fh.write(json.dumps(payload, indent=2, default=str).encode() + b"\n")


def read_json(uri: str) -> dict[str, Any]:
    with fsspec.open(uri, "rb") as fh:
        return json.loads(fh.read())


def concat(uri: str, sources: list[str], missing_ok: bool = False) -> None:
    """Write the concatenation of ``sources`` to ``uri`` atomically, streaming. With
    ``missing_ok`` a source that does not exist counts as empty."""
    with atomic_writer(uri) as out:
        for src in sources:
            try:
                fh = fsspec.open(src, "rb").open()
            except FileNotFoundError:
                if missing_ok:
                    continue
                raise
            with fh:
                while chunk := fh.read(1 << 20):
                    out.write(chunk)


def remove(uri: str, recursive: bool = False) -> None:
    fs, path = fsspec.core.url_to_fs(uri)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=recursive)


_SHARD_GLOB = SHARD_FILE.replace("{shard:05d}", "*")


def remove_final_shards(output_uri: str) -> None:
    """Drop the final shard files an earlier batch left in this folder: this batch writes its
    own, and one it does not finish must not show an earlier batch's results as its own."""
    fs, path = fsspec.core.url_to_fs(output_uri)
    for final in fs.glob(join(path, _SHARD_GLOB)) + fs.glob(join(path, ERRORS_DIR, _SHARD_GLOB)):
        with contextlib.suppress(FileNotFoundError):
            fs.rm(final)


def count_final(output_uri: str, shards: list[int]) -> tuple[int, int]:
    """(results, errors) in the final files of those of ``shards`` that have both."""
    succeeded = failed = 0
    for shard in shards:
        if (counts := final_counts(output_uri, shard)) is not None:
            succeeded, failed = succeeded + counts[0], failed + counts[1]
    return succeeded, failed


def final_counts(output_uri: str, shard: int) -> tuple[int, int] | None:
    """(results, errors) of a shard whose final files are both written, else None: the errors
    file is written last, so both there means the shard is whole."""
    results, errors = shard_uri(output_uri, shard), errors_uri(output_uri, shard)
    if exists(results) and exists(errors):
        return _count_lines(results), _count_lines(errors)
    return None


def shard_parts_uri(output_uri: str, shard: int) -> str:
    return join(output_uri, PARTS_DIR, SHARD_FILE.format(shard=shard).removesuffix(".jsonl"))


def _count_lines(uri: str) -> int:
    with fsspec.open(uri, "rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))


def remove_committed_parts(output_uri: str) -> None:
    """Drop the parts of every shard whose final results and errors files both exist."""
    fs, path = fsspec.core.url_to_fs(output_uri)
    for final in fs.glob(join(path, _SHARD_GLOB)):
        name = final.rsplit("/", 1)[-1]
        if fs.exists(join(path, ERRORS_DIR, name)):
            with contextlib.suppress(FileNotFoundError):
                fs.rm(join(path, PARTS_DIR, name.removesuffix(".jsonl")), recursive=True)


def exists(uri: str) -> bool:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs.exists(path)


def open_input(uri: str) -> IO[bytes]:
    fs, path = fsspec.core.url_to_fs(uri)
    if isinstance(fs, LocalFileSystem):
        # The built-in reader: fsspec's local wrapper adds a Python call to every readline.
        return open(path, "rb")
    return fs.open(path, "rb")


# --- Records ---------------------------------------------------------------------------------


class BadRecord(ValueError):
    """A line that is not a usable record: it goes to the errors file with this reason."""


def split_record(obj: Any) -> tuple[Any, Any]:
    """(id, model input). The model input is ``input`` if present, else the object minus ``id``;
    a non-object (inline only) is the model input itself, with no id."""
    if isinstance(obj, dict) and "id" in obj:
        return obj["id"], _model_input(obj)
    return None, obj


def _model_input(record: dict[str, Any]) -> Any:
    return record["input"] if "input" in record else {k: v for k, v in record.items() if k != "id"}


def parse_line(raw: bytes) -> tuple[Any, Any]:
    """Parse one JSONL line into (id, model input) or raise ``BadRecord``."""
    try:
        obj = json_codec.loads_strict(raw)
    except UnicodeDecodeError as exc:
        raise BadRecord(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    except json_codec.JSONDecodeError as exc:
        where = f" at column {exc.colno}" if exc.doc else ""
        raise BadRecord(f"malformed JSON: {exc.msg}{where}") from None
    if not isinstance(obj, dict):
        raise BadRecord(f"a record must be a JSON object, got {type(obj).__name__}")
    if "id" not in obj:
        raise BadRecord("record has no 'id' field")
    if not isinstance(obj["id"], str | int) or isinstance(obj["id"], bool):
        raise BadRecord("'id' must be a string or an integer")
    return split_record(obj)


_ID_TYPES = (str, int)  # exactly: orjson gives no subclasses, and a bool is not an id


def parse_lines(raws: list[bytes]) -> tuple[list[Any], list[Any]] | None:
    """``parse_line`` of many lines at once, as (ids, model inputs), when every line is a good
    record (the usual case, 3x faster); None otherwise, and the caller goes line by line for
    each bad line's own error."""
    records = json_codec.loads_lines_strict(raws)
    if records is None or not all(type(r) is dict for r in records):
        return None
    ids = [r.get("id") for r in records]
    if not all(type(i) in _ID_TYPES for i in ids):
        return None
    return ids, [r["input"] if "input" in r else _model_input(r) for r in records]


def results_jsonl(ids: list[Any], predictions: list[Any]) -> bytes:
    """The results file's lines (JSON Lines text) for records and their predictions."""
    return json_codec.dumps_jsonl([{"id": i, "prediction": p} for i, p in zip(ids, predictions, strict=True)])


def id_hint(raw: bytes) -> Any:
    """Best-effort id of a bad line, for the errors file."""
    with contextlib.suppress(Exception):
        obj = json_codec.loads(raw)
        if isinstance(obj, dict):
            return obj.get("id")
    return None


def dumps(payload: dict[str, Any]) -> bytes:
    return json_codec.dumps(payload, newline=True)


def error_line(record_id: Any, line: int, stage: str, reason: str) -> bytes:
    """One line of an errors file: which record, where, at which stage, and why."""
    return dumps({"id": record_id, "line": line, "stage": stage, "reason": reason})


MAX_RECORD_BYTES = 1 << 20  # a longer line is a bad record, not an out-of-memory worker


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
    fh: IO[bytes], max_bytes: int = MAX_RECORD_BYTES, chunk_bytes: int = 1 << 20
) -> Iterator[Records]:
    """Every record from ``fh``'s start, one ``Records`` per chunk read: the records
    ``read_records`` gives, read in big chunks for the planning scan. A chunk without blank or
    overlong lines (the usual case) costs no Python step per line: its newlines are found by
    numpy, its lines never split. A line past ``max_bytes`` is never held whole."""
    line, offset = 1, 0
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


def shard_sizes(total: int, shard_size: int, window: int) -> list[int]:
    """Records per shard: at most ``shard_size``, as equal as can be, and as many shards as a
    multiple of ``window`` (the shards running at once) when there are enough records. Equal
    shards that fill the window end together, rather than a last wave leaving slots idle."""
    count = -(-total // shard_size)
    count = min(total, -(-count // window) * window)
    base, extra = divmod(total, count)
    return [base + 1] * extra + [base] * (count - extra)


# --- Duplicate ids ---------------------------------------------------------------------------


def record_key(raw: bytes | None) -> bytes | None:
    """The id of a raw line as canonical JSON (``1`` and ``"1"`` differ), or None for a line
    that is not a valid record (that line becomes a parse error instead)."""
    if raw is None:
        return None
    try:
        obj = json_codec.loads_strict(raw)
    except ValueError:  # malformed JSON or not UTF-8
        return None
    if not isinstance(obj, dict):
        return None
    record_id = obj.get("id")
    if isinstance(record_id, bool) or not isinstance(record_id, str | int):
        return None
    return json_codec.dumps(record_id)


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
# (a literal first) instead of trying every byte (4x faster).
_LINE_ID = re.compile(rb"\n" + _ID_FIRST)


def candidate_key(raw: bytes | None) -> bytes | None:
    """``record_key`` without parsing the line in the usual layout (the id first, once): the
    planning scan's first pass. Equal to ``record_key`` for every valid record; a broken line
    may get a key here, which at worst triggers the exact second pass."""
    if raw is not None and (match := _LEADING_ID.match(raw)) and raw.count(b'"id"') == 1:
        return match.group(1)
    return record_key(raw)


def _keys_in_text(text: bytes, count: int) -> list[bytes] | None:
    """The keys of ``count`` newline-separated lines in one regex pass, if every line has the
    usual layout (matched once, holding ``"id"`` once); None otherwise."""
    text = b"\n" + text
    keys = _LINE_ID.findall(text)
    return keys if len(keys) == count and text.count(b'"id"') == count else None


def chunk_keys(records: Records) -> list[bytes]:
    """``candidate_keys`` of a scanned chunk, its text searched whole when it has one."""
    if records.text is not None and (keys := _keys_in_text(records.text, len(records))) is not None:
        return keys
    return candidate_keys(records.raws)


# 64-bit FNV-1a over 8-byte words, then the length and murmur3's final mix (so the low bits,
# which pick a spill bucket, depend on every byte). numpy does it for many keys at once.
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_MIX = np.uint64(0xFF51AFD7ED558CCD)
_SHIFT = np.uint64(33)
_FAST_ID_WIDTH = 256  # longer string ids take the regex path


def _block_hashes(block: Any, lengths: Any) -> Any:
    """int64 hashes of the keys laid out one per row of ``block`` (uint8, C order, width a
    multiple of 8, zero past each key's ``lengths``)."""
    words = block.view(np.uint64)
    used = (lengths + 7) // 8
    hashes = np.full(len(lengths), _FNV_OFFSET, dtype=np.uint64)
    for column in range(words.shape[1]):
        hashes = np.where(column < used, (hashes ^ words[:, column]) * _FNV_PRIME, hashes)
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
    """Bytes per row that hold the longest key in whole 8-byte words."""
    return max(8, -(-int(lengths.max()) // 8) * 8)


def _zero_past(block: Any, lengths: Any) -> Any:
    np.multiply(block, np.arange(block.shape[1]) < lengths[:, None], out=block)
    return block


def key_hashes(keys: Sequence[bytes]) -> Any:
    """int64 hash of each key: what ``DuplicateIds`` compares. Equal keys, equal hashes, in any
    batch; stable within a process (enough for one planning activity)."""
    if not keys:
        return np.empty(0, dtype=np.int64)
    lengths = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    width = _word_width(lengths)
    padded = np.frombuffer(b"".join(keys) + bytes(width), dtype=np.uint8)
    return _block_hashes(_zero_past(_rows(padded, starts, width), lengths), lengths)


_ID_PREFIX = np.frombuffer(b'{"id":"', dtype=np.uint8)


def _string_id_hashes(text: bytes, starts: Any) -> Any:
    """``key_hashes`` of the ids of a clean chunk's lines (``starts``: where each begins) with
    no per-line Python step, when every line starts ``{"id":"``, the string has no escape or
    control byte, a comma or brace follows it, and ``"id"`` is in each line once; else None.
    The key is the string with its quotes: its canonical JSON, as ``record_key`` gives. Each
    line's first bytes are copied into one row of a small array; no pass over the whole text
    but ``bytes.count``."""
    widths = (24, 64, _FAST_ID_WIDTH + 8)
    padded = np.frombuffer(text + bytes(widths[-1]), dtype=np.uint8)
    lines = np.arange(len(starts))
    for width in widths:
        rows = _rows(padded, starts, width)
        if not (rows[:, :7] == _ID_PREFIX).all():
            return None
        body = rows[:, 7 : width - 1]  # room left for the byte after the closing quote
        # The first quote, backslash or control byte after the opening quote must be a quote.
        stops = (body == ord('"')) | (body == ord("\\")) | (body < 0x20)
        first = stops.argmax(axis=1)
        if stops[lines, first].all():
            break
    else:
        return None
    closing = 7 + first
    if not (rows[lines, closing] == ord('"')).all():
        return None
    follows = rows[lines, closing + 1]
    if not ((follows == ord(",")) | (follows == ord("}"))).all():
        return None
    if text.count(b'"id"') != len(starts):
        return None
    lengths = closing - 5  # from the opening quote (column 6) to the closing one
    block = np.zeros((len(starts), _word_width(lengths)), dtype=np.uint8)
    block[:, : width - 6] = rows[:, 6 : 6 + block.shape[1]]
    return _block_hashes(_zero_past(block, lengths), lengths)


def chunk_key_hashes(records: Records) -> Any:
    """``key_hashes(chunk_keys(records))``: by numpy alone for a clean chunk whose ids are
    plain strings that come first (the regex and the per-key hashing were half of planning)."""
    if records.text is not None and len(records):
        starts = np.asarray(records.offsets) - records.offsets[0]
        if (hashes := _string_id_hashes(records.text, starts)) is not None:
            return hashes
    return key_hashes(chunk_keys(records))


def candidate_keys(raws: list[bytes | None]) -> list[bytes]:
    """``candidate_key`` of many lines with one regex pass when all have the usual layout;
    line by line otherwise."""
    if None not in raws and (keys := _keys_in_text(b"\n".join(raws), len(raws))) is not None:  # type: ignore[arg-type]
        return keys
    return [key for raw in raws if (key := candidate_key(raw)) is not None]


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
