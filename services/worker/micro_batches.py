"""A part's model inputs cut into request bodies: at most ``max_count`` inputs and at most
``max_bytes`` bytes each, so Serve never refuses one as too large (413 would fail the shard).

The usual part is cut by count alone and each body checked once; only a body over the byte
limit is cut again, from its inputs encoded one by one. An input that alone does not fit
goes to no request: it becomes its record's error (``too_large``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services import json_codec
from services.errors import Code, RecordError, Stage

# ServeClient.encode's wrapper around the inputs: {"inputs":[a,b,...]}
_OPEN, _CLOSE, _SEP = b'{"inputs":[', b"]}", b","
_WRAPPER = len(_OPEN) + len(_CLOSE)


@dataclass
class Cut:
    """Requests as (first input's index, how many, body), in input order, and the inputs left
    out as (index, bytes of a request holding it alone)."""

    requests: list[tuple[int, int, bytes]] = field(default_factory=list)
    too_large: list[tuple[int, int]] = field(default_factory=list)


def too_large(size: int, max_bytes: int) -> RecordError:
    return RecordError(
        Stage.PARSE,
        Code.TOO_LARGE,
        f"model input too large for one request: {size} bytes as a request body, over "
        f"tuning.max_request_bytes ({max_bytes})",
    )


def cut(inputs: list[Any], max_count: int, max_bytes: int, encode: Callable[[list[Any]], bytes]) -> Cut:
    out = Cut()
    for start in range(0, len(inputs), max_count):
        chunk = inputs[start : start + max_count]
        body = encode(chunk)
        if len(body) <= max_bytes:
            out.requests.append((start, len(chunk), body))
        else:
            _cut_by_bytes(chunk, start, max_bytes, out)
    return out


def _cut_by_bytes(chunk: list[Any], start: int, max_bytes: int, out: Cut) -> None:
    """Greedy, in order: each request as full as the limit lets it be."""
    run: list[bytes] = []
    run_start, size = start, _WRAPPER

    def flush() -> None:
        if run:
            out.requests.append((run_start, len(run), _OPEN + _SEP.join(run) + _CLOSE))

    for index, value in enumerate(chunk, start):
        encoded = json_codec.dumps(value)
        alone = _WRAPPER + len(encoded)
        if alone > max_bytes:
            flush()
            out.too_large.append((index, alone))
            run, run_start, size = [], index + 1, _WRAPPER
            continue
        added = len(encoded) + (len(_SEP) if run else 0)
        if size + added > max_bytes:
            flush()
            run, run_start, size = [], index, _WRAPPER
            added = len(encoded)
        run.append(encoded)
        size += added
    flush()
