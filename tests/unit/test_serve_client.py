"""ServeClient's error mapping and backoff, against an in-process httpx transport."""

from __future__ import annotations

import time

import httpx
import pyarrow as pa
import pytest
from temporalio.exceptions import ApplicationError

from services import arrow_wire
from services.constants import ARROW_CONTENT_TYPE, ENV_SERVE_WIRE
from services.errors import Code, Failure, Stage
from services.worker.serve_client import (
    RetrySettings,
    ServeClient,
    TokenSource,
    model_error,
    retry_after_seconds,
)

SECRET = "s3cret-token-value"


def client_with(handler, attempts: int = 4) -> ServeClient:
    return ServeClient(
        "http://serve.test",
        TokenSource(SECRET),
        retry=RetrySettings(max_attempts=attempts, initial_s=0.01, max_s=0.05),
        transport=httpx.MockTransport(handler),
    )


async def test_sends_bearer_token_and_batch_form():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["auth"] = request.headers["authorization"]
        seen["path"] = request.url.path
        bad = {"code": "invalid_input", "message": "bad"}
        return httpx.Response(200, json={"predictions": [1, None], "errors": [None, bad]})

    result = await client_with(handler).predict("iris", ServeClient.encode([{"a": 1}, {"b": 2}]), 2)
    assert result == ([1, None], [None, {"code": "invalid_input", "message": "bad"}])
    assert seen == {"auth": f"Bearer {SECRET}", "path": "/models/iris/inference"}


@pytest.mark.parametrize(
    ("status", "kind"), [(401, "ServeHTTP401"), (403, "ServeHTTP403"), (404, "ServeHTTP404")]
)
async def test_client_errors_are_non_retryable_and_never_show_the_token(status, kind):
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(status, json={"detail": "nope"})

    with pytest.raises(ApplicationError) as err:
        await client_with(handler).predict(None, ServeClient.encode([1]), 1)
    assert err.value.non_retryable and err.value.type == kind
    assert str(status) in str(err.value) and SECRET not in str(err.value)
    assert len(calls) == 1


async def test_503_is_retried_honouring_retry_after_then_succeeds():
    calls = []

    def handler(request):
        calls.append(time.monotonic())
        if len(calls) < 3:
            return httpx.Response(503, headers={"Retry-After": "0.2"}, json={"detail": "overloaded"})
        return httpx.Response(200, json={"predictions": ["ok"], "errors": [None]})

    assert await client_with(handler).predict(None, ServeClient.encode([1]), 1) == (["ok"], [None])
    assert len(calls) == 3
    assert calls[1] - calls[0] >= 0.19 and calls[2] - calls[1] >= 0.19


async def test_connection_errors_give_up_with_a_retryable_error():
    def handler(request):
        raise httpx.ConnectError("refused")

    with pytest.raises(ApplicationError) as err:
        await client_with(handler, attempts=3).predict(None, ServeClient.encode([1]), 1)
    assert not err.value.non_retryable and err.value.type == "ServeUnavailable"
    assert "gave up after 3 attempts" in str(err.value)


def test_retry_after_parsing():
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("garbage") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


def test_token_file_is_reread_when_rotated(tmp_path):
    path = tmp_path / "token"
    path.write_text("old\n")
    source = TokenSource(token_file=str(path))
    assert source.get() == "old"
    path.write_text("new\n")
    import os

    os.utime(path, (time.time() + 5, time.time() + 5))
    assert source.get() == "new"


def test_a_model_error_keeps_its_code_and_an_unknown_one_is_other():
    known = model_error({"code": "invalid_input", "message": "expected 4 numbers"})
    assert (known.stage, known.code, known.message) == (Stage.MODEL, Code.INVALID_INPUT, "expected 4 numbers")
    assert model_error({"code": "from_a_newer_serve", "message": "x"}).code == Code.OTHER
    assert model_error("a bare string").code == Code.OTHER


async def test_arrow_bodies_go_with_their_content_type_and_a_bad_reply_is_a_protocol_error():
    seen = []
    good = arrow_wire.encode(
        arrow_wire.results(pa.array([7]), pa.nulls(1, pa.string()), pa.nulls(1, pa.string()))
    )

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["content-type"])
        if len(seen) == 1:
            return httpx.Response(200, content=good)
        if len(seen) == 2:
            return httpx.Response(200, content=b"not arrow")
        return httpx.Response(415, json={"detail": "model 'iris' takes no Arrow body"})

    body = arrow_wire.encode(pa.table({"x": [1.0]}))
    reply = await client_with(handler).predict_arrow("iris", body, 1)
    assert reply.column(arrow_wire.PREDICTION).to_pylist() == [7] and seen == [ARROW_CONTENT_TYPE]
    with pytest.raises(ApplicationError) as err:
        await client_with(handler).predict_arrow("iris", body, 1)
    assert err.value.type == Failure.SERVE_PROTOCOL_ERROR
    with pytest.raises(ApplicationError) as err:
        await client_with(handler).predict_arrow("iris", body, 1)
    assert err.value.non_retryable and err.value.type == "ServeHTTP415" and ENV_SERVE_WIRE in str(err.value)
