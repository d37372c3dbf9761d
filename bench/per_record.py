"""Baseline C: the original example's design, one activity per record gathered in one workflow."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity, workflow
from temporalio.api.enums.v1 import WorkflowTaskFailedCause
from temporalio.client import Client, WorkflowFailureError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    import httpx

    from services import constants as c

BASELINE_WORKFLOW = "PerRecordBaseline"


class PerRecordActivities:
    def __init__(self, serve_url: str, token: str):
        self._client = httpx.AsyncClient(
            base_url=serve_url, headers={c.AUTH_HEADER: f"{c.AUTH_SCHEME} {token}"}, timeout=60
        )

    @activity.defn(name="predict_one")
    async def predict_one(self, record: Any) -> Any:
        response = await self._client.post(c.INFERENCE_ROUTE, json=record)
        response.raise_for_status()
        return response.json()["prediction"]

    async def aclose(self) -> None:
        await self._client.aclose()


@workflow.defn(name=BASELINE_WORKFLOW)
class PerRecordBaseline:
    @workflow.run
    async def run(self, records: list[Any]) -> int:
        results = await asyncio.gather(
            *(
                workflow.execute_activity("predict_one", record, start_to_close_timeout=timedelta(minutes=5))
                for record in records
            )
        )
        return len(results)


async def measure(
    temporal_address: str,
    serve_url: str,
    token: str,
    n: int,
    timeout_s: float,
    report: Callable[[dict], None],
) -> None:
    """Run C once and ``report`` records/s, or how it fails (with the server's workflow-task
    failure causes), before the worker shuts down: that shutdown can hang (see main)."""
    client = await Client.connect(temporal_address, data_converter=pydantic_data_converter)
    queue = f"bench-c-{uuid.uuid4().hex[:8]}"
    activities = PerRecordActivities(serve_url, token)
    records = [{"text": f"record {i}", "n": i} for i in range(n)]
    workflow_id = f"bench-c-{uuid.uuid4().hex[:8]}"
    out: dict[str, Any] = {"records": n}
    try:
        async with Worker(
            client, task_queue=queue, workflows=[PerRecordBaseline], activities=[activities.predict_one]
        ):
            started = time.perf_counter()
            handle = await client.start_workflow(
                BASELINE_WORKFLOW, records, id=workflow_id, task_queue=queue,
                execution_timeout=timedelta(seconds=timeout_s),
            )  # fmt: skip
            try:
                done = await handle.result()
                seconds = time.perf_counter() - started
                out.update(seconds=round(seconds, 2), records_per_s=round(done / seconds))
            except WorkflowFailureError as err:
                out["error"] = f"{type(err.cause).__name__}: {err.cause}"[:300]
            history = await handle.fetch_history()
            out["history_events"] = len(history.events)
            failures = [
                e.workflow_task_failed_event_attributes
                for e in history.events
                if e.HasField("workflow_task_failed_event_attributes")
            ]
            if failures:
                out["workflow_task_failures"] = len(failures)
                # The server's reason (e.g. PENDING_ACTIVITIES_LIMIT_EXCEEDED), not only the text.
                causes = {
                    WorkflowTaskFailedCause.Name(f.cause).removeprefix("WORKFLOW_TASK_FAILED_CAUSE_")
                    for f in failures
                }
                out["workflow_task_failure_causes"] = sorted(causes)
                if "error" in out:
                    out["error"] += f" (workflow task failures: {', '.join(sorted(causes))})"
            report(out)
    finally:
        await activities.aclose()


def main() -> None:
    """python -m bench.per_record TEMPORAL_ADDRESS SERVE_URL TOKEN_FILE RECORDS TIMEOUT_S"""
    address, serve_url, token_file, n, timeout_s = sys.argv[1:6]
    token = Path(token_file).read_text().strip()

    def report(result: dict) -> None:
        print(json.dumps(result), flush=True)
        # Done: do not wait for the worker. After 10,000 pending activities the SDK may be
        # unable to evict the workflow and its shutdown then never ends.
        os._exit(0)

    asyncio.run(measure(address, serve_url, token, int(n), float(timeout_s), report))


if __name__ == "__main__":
    main()
