"""Serve's bearer-token check on every route, and a token rotation under a running batch.

Against the session's real local Ray Serve (auth on). The rotation edits the session's token
file (Serve re-reads it within about a second) and puts it back afterwards.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from services import constants as c
from services.serve.app import api
from services.worker.contracts import BatchInferenceInput, Tuning
from tests.helpers.batches import assert_exactly_once, start_batch
from tests.helpers.records import echo_records, write_jsonl
from tests.helpers.waiting import wait_until
from tests.helpers.workers import Attempts, worker_on

pytestmark = pytest.mark.integration

BAD_HEADERS = [
    (None, 401),
    ("", 401),
    ("Bearer", 401),
    ("Basic dXNlcjpwYXNz", 401),
    ("bearer-token-without-scheme", 401),
    ("Bearer wrong-token", 403),
    ("Bearer wrong-token extra", 403),
]


def app_routes() -> list[tuple[str, str]]:
    """(method, path) of every route the Serve ingress declares, path parameters filled in."""

    def walk(routes):
        for route in routes:
            if hasattr(route, "original_router"):  # what @serve.ingress wraps the app's routes in
                yield from walk(route.original_router.routes)
            else:
                yield route

    found = []
    for route in walk(api.routes):
        for method in sorted(route.methods - {"HEAD"}):
            found.append((method, route.path.replace("{model}", "iris")))
    return found


def test_the_route_list_is_what_the_app_serves():
    routes = app_routes()
    assert ("GET", c.HEALTH_ROUTE) in routes and ("POST", "/models/iris/inference") in routes
    assert len(routes) >= 4


@pytest.mark.parametrize(("header", "status"), BAD_HEADERS)
def test_every_route_but_health_rejects_missing_malformed_and_wrong_tokens(
    serve_stack, serve_token, header, status
):
    checked = 0
    for method, path in app_routes():
        if path == c.HEALTH_ROUTE:
            continue
        headers = {c.AUTH_HEADER: header} if header is not None else {}
        response = httpx.request(
            method,
            serve_stack.url + path,
            headers=headers,
            json={"inputs": [[5.1, 3.5, 1.4, 0.2]]},
            timeout=30,
        )
        assert response.status_code == status, (method, path, response.status_code, response.text[:200])
        assert serve_token not in response.text and "wrong-token" not in response.text
        checked += 1
    assert checked >= 3


def test_health_is_the_only_open_route_and_no_api_description_is_served(serve_stack):
    assert httpx.get(serve_stack.url + c.HEALTH_ROUTE, timeout=10).status_code == 200
    for path in ("/openapi.json", "/docs", "/redoc"):
        response = httpx.get(serve_stack.url + path, timeout=10)
        assert response.status_code in (401, 403, 404), (path, response.status_code)
        assert "/models/{model}/inference" not in response.text


def replace_atomically(path: Path, text: str) -> None:
    """Write like a Kubernetes Secret update: readers see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}")
    tmp.write_text(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def status_with(stack, token: str) -> int:
    return httpx.get(
        stack.url + c.MODELS_ROUTE, headers={c.AUTH_HEADER: f"Bearer {token}"}, timeout=10
    ).status_code


async def wait_status(stack, token: str, status: int) -> None:
    await wait_until(lambda: status_with(stack, token) == status, 20, f"Serve answering {status}", every=0.3)


async def test_token_rotation_under_a_running_batch_fails_no_request(
    client, serve_stack, serve_token_file, serve_token, tmp_path
):
    """Old token only -> old and new valid together -> workers move to the new one -> old removed,
    while a batch runs: every request succeeds, and afterwards the old token is refused."""
    old, new = serve_token, secrets.token_urlsafe(32)
    worker_token = tmp_path / "worker-token"
    replace_atomically(worker_token, old + "\n")
    total = 4_000
    records = echo_records(total, prefix="rot")
    source = write_jsonl(tmp_path / "in.jsonl", records)
    output = tmp_path / "out"
    tuning = Tuning(
        shard_size=1_000, checkpoint_every=100, micro_batch_size=4, max_in_flight=2, max_concurrent_shards=2
    )
    batch = BatchInferenceInput(input_uri=str(source), output_uri=str(output), model="echo", tuning=tuning)
    attempts = Attempts()
    try:
        async with worker_on(client, serve_stack.url, worker_token, attempts) as queue:
            handle = await start_batch(client, queue, batch, "rotate")
            await wait_until(lambda: attempts.count("200") >= 50, 300, "the batch under way")
            replace_atomically(serve_token_file, f"{old}\n{new}\n")  # 1. both valid
            await wait_status(serve_stack, new, 200)
            at_switch = attempts.count("200")
            replace_atomically(worker_token, new + "\n")  # 2. workers send the new one
            await asyncio.sleep(1.5)
            replace_atomically(serve_token_file, f"{new}\n")  # 3. old one removed
            await wait_status(serve_stack, old, 403)
            at_removal = attempts.count("200")
            result = await handle.result()
        outcomes = Counter(o for _, o in attempts.log)
        print(
            f"\nrotation: {at_switch} requests before the switch, {at_removal - at_switch} between switch "
            f"and removal, {outcomes['200'] - at_removal} after; outcomes {dict(outcomes)}"
        )
        assert set(outcomes) == {"200"}, "no request failed during the rotation"
        assert at_switch > 0 and outcomes["200"] > at_removal, "the batch ran across the whole rotation"
        assert_exactly_once(output, [r["id"] for r in records], result)
        assert status_with(serve_stack, new) == 200
    finally:
        replace_atomically(serve_token_file, f"{old}\n")
        await wait_status(serve_stack, old, 200)
