"""The Serve ingress's body helpers: a byte limit checked before and while reading, strict JSON."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.requests import Request

from services import json_codec
from services.errors import RequestCode
from services.serve.body import BodyRefused, parse_json, read_body


def request(chunks: list[bytes], headers: dict[str, str], read: list[int]) -> Request:
    """A Starlette request whose body arrives in ``chunks``; ``read`` counts those handed out."""
    messages: Iterator[bytes] = iter(chunks)

    async def receive() -> dict:
        chunk = next(messages, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        read.append(len(chunk))
        return {"type": "http.request", "body": chunk, "more_body": True}

    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw}, receive)


async def test_content_length_over_the_limit_refused_before_reading() -> None:
    read: list[int] = []
    with pytest.raises(BodyRefused) as exc:
        await read_body(request([b"x" * 100], {"content-length": "101"}, read), limit=100)
    assert (exc.value.status, exc.value.code, read) == (413, RequestCode.BODY_TOO_LARGE, [])


async def test_a_streamed_body_stops_at_the_chunk_passing_the_limit() -> None:
    read: list[int] = []
    with pytest.raises(BodyRefused) as exc:
        await read_body(request([b"x" * 40] * 10, {}, read), limit=100)
    assert (exc.value.status, exc.value.code, read) == (413, RequestCode.BODY_TOO_LARGE, [40, 40, 40])


async def test_a_body_at_the_limit_is_read_whole() -> None:
    assert await read_body(request([b"x" * 50, b"y" * 50], {"content-length": "100"}, []), 100) == (
        b"x" * 50 + b"y" * 50
    )


@pytest.mark.parametrize("declared", ["-1", "ten", "1e3", ""])
async def test_a_content_length_that_is_no_number_is_400(declared: str) -> None:
    with pytest.raises(BodyRefused) as exc:
        await read_body(request([b"{}"], {"content-length": declared}, []), 100)
    assert (exc.value.status, exc.value.code) == (400, RequestCode.BAD_CONTENT_LENGTH)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"[" * 100_000 + b"]" * 100_000, RequestCode.MALFORMED_JSON),
        (b"[" * (json_codec.MAX_DEPTH + 1) + b"]" * (json_codec.MAX_DEPTH + 1), RequestCode.MALFORMED_JSON),
        (b'{"inputs": [NaN]}', RequestCode.MALFORMED_JSON),
        (b'{"inputs": [Infinity, -Infinity]}', RequestCode.MALFORMED_JSON),
        (b'{"inputs": [1e999999]}', RequestCode.MALFORMED_JSON),  # json would read infinity
        (b'{"inputs": [-1e400, 12345678901234567890123]}', RequestCode.MALFORMED_JSON),
        (b'"\xff"', RequestCode.NOT_UTF8),
        (b"{not json", RequestCode.MALFORMED_JSON),
        (b"", RequestCode.MALFORMED_JSON),
    ],
)
def test_parse_json_refuses_what_is_not_json(body: bytes, code: RequestCode | None) -> None:
    if code is None:
        parse_json(body)
        return
    with pytest.raises(BodyRefused) as exc:
        parse_json(body)
    assert (exc.value.status, exc.value.code) == (400, code)


def test_parse_json_keeps_values() -> None:
    assert parse_json(b'{"inputs": [1, 2.5, "x", null, {"a": [true]}], "n": 123456789012345678901}') == {
        "inputs": [1, 2.5, "x", None, {"a": [True]}],
        "n": 123456789012345678901,
    }
