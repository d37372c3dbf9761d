"""Per-batch progress published by the workflow as search attributes, read back by ONE visibility
list call, on the real dev server (which registers the attributes, as `batch-inference temporal`
does), and the case of a namespace without them: batches run all the same, unpublished.

The workflow and the plan's check of the attributes are the real ones; only the shard work is
replaced (shards that wait until the test releases them), so batches stay running while the
exporter reads them, without Ray Serve."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from google.protobuf.duration_pb2 import Duration
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from temporalio import activity
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer, Worker

from services import constants as c
from services import metrics as m
from services import progress_exporter
from services.local.temporal_dev import TemporalDevServer
from services.worker import progress_attributes
from services.worker.contracts import (
    BatchInferenceInput,
    ShardInput,
    ShardOutput,
    Tuning,
)
from services.worker.progress_attributes import ProgressAttributesCheck
from services.worker.telemetry import BatchProgressPoller
from services.worker.workflows import BatchInferenceWorkflow
from tests.helpers.fake_activities import FakeBatchActivities

pytestmark = pytest.mark.integration

SHARD = 100  # records per shard


class HeldShards(FakeBatchActivities):
    """plan_batch with the real attribute check; shards that finish only once released."""

    def __init__(self, client: Client, namespace: str, total: int):
        super().__init__(total, ProgressAttributesCheck(client, namespace))
        self.release = asyncio.Event()

    @activity.defn(name="process_shard")
    async def process_shard(self, input: ShardInput) -> ShardOutput:
        if input.shard == 0:  # finishes past the publishing interval: published at once
            await asyncio.sleep(Tuning().progress_every_s + 1)
        else:
            await self.release.wait()
        n = self.records_of(input.shard)
        return ShardOutput(shard=input.shard, records=n, succeeded=n - 1, failed=1)


@contextlib.asynccontextmanager
async def _worker(client: Client, held: HeldShards) -> AsyncIterator[str]:
    queue = f"progress-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[BatchInferenceWorkflow],
        activities=[held.plan_batch, held.process_shard, held.write_summary],
    ):
        yield queue


def _batch(tmp: str, **tuning) -> BatchInferenceInput:
    tuning = {"shard_size": SHARD, "max_concurrent_shards": 2, **tuning}
    return BatchInferenceInput(
        input_uri=f"{tmp}/in.jsonl", output_uri=f"{tmp}/out", max_error_ratio=0.5, tuning=Tuning(**tuning)
    )


async def _until(poll, done, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while True:
        got = await poll()
        if done(got):
            return got
        assert time.monotonic() < deadline, f"not reached within {timeout_s}s: {got}"
        await asyncio.sleep(0.3)


def _gauge(metric: m.Metric, workflow_id: str, state: str | None = None) -> float | None:
    labels = {m.WORKFLOW_ID: workflow_id} | ({m.STATE: state} if state else {})
    return REGISTRY.get_sample_value(metric.prom, labels)


async def test_running_batches_are_exported_from_one_list_call_without_queries(client: Client, tmp_path):
    assert await ProgressAttributesCheck(client, c.DEFAULT_NAMESPACE)(), "the dev server registers them"
    held = HeldShards(client, c.DEFAULT_NAMESPACE, total=450)
    async with _worker(client, held) as queue:
        handles = [
            await client.start_workflow(
                BatchInferenceWorkflow.run,
                _batch(str(tmp_path / str(i)), continue_as_new_after_shards=3 if i == 0 else None),
                id=f"progress-{i}-{uuid.uuid4().hex[:6]}",
                task_queue=queue,
            )
            for i in range(3)
        ]
        # No fallback to the progress query: every value below comes from the attributes.
        poller = BatchProgressPoller(client, queue, query_fallback=False)
        counts = await _until(poller.poll_once, lambda n: n.published == 3 and _moved(handles), 60)
        assert (counts.listed, counts.queried) == (3, 0)
        for h in handles:
            assert _gauge(m.BATCH_RECORDS, h.id, "total") == 450
            assert _gauge(m.BATCH_RECORDS, h.id, "succeeded") == SHARD - 1  # shard 0 done
            assert _gauge(m.BATCH_RECORDS, h.id, "failed") == 1
            assert _gauge(m.BATCH_SHARDS, h.id, "total") == 5
            assert _gauge(m.BATCH_SHARDS, h.id, "done") == 1
            assert _gauge(m.BATCH_SHARDS, h.id, "running") == 2
            assert _gauge(m.BATCH_WAITING_FOR_SERVE, h.id) == 0
            assert (_gauge(m.BATCH_ELAPSED, h.id) or 0) > 0
        assert REGISTRY.get_sample_value(m.BATCHES_RUNNING.prom) == 3
        # The exporter's own /metrics: these gauges and nothing else of the worker's.
        text = generate_latest(progress_exporter.registry()).decode()
        served = {
            (family.name, sample.labels.get(m.WORKFLOW_ID), sample.labels.get(m.STATE)): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        assert served[(m.BATCH_RECORDS.prom, handles[0].id, "total")] == 450
        assert m.RECORDS.prom not in text and m.SHARDS_RUNNING.prom not in text

        held.release.set()
        results = [await h.result() for h in handles]
        assert [(r.succeeded, r.failed) for r in results] == [(445, 5)] * 3
        assert results[0].runs == 2, "the first batch continued as new (and kept publishing)"
        # Finished: nothing listed, the batches' series are gone.
        counts = await _until(poller.poll_once, lambda n: n.listed == 0)
        assert _gauge(m.BATCH_RECORDS, handles[0].id, "total") is None
        assert REGISTRY.get_sample_value(m.BATCHES_RUNNING.prom) == 0
    # What each published last stays in visibility: the final counts, status completed. And its
    # history, upserts and all, replays on the workflow code (what a worker restart does).
    replayer = Replayer(workflows=[BatchInferenceWorkflow], data_converter=pydantic_data_converter)
    for h in handles:
        await replayer.replay_workflow(await h.fetch_history())
    for h in handles:
        attrs = (await h.describe()).typed_search_attributes
        final = progress_attributes.read(attrs)
        assert final is not None and final.status == "completed", attrs
        assert (final.succeeded, final.failed, final.shards_done) == (445, 5, 5)


def _moved(handles) -> bool:
    return all(_gauge(m.BATCH_SHARDS, h.id, "done") == 1 for h in handles)


@pytest.fixture(scope="module")
async def bare_namespace(temporal_server: TemporalDevServer) -> str:
    """A namespace of the same dev server without the attributes (start-dev registers them in
    the default namespace only)."""
    name = f"bare-{uuid.uuid4().hex[:6]}"
    admin = await Client.connect(temporal_server.address)
    await admin.workflow_service.register_namespace(
        RegisterNamespaceRequest(namespace=name, workflow_execution_retention_period=Duration(seconds=86400))
    )
    return name


async def _client(address: str, namespace: str) -> Client:
    client = await Client.connect(address, namespace=namespace, data_converter=pydantic_data_converter)
    # A new namespace reaches the frontend's cache within seconds.
    await _until(lambda: _answers(client), bool, 60)
    return client


async def _answers(client: Client) -> bool:
    try:
        await client.count_workflows()
        return True
    except Exception:
        return False


async def test_without_the_attributes_a_batch_runs_unpublished_and_the_exporter_queries_it(
    temporal_server: TemporalDevServer, bare_namespace: str, tmp_path
):
    client = await _client(temporal_server.address, bare_namespace)
    check = ProgressAttributesCheck(client, bare_namespace)
    assert not await check()
    held = HeldShards(client, bare_namespace, total=250)
    async with _worker(client, held) as queue:
        handle = await client.start_workflow(
            BatchInferenceWorkflow.run,
            _batch(str(tmp_path)),
            id=f"bare-{uuid.uuid4().hex[:6]}",
            task_queue=queue,
        )
        poller = BatchProgressPoller(client, queue)
        counts = await _until(
            poller.poll_once, lambda n: n.listed == 1 and _gauge(m.BATCH_SHARDS, handle.id, "done") == 1, 60
        )
        assert (counts.published, counts.queried) == (0, 1), "read by its progress query instead"
        assert _gauge(m.BATCH_RECORDS, handle.id, "total") == 250
        held.release.set()
        result = await handle.result()
    assert (result.status, result.succeeded, result.failed) == ("completed", 247, 3)
    assert progress_attributes.read((await handle.describe()).typed_search_attributes) is None
    # Registered later (what --register-search-attributes does), later plans see them.
    assert await progress_attributes.register(client, bare_namespace) == c.PROGRESS_SEARCH_ATTRIBUTES
    assert await progress_attributes.missing(client, bare_namespace) == {}
    assert await ProgressAttributesCheck(client, bare_namespace)()
