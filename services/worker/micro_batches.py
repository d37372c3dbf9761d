"""A part's model inputs cut into JSON request bodies (``{"inputs": [...]}``, as
``ServeClient.encode`` writes them) that Serve accepts: at most ``max_count`` inputs and
``max_bytes`` bytes each, nested no deeper than its limit (a refused body would fail the shard).

The usual part is encoded by orjson a count-sized chunk at a time and each body checked once.
Only a chunk orjson cannot encode (an integer past 64 bits, a lone surrogate, nesting past 254
levels) or over the byte limit is cut again, from its inputs encoded one by one. An input that
cannot go in any request (too large alone, too deep) goes to none: it becomes its record's error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services import json_codec
from services.errors import Code, RecordError, Stage

_OPEN, _CLOSE, _SEP = b'{"inputs":[', b"]}", b","
_WRAPPER = len(_OPEN) + len(_CLOSE)
# An input's own levels: the body wraps it in two more (an object and a list).
MAX_INPUT_DEPTH = json_codec.MAX_DEPTH - 2


@dataclass
class Cut:
    """Requests as (first input's index, how many, body), in input order, and the inputs left
    out as (index, why)."""

    requests: list[tuple[int, int, bytes]] = field(default_factory=list)
    rejected: list[tuple[int, RecordError]] = field(default_factory=list)


def too_large(size: int, max_bytes: int) -> RecordError:
    return RecordError(
        Stage.PARSE,
        Code.TOO_LARGE,
        f"model input too large for one request: {size} bytes as a request body, over "
        f"tuning.max_request_bytes ({max_bytes})",
    )


def too_deep() -> RecordError:
    return RecordError(
        Stage.PARSE,
        Code.TOO_DEEP,
        f"model input nests arrays/objects deeper than {MAX_INPUT_DEPTH} levels (Serve refuses it)",
    )


def cut(inputs: list[Any], max_count: int, max_bytes: int) -> Cut:
    out = Cut()
    for start in range(0, len(inputs), max_count):
        chunk = inputs[start : start + max_count]
        body = json_codec.dumps_fast({"inputs": chunk})
        if body is not None and len(body) <= max_bytes:
            out.requests.append((start, len(chunk), body))
        else:
            _cut_one_by_one(chunk, start, max_bytes, out)
    return out


def _cut_one_by_one(chunk: list[Any], start: int, max_bytes: int, out: Cut) -> None:
    """Greedy, in order: each request as full as the limit lets it be."""
    run: list[bytes] = []
    run_start, size = start, _WRAPPER

    def flush() -> None:
        if run:
            out.requests.append((run_start, len(run), _OPEN + _SEP.join(run) + _CLOSE))

    for index, value in enumerate(chunk, start):
        encoded = json_codec.dumps_fast(value)
        error = None
        if encoded is None:
            if json_codec.too_deep(value, MAX_INPUT_DEPTH):
                error = too_deep()
            else:
                encoded = json_codec.dumps(value)
        if encoded is not None and _WRAPPER + len(encoded) > max_bytes:
            error = too_large(_WRAPPER + len(encoded), max_bytes)
        if error is not None:
            flush()
            out.rejected.append((index, error))
            run, run_start, size = [], index + 1, _WRAPPER
            continue
        assert encoded is not None
        added = len(encoded) + (len(_SEP) if run else 0)
        if size + added > max_bytes:
            flush()
            run, run_start, size = [], index, _WRAPPER
            added = len(encoded)
        run.append(encoded)
        size += added
    flush()
