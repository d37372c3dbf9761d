"""The Serve app deployed from the shared Serve config on a real local Ray, auth on."""

from __future__ import annotations

import json

import httpx
import pytest

from services import constants as c
from services import json_codec
from services.errors import RequestCode
from tests.helpers.raw_http import post_chunked_unfinished, post_declaring
from tests.helpers.serve_config import serve_app_args

pytestmark = pytest.mark.integration


def post(stack, path, token, body):
    headers = {c.AUTH_HEADER: f"{c.AUTH_SCHEME} {token}"} if token is not None else {}
    return httpx.post(stack.url + path, json=body, headers=headers, timeout=30)


def post_with_header(stack, path, header, body):
    headers = {c.AUTH_HEADER: header} if header is not None else {}
    return httpx.post(stack.url + path, json=body, headers=headers, timeout=30)


def test_health_is_open(serve_stack):
    assert httpx.get(serve_stack.url + c.HEALTH_ROUTE, timeout=10).json() == {"status": "ok"}


def test_original_example_shape(serve_stack, serve_token):
    response = post(serve_stack, c.INFERENCE_ROUTE, serve_token, {"text": "hello"})
    assert response.status_code == 200
    assert response.json() == {"prediction": {"text": "hello"}}


@pytest.mark.parametrize(
    ("header", "status"),
    [(None, 401), ("Bearer", 401), ("Basic dXNlcjpwYXNz", 401), ("Bearer wrong-token", 403)],
)
@pytest.mark.parametrize("path", [c.INFERENCE_ROUTE, "/models/iris/inference"])
def test_missing_malformed_and_wrong_tokens_are_rejected(serve_stack, serve_token, header, status, path):
    response = post_with_header(serve_stack, path, header, {"inputs": [[5.1, 3.5, 1.4, 0.2]]})
    assert response.status_code == status
    assert serve_token not in response.text
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_models_route_needs_a_token(serve_stack, serve_token):
    assert httpx.get(serve_stack.url + c.MODELS_ROUTE, timeout=10).status_code == 401
    listed = httpx.get(
        serve_stack.url + c.MODELS_ROUTE, headers={c.AUTH_HEADER: f"Bearer {serve_token}"}, timeout=10
    )
    assert listed.json() == {
        "models": ["echo", "iris"],
        "default": "echo",
        "columnar": ["iris"],
        "max_arrow_rows": serve_app_args().max_arrow_rows_per_request,
    }


def test_real_model_batch_with_a_bad_record(serve_stack, serve_token):
    response = post(
        serve_stack,
        "/models/iris/inference",
        serve_token,
        {"inputs": [[5.1, 3.5, 1.4, 0.2], {"features": [6.7, 3.0, 5.2, 2.3]}, {"features": ["x", 1, 2, 3]}]},
    )
    assert response.status_code == 200
    body = response.json()
    assert [p and p["label"] for p in body["predictions"]] == ["setosa", "virginica", None]
    assert body["errors"][:2] == [None, None] and "not a number" in body["errors"][2]["message"]
    assert body["errors"][2]["code"] == "invalid_input"


def test_unknown_model_and_bad_json(serve_stack, serve_token):
    response = post(serve_stack, "/models/nope/inference", serve_token, {"inputs": [1]})
    assert response.status_code == 404 and "available: echo, iris" in response.json()["detail"]
    bad = httpx.post(
        serve_stack.url + c.INFERENCE_ROUTE,
        content=b"{not json",
        headers={c.AUTH_HEADER: f"Bearer {serve_token}"},
        timeout=10,
    )
    assert bad.status_code == 400


def test_single_invalid_record_gets_422(serve_stack, serve_token):
    response = post(serve_stack, "/models/iris/inference", serve_token, {"features": [1, 2]})
    assert response.status_code == 422 and "4 numeric features" in response.json()["detail"]


# --- Hardened edges: body size, bodies that cannot be parsed -------------------------------------

LIMIT = serve_app_args().max_request_bytes


def refused(response, status: int, code: RequestCode) -> str:
    """The ingress's error shape: ``detail`` for people, a typed ``code``; returns the detail."""
    assert response.status_code == status, response.text
    assert response.json()["code"] == code.value
    return response.json()["detail"]


