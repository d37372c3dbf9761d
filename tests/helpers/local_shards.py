"""A file batch run in-process without Temporal's server: the plan, then every shard through
the real ``process_shard`` activity (``ActivityEnvironment``) against an in-process Serve mock.
For data-plane tests of formats and stores; the real Serve and Temporal run elsewhere."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import httpx
from temporalio.testing import ActivityEnvironment

from services import arrow_wire
from services.constants import ARROW_CONTENT_TYPE, MODELS_ROUTE, ServeWire
from services.worker.activities import BatchActivities
from services.worker.contracts import PlanInput, ShardInput, ShardOutput
from services.worker.manifests import DataSpec, Plan
from services.worker.plan import make_plan
from services.worker.serve_client import ServeClient, TokenSource

Handler = Callable[[httpx.Request], httpx.Response]


def echo_handler(reject: Callable[[Any], bool] = lambda _: False) -> tuple[Handler, list[int]]:
    """A Serve mock's handler predicting each input as itself (a model error for inputs
    ``reject`` picks), and the number of inputs of each request it answered."""
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == MODELS_ROUTE:  # echo takes no Arrow
            return httpx.Response(200, json={"models": ["echo"], "default": "echo", "columnar": []})
        inputs = json.loads(request.content)["inputs"]
        calls.append(len(inputs))
        errors = [{"code": "model_error", "message": "rejected"} if reject(x) else None for x in inputs]
        return httpx.Response(200, json={"predictions": inputs, "errors": errors})

    return handler, calls


def iris_handler() -> tuple[Handler, list[str]]:
    """A Serve mock answering as the Serve app's model deployment does with the real ``iris``
    model (its own per-record and columnar code, no Ray): JSON bodies record by record, Arrow
    bodies column by column; the listing says iris is columnar. Also: each request's content type."""
    from services.serve.app import ModelServer  # imports Ray: only for the tests that use it
    from services.serve.models import BUILTIN_MODELS, load_model

    server = ModelServer.func_or_class.__new__(ModelServer.func_or_class)
    server._model = load_model(BUILTIN_MODELS["iris"])
    server._validate = server._model.validate
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == MODELS_ROUTE:
            listing = {"models": ["iris"], "default": "iris", "columnar": ["iris"], "max_arrow_rows": 16}
            return httpx.Response(200, json=listing)
        seen.append(request.headers["content-type"])
        if request.headers["content-type"] == ARROW_CONTENT_TYPE:
            reply = server._predict_table(arrow_wire.decode(request.content))
            return httpx.Response(
                200, content=arrow_wire.encode(reply), headers={"content-type": ARROW_CONTENT_TYPE}
            )
        results = server._predict_records(json.loads(request.content)["inputs"])
        return httpx.Response(
            200,
            json={
                "predictions": [r.get("prediction") for r in results],
                "errors": [r.get("error") for r in results],
            },
        )

    return handler, seen


def serve_client(handler: Handler, wire: ServeWire = "auto") -> ServeClient:
    return ServeClient(
        "http://serve.test", TokenSource("t"), transport=httpx.MockTransport(handler), wire=wire
    )


def echo_serve(reject: Callable[[Any], bool] = lambda _: False) -> tuple[ServeClient, list[int]]:
    handler, calls = echo_handler(reject)
    return serve_client(handler), calls


def shard_input(
    output: str,
    shard: int,
    checkpoint_every: int = 3,
    model: str = "echo",
    micro_batch_size: int = 2,
    **more: Any,
) -> ShardInput:
    """``more``: other ``ShardInput`` fields."""
    return ShardInput(
        output_uri=output, shard=shard, model=model, micro_batch_size=micro_batch_size, max_in_flight=4,
        checkpoint_every=checkpoint_every, **more,
    )  # fmt: skip


def plan_batch(
    input_uri: str | list[str], output: str, spec: DataSpec | None = None, shard_size: int = 7
) -> Plan:
    return make_plan(
        PlanInput(input_uri=input_uri, output_uri=output, spec=spec or DataSpec(), shard_size=shard_size)
    )


async def run_shards(
    plan: Plan,
    output: str,
    serve: ServeClient | None = None,
    checkpoint_every: int = 3,
    attempt: int = 1,
    **shard: Any,
) -> list[ShardOutput]:
    """Every shard of ``plan``, one after another (``shard``: more ``shard_input`` arguments)."""
    activities = BatchActivities(serve or echo_serve()[0])
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=attempt)
    return [
        await env.run(activities.process_shard, shard_input(output, index, checkpoint_every, **shard))
        for index in range(len(plan.shards))
    ]
