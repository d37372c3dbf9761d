"""A batch's first wave of shards starts on the worker that planned it straight from that
workflow task's completion (eager), against a real dev server and Serve: the SDK's own default
(3 a task) left the fourth shard to a dispatch round trip. Read from the SDK's
``activity_task_received`` counter, which says which tasks came eagerly."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from services import metrics as m
from services.local.ray_serve import LocalRayServe
from services.local.temporal_dev import TemporalDevServer
from services.worker.config import WorkerSettings
from services.worker.sdk_metrics import TemporalMetricsBridge
from services.worker.serve_client import ServeClient, TokenSource
from services.worker.worker import build_worker
from tests.helpers.batches import execute_batch
from tests.helpers.records import iris_records, write_jsonl

pytestmark = pytest.mark.integration


def shard_tasks_received(metrics_text: str) -> dict[str, float]:
    """eager label ("true"/"false") -> shard tasks the worker received that way."""
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != m.TEMPORAL_ACT_TASK_RECEIVED.prom:
            continue
        for sample in family.samples:
            if sample.labels["activity_type"] == "process_shard":
                counts[sample.labels["eager"]] = counts.get(sample.labels["eager"], 0) + sample.value
    return counts


async def run_four_shards(
    temporal_server: TemporalDevServer, serve_stack: LocalRayServe, token: str, tmp: Path, **settings
) -> dict[str, float]:
    bridge = TemporalMetricsBridge()
    client = await Client.connect(
        temporal_server.address, runtime=bridge.create_runtime(), data_converter=pydantic_data_converter
    )
    source = write_jsonl(tmp / "in.jsonl", iris_records(40))
    queue = f"eager-{uuid.uuid4().hex[:8]}"
    serve = ServeClient(serve_stack.url, TokenSource(token))
    try:
        async with build_worker(client, WorkerSettings(task_queue=queue, **settings), serve):
            result = await execute_batch(
                client,
                queue,
                {
                    "input_uri": str(source),
                    "output_uri": str(tmp / "out"),
                    "model": "iris",
                    "tuning": {"shard_size": 10, "max_concurrent_shards": 4},
                },
            )
    finally:
        await serve.aclose()
        bridge.close()
    assert (result.status, result.shards, result.succeeded) == ("completed", 4, 40)
    return shard_tasks_received(bridge.render())


async def test_the_first_wave_of_four_shards_starts_eagerly(
    temporal_server, serve_stack, serve_token, tmp_path
) -> None:
    received = await run_four_shards(temporal_server, serve_stack, serve_token, tmp_path)
    assert received == {"true": 4}, received


async def test_eager_shards_can_be_turned_off(temporal_server, serve_stack, serve_token, tmp_path) -> None:
    received = await run_four_shards(temporal_server, serve_stack, serve_token, tmp_path, eager_activities=0)
    assert received == {"false": 4}, received
