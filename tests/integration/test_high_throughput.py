"""Ray Serve's high-throughput mode (HAProxy ingress) on a real local Ray: the same app, the
same auth, a whole batch through it. Its own cluster beside the session's, on its own ports."""

from __future__ import annotations

import uuid

import httpx
import pytest

from services import constants as c
from services.local.ray_serve import LocalRayServe
from services.worker.config import WorkerSettings
from services.worker.contracts import BatchInferenceInput
from services.worker.serve_client import ServeClient, TokenSource
from services.worker.worker import build_worker
from tests.helpers.batches import execute_batch
from tests.helpers.records import iris_records, read_outputs, write_jsonl

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fast_serve(tmp_path_factory, serve_token_file):
    stack = LocalRayServe.on_free_ports(tmp_path_factory.mktemp("ht"), serve_token_file, high_throughput=True)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def test_haproxy_is_the_ingress_and_auth_holds(fast_serve, serve_token):
    env = fast_serve.env()
    assert {k: env[k] for k in c.SERVE_HIGH_THROUGHPUT_ENV} == c.SERVE_HIGH_THROUGHPUT_ENV
    (config,) = fast_serve.haproxy_dir().glob("*/haproxy.cfg")  # Ray adds the node id
    assert f":{fast_serve.http_port}" in config.read_text()  # HAProxy serves the Serve port
    assert httpx.get(fast_serve.url + c.HEALTH_ROUTE, timeout=10).json() == {"status": "ok"}
    route = c.MODEL_INFERENCE_ROUTE.format(model="iris")
    body = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
    assert httpx.post(fast_serve.url + route, json=body, timeout=30).status_code == 401
    wrong = {c.AUTH_HEADER: f"{c.AUTH_SCHEME} not-the-token"}
    assert httpx.post(fast_serve.url + route, json=body, headers=wrong, timeout=30).status_code == 403
    ok = {c.AUTH_HEADER: f"{c.AUTH_SCHEME} {serve_token}"}
    assert httpx.post(fast_serve.url + route, json=body, headers=ok, timeout=30).json()["errors"] == [None]


async def test_a_batch_through_haproxy(fast_serve, client, serve_token, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", iris_records(5_000))
    queue = f"ht-{uuid.uuid4().hex[:8]}"
    serve = ServeClient(fast_serve.url, TokenSource(serve_token))
    try:
        async with build_worker(client, WorkerSettings(task_queue=queue, serve_url=fast_serve.url), serve):
            batch = BatchInferenceInput(input_uri=str(source), output_uri=str(tmp_path / "out"), model="iris")
            result = await execute_batch(client, queue, batch, prefix="ht")
    finally:
        await serve.aclose()
    results, errors = read_outputs(tmp_path / "out")
    assert result.succeeded == 5_000 and not errors
    assert sorted(r["id"] for r in results) == sorted(f"r{i}" for i in range(5_000))
