"""The Serve app deployed from the shared Serve config on a real local Ray, auth on."""

from __future__ import annotations

import httpx
import pytest

from services import constants as c

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
    assert listed.json() == {"models": ["echo", "iris"], "default": "echo"}


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