def test_a_body_declared_over_the_limit_gets_413_before_it_is_sent(serve_stack, serve_token):
    """Only the headers and 1 KiB of the declared body go out: an ingress reading the body whole
    before deciding would wait for the rest (and this would time out)."""
    auth = {c.AUTH_HEADER: f"Bearer {serve_token}", "Content-Type": "application/json"}
    answer = post_declaring(
        serve_stack.url, c.INFERENCE_ROUTE, auth, LIMIT + 1, b'{"inputs": [' + b" " * 1024
    )
    detail = refused(answer, 413, RequestCode.BODY_TOO_LARGE)
    assert str(LIMIT) in detail and "max_request_bytes" in detail
    assert serve_token.encode() not in answer.body


def test_a_streamed_body_passing_the_limit_gets_413_while_it_is_read(serve_stack, serve_token):
    """A chunked body (no Content-Length) that passes the limit and never ends: answered 413
    at once; an ingress reading the body whole before deciding would wait forever."""
    auth = {c.AUTH_HEADER: f"Bearer {serve_token}", "Content-Type": "application/json"}
    chunk = b" " * (256 * 1024)  # whitespace: valid JSON padding, were it ever parsed
    answer = post_chunked_unfinished(serve_stack.url, c.INFERENCE_ROUTE, auth, chunk, LIMIT // len(chunk) + 2)
    refused(answer, 413, RequestCode.BODY_TOO_LARGE)


def test_a_body_just_under_the_limit_is_served(serve_stack, serve_token):
    record = {"text": "x" * 1000}
    count = 1000
    body = json.dumps({"inputs": [record] * count}).encode()
    assert len(body) < LIMIT
    response = httpx.post(
        serve_stack.url + c.INFERENCE_ROUTE,
        content=body,
        headers={c.AUTH_HEADER: f"Bearer {serve_token}", "Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 200 and response.json()["predictions"] == [record] * count


@pytest.mark.parametrize(
    ("body", "code", "says"),
    [
        (b"[" * 100_000 + b"]" * 100_000, RequestCode.MALFORMED_JSON, "not valid JSON"),  # RecursionError
        (b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", RequestCode.MALFORMED_JSON, "not valid JSON"),
        (b'{"inputs": ' + b"[" * 600 + b"]" * 600 + b"}", RequestCode.MALFORMED_JSON, "deeper than"),
        (b'{"inputs": [{"text": "caf\xe9"}]}', RequestCode.NOT_UTF8, "not UTF-8"),
        (b"\xff\xfe{}", RequestCode.NOT_UTF8, "not UTF-8"),
        (b'{"inputs": [NaN]}', RequestCode.MALFORMED_JSON, "NaN is not a JSON value"),
        (b'{"inputs": [Infinity]}', RequestCode.MALFORMED_JSON, "Infinity is not a JSON value"),
        (b'{"inputs": [1, -Infinity]}', RequestCode.MALFORMED_JSON, "-Infinity is not a JSON value"),
        (b'{"x": NaN}', RequestCode.MALFORMED_JSON, "NaN is not a JSON value"),
        (b'{"inputs": [1e400]}', RequestCode.MALFORMED_JSON, "out of a float's range"),
        (b"", RequestCode.MALFORMED_JSON, "not valid JSON"),
    ],
)
@pytest.mark.parametrize("path", [c.INFERENCE_ROUTE, "/models/iris/inference"])
def test_bodies_that_cannot_be_parsed_get_400(serve_stack, serve_token, body, code, says, path):
    response = httpx.post(
        serve_stack.url + path,
        content=body,
        headers={c.AUTH_HEADER: f"Bearer {serve_token}", "Content-Type": "application/json"},
        timeout=60,
    )
    assert says in refused(response, 400, code)
    assert httpx.get(serve_stack.url + c.HEALTH_ROUTE, timeout=10).status_code == 200


def test_nesting_up_to_the_limit_is_served(serve_stack, serve_token):
    deep = json_codec.loads(b"[" * (json_codec.MAX_DEPTH - 2) + b"]" * (json_codec.MAX_DEPTH - 2))
    response = post(serve_stack, c.INFERENCE_ROUTE, serve_token, {"inputs": [deep]})
    assert response.status_code == 200 and response.json()["predictions"] == [deep]


def test_too_many_inputs_and_unknown_model_carry_codes(serve_stack, serve_token):
    too_many = post(serve_stack, c.INFERENCE_ROUTE, serve_token, {"inputs": [1] * 1025})
    refused(too_many, 413, RequestCode.TOO_MANY_INPUTS)
    unknown = post(serve_stack, "/models/nope/inference", serve_token, {"inputs": [1]})
    refused(unknown, 404, RequestCode.UNKNOWN_MODEL)
