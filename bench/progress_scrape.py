"""Cost of exporting per-batch progress: one visibility list call (what the progress exporter
does per interval) versus a progress query per batch (what each worker replica did).

A Temporal dev server on free ports (the search attributes registered, as everywhere) and an
in-process worker running the real BatchInference workflow with held shards (plan and shard
work replaced: no Ray), so ``--batches`` batches stay running, each having published its
progress. Then: the exporter's poll (list + gauges) timed, the raw list pages counted and their
bytes summed; and ``--queries`` progress queries timed, extrapolated to every batch and N
workers. Run under ``flock /tmp/bench.lock``.

    python -m bench.progress_scrape --batches 1000 [--workers 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from temporalio import activity
from temporalio.api.workflowservice.v1 import ListWorkflowExecutionsRequest
from temporalio.worker import Worker

from services import constants as c
from services.local.temporal_dev import TemporalDevServer
from services.worker.contracts import (
    BatchInferenceInput,
    PlanInput,
    PlanOutput,
    Progress,
    ShardInput,
    ShardOutput,
    Tuning,
)
from services.worker.progress_attributes import ProgressAttributesCheck
from services.worker.telemetry import BatchProgressPoller
from services.worker.workflows import BatchInferenceWorkflow
from tests.helpers.temporal import connect_when_ready

RESULTS = Path(__file__).parent / "results" / "progress_scrape.json"


async def main(batches: int, workers: int, queries: int, interval_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="progress-scrape-") as tmp:
        server = TemporalDevServer.on_free_ports(Path(tmp)).start()
        try:
            return await _measure(server, batches, workers, queries, interval_s)
        finally:
            server.stop()


async def _measure(
    server: TemporalDevServer, batches: int, workers: int, queries: int, interval_s: float
) -> dict:
    client = await connect_when_ready(server.address)
    check = ProgressAttributesCheck(client, c.DEFAULT_NAMESPACE)
    hold = asyncio.Event()

    @activity.defn(name="plan_batch")
    async def plan_batch(input: PlanInput) -> PlanOutput:
        return PlanOutput(total_records=1000, num_shards=2, progress_attributes=await check())

    @activity.defn(name="process_shard")
    async def process_shard(input: ShardInput) -> ShardOutput:
        await hold.wait()
        return ShardOutput(shard=input.shard, records=500, succeeded=500, failed=0)

    queue = f"scrape-{uuid.uuid4().hex[:6]}"
    batch = BatchInferenceInput(
        input_uri="/in.jsonl", output_uri="/out", tuning=Tuning(shard_size=500, max_concurrent_shards=1)
    )
    async with Worker(
        client,
        task_queue=queue,
        workflows=[BatchInferenceWorkflow],
        activities=[plan_batch, process_shard],
        max_concurrent_activities=batches + 10,
    ):
        started = time.monotonic()
        for first in range(0, batches, 50):
            await asyncio.gather(
                *(
                    client.start_workflow(
                        BatchInferenceWorkflow.run, batch, id=f"{queue}-{i}", task_queue=queue
                    )
                    for i in range(first, min(batches, first + 50))
                )
            )
        poller = BatchProgressPoller(client, queue, query_fallback=False)
        for _ in range(600):  # every batch planned and published (visibility catches up)
            if (await poller.poll_once()).published == batches:
                break
            await asyncio.sleep(1)
        ready_s = time.monotonic() - started

        # The exporter's poll: one list call (paged by the server) and the gauges set.
        polls = []
        for _ in range(5):
            t0 = time.perf_counter()
            counts = await poller.poll_once()
            polls.append(time.perf_counter() - t0)
        assert counts.published == batches and counts.queried == 0, counts
        # The same listing, raw: pages and bytes on the wire (protobuf, before gRPC framing).
        pages, size, token = 0, 0, b""
        while True:
            response = await client.workflow_service.list_workflow_executions(
                ListWorkflowExecutionsRequest(
                    namespace=c.DEFAULT_NAMESPACE,
                    query=poller.visibility_query,
                    page_size=1000,
                    next_page_token=token,
                )
            )
            pages, size = pages + 1, size + response.ByteSize()
            token = response.next_page_token
            if not token:
                break

        # What each worker replica did: a progress query per running batch.
        ids = [f"{queue}-{i}" for i in range(min(queries, batches))]
        t0 = time.perf_counter()
        for workflow_id in ids:
            await client.get_workflow_handle(workflow_id).query(c.PROGRESS_QUERY, result_type=Progress)
        query_s = (time.perf_counter() - t0) / len(ids)
        hold.set()
        await asyncio.gather(
            *(client.get_workflow_handle(f"{queue}-{i}").terminate() for i in range(batches))
        )

    per_interval_queries = batches * workers
    return {
        "batches": batches,
        "workers": workers,
        "interval_s": interval_s,
        "batches_started_and_published_s": round(ready_s, 1),
        "exporter_poll_s_median": round(statistics.median(polls), 3),
        "exporter_poll_s_all": [round(p, 3) for p in polls],
        "list_pages": pages,
        "list_bytes": size,
        "list_bytes_per_batch": round(size / batches, 1),
        "query_s_each_sequential": round(query_s, 4),
        "queries_timed": len(ids),
        "queries_per_interval_before": per_interval_queries,
        "query_seconds_per_interval_before": round(per_interval_queries * query_s, 1),
        "requests_per_interval_after": pages,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=50, help="replicas the old way multiplied by")
    parser.add_argument("--queries", type=int, default=200, help="progress queries timed (extrapolated)")
    parser.add_argument("--interval", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = asyncio.run(main(args.batches, args.workers, args.queries, args.interval))
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
