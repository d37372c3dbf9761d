"""Worker Versioning on the real dev server: a batch pinned to v1 moves to v2 at its next
continue-as-new, new batches start on v2, no record is lost or doubled, and v1 drains.

Both workers run in this process on one task queue, each its own version of one Worker
Deployment. v1's calls to Serve wait on a gate, so the running batch is still in its first run
when v2 becomes current, whatever the machine's speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.deployment.v1 import WorkerDeploymentVersion
from temporalio.api.enums.v1 import EventType, VersionDrainageStatus
from temporalio.api.workflowservice.v1 import (
    DescribeWorkerDeploymentVersionRequest,
    GetWorkflowExecutionHistoryRequest,
)
from temporalio.client import Client

from services import constants as c
from services.local.processes import venv_bin
from services.worker.config import WorkerSettings
from services.worker.serve_client import ServeClient, TokenSource
from services.worker.worker import build_worker
from tests.helpers.batches import assert_exactly_once, echo_batch, execute_batch, start_batch

pytestmark = pytest.mark.integration


class GatedServe(ServeClient):
    """A Serve client whose calls wait while ``gate`` is clear."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()

    async def predict(self, model, body, count):
        await self.gate.wait()
        return await super().predict(model, body, count)


@contextlib.asynccontextmanager
async def version(
    client: Client, queue: str, deployment: str, build_id: str, serve: ServeClient
) -> AsyncIterator[None]:
    settings = WorkerSettings(task_queue=queue, deployment_name=deployment, build_id=build_id)
    try:
        async with build_worker(client, settings, serve):
            yield
    finally:
        await serve.aclose()


async def set_current(address: str, deployment: str, build_id: str, timeout_s: float = 30) -> None:
    """What a release step runs. Retried: the server knows a version only once its worker has
    polled."""
    cmd = [
        venv_bin("temporal"), "worker", "deployment", "set-current-version", "--address", address,
        "--deployment-name", deployment, "--build-id", build_id, "--yes",
    ]  # fmt: skip
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        done = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True)
        if done.returncode == 0:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"set-current-version {build_id}: {done.stderr}")
        await asyncio.sleep(0.5)


async def build_ids_by_run(client: Client, workflow_id: str, first_run_id: str) -> list[set[str]]:
    """For each run of the chain, the build ids of the workers that completed its workflow tasks."""
    runs, run_id = [], first_run_id
    while run_id:
        history = await client.workflow_service.get_workflow_execution_history(
            GetWorkflowExecutionHistoryRequest(
                namespace=client.namespace,
                execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id),
                maximum_page_size=1000,
            )
        )
        events = history.history.events
        assert not history.next_page_token, "a run's history fits one page here"
        runs.append(
            {
                e.workflow_task_completed_event_attributes.deployment_version.build_id
                for e in events
                if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
            }
        )
        last = events[-1]
        run_id = (
            last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
            if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
            else ""
        )
    return runs


async def drainage(client: Client, deployment: str, build_id: str) -> int:
    described = await client.workflow_service.describe_worker_deployment_version(
        DescribeWorkerDeploymentVersionRequest(
            namespace=client.namespace,
            deployment_version=WorkerDeploymentVersion(deployment_name=deployment, build_id=build_id),
        )
    )
    return described.worker_deployment_version_info.drainage_info.status


async def test_a_running_batch_moves_to_the_new_version_at_its_next_continue_as_new(
    client, temporal_server, serve_stack, serve_token, tmp_path: Path
):
    queue, deployment = f"test-{uuid.uuid4().hex[:8]}", f"bi-{uuid.uuid4().hex[:8]}"
    # 12 shards, 4 per run: three runs; one shard at a time so run 1 is still going when v2 comes.
    records, output, batch = echo_batch(
        tmp_path / "long", 600, shard_size=50, max_concurrent_shards=1, continue_as_new_after_shards=4
    )
    v1_serve = GatedServe(serve_stack.url, TokenSource(serve_token))
    v2_serve = ServeClient(serve_stack.url, TokenSource(serve_token))
    async with contextlib.AsyncExitStack() as v1:
        await v1.enter_async_context(version(client, queue, deployment, "v1", v1_serve))
        await set_current(temporal_server.address, deployment, "v1")
        long = await start_batch(client, queue, batch, "long")
        while (await long.query(c.PROGRESS_QUERY)).get("shards_running", 0) == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.1)

        async with version(client, queue, deployment, "v2", v2_serve):
            await set_current(temporal_server.address, deployment, "v2")
            new_records, new_output, new_batch = echo_batch(tmp_path / "new", 200, prefix="n", shard_size=50)
            new = await start_batch(client, queue, new_batch, "new")
            new_result = await new.result()
            assert await build_ids_by_run(client, new.id, new.result_run_id) == [{"v2"}]
            assert_exactly_once(new_output, [r["id"] for r in new_records], new_result)

            v1_serve.gate.set()  # the long batch's first run finishes on v1, pinned
            result = await long.result()
            runs = await build_ids_by_run(client, long.id, long.result_run_id)
            assert runs == [{"v1"}, {"v2"}, {"v2"}], runs
            assert_exactly_once(output, [r["id"] for r in records], result)

            # Nothing open is pinned to v1 any more: the server says its workers can go.
            deadline = asyncio.get_running_loop().time() + 30
            while (
                status := await drainage(client, deployment, "v1")
            ) != VersionDrainageStatus.VERSION_DRAINAGE_STATUS_DRAINED:
                assert asyncio.get_running_loop().time() < deadline, f"v1 not drained: {status}"
                await asyncio.sleep(0.5)
            await v1.aclose()  # v1's workers go; v2 carries on alone
            again = await execute_batch(
                client, queue, new_batch.model_copy(update={"output_uri": str(tmp_path / "again")}), "again"
            )
            assert again.succeeded == len(new_records)
