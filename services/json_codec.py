"""JSON on the hot path: orjson where it gives the same values as the standard library.

Parsing and encoding records is much of the worker's CPU, and orjson does it several times
faster than ``json``. It differs from ``json`` in three corners, handled here so that no value
changes silently:

- integers past 64 bits: orjson reads them as floats (precision lost) and cannot write them, so
  text with a 19-digit run is read, and such a value written, by ``json`` instead;
- ``NaN``/``Infinity`` (not JSON, RFC 8259) and lone surrogates: orjson refuses them; ``loads``
  falls back to ``json``, which accepts them; ``loads_strict`` refuses NaN/Infinity (a record
  with them is a bad record, since the model and the outputs could not carry them as JSON), and
  numbers out of a float's range (``1e400``), which ``json`` would read as infinity;
- encoding ``NaN`` gives ``null``; a lone surrogate is written escaped, as ``json`` does.

Nesting: ``json`` raises ``RecursionError`` on a few thousand levels; ``loads_strict`` turns that
into ``JSONDecodeError``, and ``too_deep`` tells whether a parsed value nests past ``MAX_DEPTH``
(past about a thousand levels pickling it between Ray's actors fails).
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any

import orjson

JSONDecodeError = json.JSONDecodeError  # orjson's error subclasses it
# Most levels of arrays/objects a request body may nest (Serve refuses deeper ones with 400).
# At least orjson's own encoding limit (254), so a value orjson encodes is never too deep.
MAX_DEPTH = 256
# 19 digits in a row may be an integer past orjson's 64 bits: digits mapped to "0", then one
# substring search (cheaper than a regex on every record).
_DIGITS = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19


def _long_number(data: bytes) -> bool:
    return _LONG_NUMBER in data.translate(_DIGITS)


def loads(data: bytes) -> Any:  # raises JSONDecodeError, or UnicodeDecodeError if not UTF-8
    """``json.loads`` semantics, orjson speed for everything but long numbers and non-JSON."""
    if not _long_number(data):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # json gives the familiar error message, or accepts NaN/Infinity
    return json.loads(data.decode("utf-8"))  # UTF-8 only, as orjson (json would guess UTF-16/32)


def loads_strict(data: bytes) -> Any:
    """Like ``loads`` but ``NaN``/``Infinity`` (not JSON) raise ``JSONDecodeError`` too."""
    if not _long_number(data):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NotJSON as exc:
        raise JSONDecodeError(f"{exc} is not a JSON value", "", 0) from None
    except _OutOfRange as exc:
        raise JSONDecodeError(f"number {exc} is out of a float's range", "", 0) from None
    except RecursionError:
        raise JSONDecodeError("nested too deeply", "", 0) from None


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value`` nests arrays/objects more than ``limit`` levels (a scalar: 0 levels).
    orjson encodes at C speed and refuses past its own limit, below ``limit``: only values it
    refuses (deep ones, and integers past 64 bits or lone surrogates) are walked here."""
    if limit >= 254:
        try:
            orjson.dumps(value)
            return False
        except TypeError:
            pass
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if type(node) is dict:
            children: Any = node.values()
        elif type(node) is list:
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if type(child) in (dict, list))
    return False


def loads_lines_strict(lines: list[bytes]) -> list[Any] | None:
    """``loads_strict`` of each line, or None if any line needs the careful path (a long number,
    NaN/Infinity, malformed): the caller then goes line by line, for each line's own result.
    One long-number check and no Python frame per line: this is the worker's hottest loop."""
    if _long_number(b"\n".join(lines)):
        return None
    try:
        return list(map(orjson.loads, lines))
    except orjson.JSONDecodeError:
        return None


class _NotJSON(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotJSON(name)


class _OutOfRange(ValueError):
    pass


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _OutOfRange(text[:40])
    return value


def dumps_fast(value: Any) -> bytes | None:
    """``dumps(value)`` by orjson alone, or None where ``dumps`` would need ``json``: an integer
    past 64 bits, a lone surrogate, or nesting past orjson's limit (254 levels)."""
    try:
        return bytes(memoryview(orjson.dumps(value)))
    except TypeError:
        return None


def dumps(value: Any, newline: bool = False) -> bytes:
    """Compact UTF-8 JSON (non-ASCII kept as is), optionally with a trailing newline.

    Copied out of orjson's buffer, which is never shrunk to fit (4 KiB for a short line, 254 KiB
    for a 35 KiB request body): what a shard holds while its requests are out is its peak
    memory, and the copy costs a few microseconds per request."""
    try:
        return bytes(memoryview(orjson.dumps(value, option=orjson.OPT_APPEND_NEWLINE if newline else 0)))
    except TypeError:  # an integer past 64 bits or a lone surrogate: json writes both
        text = json.dumps(value, separators=(",", ":"))
        return text.encode() + (b"\n" if newline else b"")


_dumps_line = functools.partial(orjson.dumps, option=orjson.OPT_APPEND_NEWLINE)


def dumps_jsonl(values: list[Any]) -> bytes:
    """JSON Lines text of ``values``: ``dumps(value, newline=True)`` of each, joined. One bytes
    object, not one per value: orjson gives every result a buffer of at least 4 KiB, so lines
    held as their own objects take twenty times their size; joined 32 at a time, the same few
    buffers are reused."""
    try:
        return b"".join([b"".join(map(_dumps_line, values[i : i + 32])) for i in range(0, len(values), 32)])
    except TypeError:
        return b"".join(dumps(value, newline=True) for value in values)
