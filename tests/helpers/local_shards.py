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
        inputs = json.loads(request.content)["inputs"]
        calls.append(len(inputs))
        errors = [{"code": "model_error", "message": "rejected"} if reject(x) else None for x in inputs]
        return httpx.Response(200, json={"predictions": inputs, "errors": errors})

    return handler, calls


def serve_client(handler: Handler) -> ServeClient:
    return ServeClient("http://serve.test", TokenSource("t"), transport=httpx.MockTransport(handler))


def echo_serve(reject: Callable[[Any], bool] = lambda _: False) -> tuple[ServeClient, list[int]]:
    handler, calls = echo_handler(reject)
    return serve_client(handler), calls


def shard_input(output: str, shard: int, checkpoint_every: int = 3) -> ShardInput:
    return ShardInput(
        output_uri=output, shard=shard, model="echo", micro_batch_size=2, max_in_flight=4,
        checkpoint_every=checkpoint_every,
    )  # fmt: skip


def plan_batch(
    input_uri: str | list[str], output: str, spec: DataSpec | None = None, shard_size: int = 7
) -> Plan:
    return make_plan(
        PlanInput(input_uri=input_uri, output_uri=output, spec=spec or DataSpec(), shard_size=shard_size)
    )


async def run_shards(
    plan: Plan, output: str, serve: ServeClient | None = None, checkpoint_every: int = 3, attempt: int = 1
) -> list[ShardOutput]:
    """Every shard of ``plan``, one after another."""
    activities = BatchActivities(serve or echo_serve()[0])
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=attempt)
    return [
        await env.run(activities.process_shard, shard_input(output, shard, checkpoint_every))
        for shard in range(len(plan.shards))
    ]
