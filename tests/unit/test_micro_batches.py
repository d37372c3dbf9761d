"""A part's inputs cut into requests by count and by bytes; an input that fits in no request
(too large alone, nested too deep) is left out as its record's error."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services import json_codec
from services.errors import Code, Stage
from services.serve.body import parse_json
from services.worker.micro_batches import MAX_INPUT_DEPTH, cut
from services.worker.serve_client import ServeClient

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=60),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@settings(max_examples=100, deadline=None)
@given(
    st.lists(values | st.integers(MAX_INPUT_DEPTH - 2, MAX_INPUT_DEPTH + 2).map(nested), max_size=40),
    st.integers(1, 12),
    st.integers(14, 2000),
)
def test_every_input_once_in_order_within_both_limits(
    inputs: list[Any], max_count: int, max_bytes: int
) -> None:
    out = cut(inputs, max_count, max_bytes)
    seen: list[int] = []
    for start, count, body in out.requests:
        assert 1 <= count <= max_count and len(body) <= max_bytes
        parse_json(body)  # Serve's own parser takes it (no 400)
        assert json.loads(body) == {"inputs": json.loads(json_codec.dumps(inputs[start : start + count]))}
        seen += range(start, start + count)
    for index, error in out.rejected:
        alone = ServeClient.encode([inputs[index]])
        if error.code == Code.TOO_LARGE:
            assert len(alone) > max_bytes
        else:
            assert error.code == Code.TOO_DEEP and json_codec.too_deep(json.loads(alone))
        seen.append(index)
    assert sorted(seen) == list(range(len(inputs)))
    starts = [start for start, _, _ in out.requests]
    assert starts == sorted(starts), "requests in input order"


def test_the_usual_part_is_cut_by_count_alone() -> None:
    inputs = [{"features": [5.1, 3.5, 1.4, 0.2]}] * 2500
    out = cut(inputs, 1000, 4 * 1024 * 1024)
    assert [(s, n) for s, n, _ in out.requests] == [(0, 1000), (1000, 1000), (2000, 500)]
    assert out.requests[0][2] == ServeClient.encode(inputs[:1000]) and not out.rejected


def test_a_large_input_alone_becomes_a_record_error_and_its_neighbours_go() -> None:
    inputs = [{"text": "a"}, {"text": "x" * 5000}, {"text": "b"}, {"text": "c"}]
    out = cut(inputs, 1000, 1024)
    assert [(s, n) for s, n, _ in out.requests] == [(0, 1), (2, 2)]
    ((index, error),) = out.rejected
    assert (index, error.stage, error.code) == (1, Stage.PARSE, Code.TOO_LARGE)
    assert "tuning.max_request_bytes (1024)" in error.message and "x" * 10 not in error.message


def test_an_input_nested_too_deep_for_serve_becomes_a_record_error() -> None:
    inputs = [{"n": 1}, nested(MAX_INPUT_DEPTH), {"deep": nested(MAX_INPUT_DEPTH)}, {"big": 2**70}]
    out = cut(inputs, 1000, 4 * 1024 * 1024)
    assert [(s, n) for s, n, _ in out.requests] == [(0, 2), (3, 1)]
    ((index, error),) = out.rejected
    assert (index, error.stage, error.code) == (2, Stage.PARSE, Code.TOO_DEEP)
    assert json.loads(out.requests[1][2]) == {"inputs": [{"big": 2**70}]}
