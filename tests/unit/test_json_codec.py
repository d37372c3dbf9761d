"""json_codec gives the standard library's values in every corner where orjson differs."""

import json
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from services import json_codec


@pytest.mark.parametrize(
    "text",
    [
        b'{"id":"r1","input":{"text":"caf\xc3\xa9 \xe2\x9c\x93","n":-3,"f":0.1,"l":[true,null]}}',
        b'{"big":123456789012345678901234567890,"neg":-9223372036854775809}',
        b'{"u64":18446744073709551615,"i64":-9223372036854775808}',
        b'{"x":1e400}',
        b'"\\ud800"',
        b"[]",
    ],
)
def test_loads_matches_json(text: bytes) -> None:
    assert json_codec.loads(text) == json.loads(text.decode())
    assert repr(json_codec.loads(text)) == repr(json.loads(text.decode()))


def test_long_integers_keep_every_digit() -> None:
    value = json_codec.loads(b'{"n":123456789012345678901234567890}')["n"]
    assert value == 123456789012345678901234567890 and isinstance(value, int)
    assert json_codec.dumps({"n": value}) == b'{"n":123456789012345678901234567890}'


def test_nan_is_accepted_by_loads_refused_by_loads_strict() -> None:
    assert json_codec.loads(b'{"x":NaN}')["x"] != json_codec.loads(b'{"x":NaN}')["x"]
    with pytest.raises(json_codec.JSONDecodeError, match="NaN is not a JSON value"):
        json_codec.loads_strict(b'{"x":NaN}')
    with pytest.raises(json_codec.JSONDecodeError, match="Infinity is not a JSON value"):
        json_codec.loads_strict(b'{"x":1234567890123456789012,"y":-Infinity}')


def test_malformed_json_keeps_the_standard_message() -> None:
    with pytest.raises(json_codec.JSONDecodeError) as err:
        json_codec.loads_strict(b'{"id": 1, x}')
    assert err.value.msg == "Expecting property name enclosed in double quotes" and err.value.colno == 11


def test_utf8_only() -> None:
    with pytest.raises(UnicodeDecodeError):
        json_codec.loads(b'{"id":"\xff"}')
    with pytest.raises(UnicodeDecodeError):
        json_codec.loads('{"id":1}'.encode("utf-16"))  # json alone would guess UTF-16


def test_dumps_is_compact_utf8_and_round_trips() -> None:
    value = {"id": "r1", "prediction": {"label": "café", "p": [0.1, 1e-7, 3], "ok": True, "none": None}}
    encoded = json_codec.dumps(value, newline=True)
    assert encoded.endswith(b"\n") and b" " not in encoded.replace(b"caf", b"")
    assert "café".encode() in encoded
    assert json.loads(encoded) == value
    assert json_codec.dumps("\ud800") == b'"\\ud800"'  # a lone surrogate, escaped like json


def test_loads_lines_strict_declines_what_loads_strict_treats_specially() -> None:
    assert json_codec.loads_lines_strict([b'{"a":1}\n', b"[2]"]) == [{"a": 1}, [2]]
    for special in (b'{"x":NaN}', b'{"n":1234567890123456789012}', b'"\\ud800"', b"{x}"):
        assert json_codec.loads_lines_strict([b'{"a":1}\n', special]) is None


@pytest.mark.parametrize("count", [0, 1, 31, 32, 33, 100])
def test_dumps_jsonl_equals_dumps_per_value_joined(count: int) -> None:
    values = [{"a": i, "s": "é"} for i in range(count)]
    assert json_codec.dumps_jsonl(values) == b"".join(json_codec.dumps(v, newline=True) for v in values)


def test_dumps_jsonl_writes_what_orjson_cannot_as_json_does() -> None:
    values = [{"a": 1}, "\ud800", 123456789012345678901234567890, float("nan")]
    assert json_codec.dumps_jsonl(values) == b"".join(json_codec.dumps(v, newline=True) for v in values)


def held_by(encode: Callable[[], bytes]) -> tuple[bytes, int]:
    """What ``encode`` returns and the bytes Python still holds for it (its buffer included)."""
    tracemalloc.start()
    try:
        text = encode()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return text, held


def test_dumps_jsonl_holds_no_more_than_its_text() -> None:
    """A part's results stay in memory until committed: as one object sized to its text, not
    one orjson buffer of 4 KiB per line (which made a worker's peak RSS follow the batch)."""
    values = [{"id": i, "prediction": {"label": "setosa", "p": [0.1, 0.2, 0.7]}} for i in range(2000)]
    text, held = held_by(lambda: json_codec.dumps_jsonl(values))
    assert held < 2 * len(text)


@pytest.mark.parametrize("value", [{"id": 1}, {"inputs": [[5.1, 3.5, 1.4, 0.2]] * 1000}])
def test_dumps_holds_no_more_than_its_text(value: Any) -> None:
    """A request body waits in memory for its reply: sized to fit, not orjson's grown buffer."""
    text, held = held_by(lambda: json_codec.dumps(value))
    assert held < 2 * len(text) + 200


@pytest.mark.parametrize(
    "text", [b"1e400", b'{"x":[-1e999999]}', b'{"n":123456789012345678901234,"x":1e309}']
)
def test_numbers_past_a_floats_range_are_refused_by_loads_strict(text: bytes) -> None:
    with pytest.raises(json_codec.JSONDecodeError, match="out of a float's range"):
        json_codec.loads_strict(text)
    assert json_codec.loads_strict(b"[1e308, -1e308, 5e-324]") == [1e308, -1e308, 5e-324]


def test_deep_nesting_is_a_decode_error_not_a_recursion_error() -> None:
    with pytest.raises(json_codec.JSONDecodeError, match="nested too deeply"):
        json_codec.loads_strict(b"[" * 100_000 + b"]" * 100_000)


@pytest.mark.parametrize("depth", [1, 3, 253, 254, 255, 256, 257, 300, 1000])
def test_too_deep_counts_levels_of_arrays_and_objects(depth: int) -> None:
    value: Any = 1
    for level in range(depth):
        value = [value] if level % 2 else {"k": value, "n": 2**70}  # past 64 bits: the walked path
    assert json_codec.too_deep(value) == (depth > json_codec.MAX_DEPTH)
    assert json_codec.too_deep(value, depth) is False and json_codec.too_deep(value, depth - 1) is True
    lists = json_codec.loads(b"[" * depth + b"]" * depth)  # orjson encodes these: the fast path
    assert json_codec.too_deep(lists) == (depth > json_codec.MAX_DEPTH)
