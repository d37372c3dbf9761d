"""A part's inputs cut into requests by count and by bytes; an input too large alone is left out."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services import json_codec
from services.errors import Code, Stage
from services.worker.micro_batches import cut, too_large
from services.worker.serve_client import ServeClient

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=60),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None)
@given(st.lists(values, max_size=40), st.integers(1, 12), st.integers(14, 400))
def test_every_input_once_in_order_within_both_limits(
    inputs: list[Any], max_count: int, max_bytes: int
) -> None:
    out = cut(inputs, max_count, max_bytes, ServeClient.encode)
    seen: list[int] = []
    for start, count, body in out.requests:
        assert 1 <= count <= max_count and len(body) <= max_bytes
        assert json.loads(body) == {"inputs": json.loads(json_codec.dumps(inputs[start : start + count]))}
        seen += range(start, start + count)
    for index, size in out.too_large:
        assert size == len(ServeClient.encode([inputs[index]])) > max_bytes
        seen.append(index)
    assert sorted(seen) == list(range(len(inputs)))
    starts = [start for start, _, _ in out.requests]
    assert starts == sorted(starts), "requests in input order"


def test_the_usual_part_is_cut_by_count_alone() -> None:
    inputs = [{"features": [5.1, 3.5, 1.4, 0.2]}] * 2500
    out = cut(inputs, 1000, 4 * 1024 * 1024, ServeClient.encode)
    assert [(s, n) for s, n, _ in out.requests] == [(0, 1000), (1000, 1000), (2000, 500)]
    assert out.requests[0][2] == ServeClient.encode(inputs[:1000]) and not out.too_large


def test_a_large_input_alone_becomes_a_record_error_and_its_neighbours_go() -> None:
    inputs = [{"text": "a"}, {"text": "x" * 5000}, {"text": "b"}, {"text": "c"}]
    out = cut(inputs, 1000, 1024, ServeClient.encode)
    assert [(s, n) for s, n, _ in out.requests] == [(0, 1), (2, 2)]
    ((index, size),) = out.too_large
    assert index == 1 and size > 1024
    error = too_large(size, 1024)
    assert (error.stage, error.code) == (Stage.PARSE, Code.TOO_LARGE)
    assert "tuning.max_request_bytes (1024)" in error.message and "x" * 10 not in error.message
