"""``batch-inference list`` (recent batches: id, status, counts, age) and ``cancel <id>``.

``list`` asks Temporal's visibility store once for the batches, then per batch: a running one
answers the ``progress`` query (a worker answers it from memory), a finished one's counts come
from its close event (one history call the server answers alone, not a query, which would make
a worker replay the whole batch). Both are bounded by ``--limit`` and run concurrently.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel
from temporalio.client import Client, WorkflowExecution, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.service import RPCError

from services import constants as c
from services.cli_errors import NoWorker, batch_named, connect, failure_line, query_progress
from services.worker.contracts import BatchInferenceOutput

# Temporal's statuses as the batch's summary spells them.
STATUS_NAMES = {
    WorkflowExecutionStatus.RUNNING: "running",
    WorkflowExecutionStatus.COMPLETED: "completed",
    WorkflowExecutionStatus.FAILED: "failed",
    WorkflowExecutionStatus.CANCELED: "cancelled",
    WorkflowExecutionStatus.TERMINATED: "terminated",
    WorkflowExecutionStatus.TIMED_OUT: "timed_out",
}


def status_name(status: WorkflowExecutionStatus | None) -> str:
    status = status or WorkflowExecutionStatus.RUNNING
    return STATUS_NAMES.get(status, status.name.lower())


QUERY_TIMEOUT = timedelta(seconds=3)  # a running batch no worker serves must not hold up the list


class BatchRow(BaseModel):
    workflow_id: str
    status: str
    started_at: datetime
    closed_at: datetime | None = None
    total_records: int | None = None
    succeeded: int | None = None
    failed: int | None = None
    note: str | None = None  # why it failed, why its counts are missing, or that it waits for Serve


def add_parsers(sub: Any) -> None:
    ls = sub.add_parser(
        "list",
        help="recent batches: id, status, counts, age",
        description="Batches of this namespace, newest first (each continue-as-new chain once). Counts come "
        "from the progress query for running batches and from the result for completed ones.",
    )
    ls.add_argument("--limit", type=int, default=20, help="at most this many batches (default: 20)")
    ls.add_argument("--running", action="store_true", help="only running batches")
    ls.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")

    cn = sub.add_parser(
        "cancel",
        help="cancel a running batch and print how it ended",
        description="Running shards stop within seconds, keeping their committed parts; the batch writes "
        "_summary.json with status cancelled. `batch-inference resume <id>` takes it up again.",
    )
    cn.add_argument("workflow_id")
    cn.add_argument(
        "--wait-s", type=float, default=30.0, help="how long to wait for it to stop (default: 30)"
    )


# --- list ------------------------------------------------------------------------------------


def list_query(running_only: bool = False) -> str:
    """Batches, each continue-as-new chain once (its earlier runs have status ContinuedAsNew)."""
    query = f"WorkflowType = '{c.WORKFLOW_NAME}' AND ExecutionStatus != 'ContinuedAsNew'"
    return query + " AND ExecutionStatus = 'Running'" if running_only else query


async def recent_batches(client: Client, limit: int, running_only: bool = False) -> list[BatchRow]:
    executions = [e async for e in client.list_workflows(list_query(running_only), limit=limit)]
    rows = await asyncio.gather(*(batch_row(client, e) for e in executions))
    return sorted(rows, key=lambda row: row.started_at, reverse=True)


async def batch_row(client: Client, execution: WorkflowExecution) -> BatchRow:
    status = execution.status or WorkflowExecutionStatus.RUNNING
    row = BatchRow(
        workflow_id=execution.id,
        status=status_name(status),
        started_at=execution.start_time,
        closed_at=execution.close_time,
    )
    handle = client.get_workflow_handle(
        execution.id, run_id=execution.run_id, result_type=BatchInferenceOutput
    )
    if status == WorkflowExecutionStatus.RUNNING:
        try:
            progress = await query_progress(handle, QUERY_TIMEOUT)
        except (NoWorker, RPCError):
            row.note = "no worker answered the progress query"
            return row
        row.status = progress.status
        row.note = progress.serve_wait_line()
        row.total_records, row.succeeded, row.failed = (
            progress.total_records,
            progress.succeeded,
            progress.failed,
        )
    elif status == WorkflowExecutionStatus.COMPLETED:
        try:
            result = await handle.result(follow_runs=False)
        except RPCError:
            return row
        row.total_records, row.succeeded, row.failed = result.total_records, result.succeeded, result.failed
    elif status == WorkflowExecutionStatus.FAILED:
        try:
            await handle.result(follow_runs=False)
        except WorkflowFailureError as err:
            row.note = failure_line(err)
        except RPCError:
            pass
    return row


def age(when: datetime, now: datetime | None = None) -> str:
    seconds = max(0, int(((now or datetime.now(UTC)) - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(rows: list[BatchRow], now: datetime | None = None) -> str:
    def count(value: int | None) -> str:
        return "-" if value is None else str(value)

    header = ("WORKFLOW ID", "STATUS", "SUCCEEDED", "FAILED", "TOTAL", "AGE", "")
    lines = [
        (
            row.workflow_id,
            row.status,
            count(row.succeeded),
            count(row.failed),
            count(row.total_records),
            age(row.started_at, now),
            row.note or "",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    widths[-1] = 0  # the note: as long as it is
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [header, *lines]
    )


async def cmd_list(args: argparse.Namespace) -> int:
    client = await connect()
    rows = await recent_batches(client, args.limit, args.running)
    if args.json:
        for row in rows:
            print(row.model_dump_json())
    elif rows:
        print(table(rows))
    else:
        what = "running batches" if args.running else "batches yet (start one with `batch-inference submit`)"
        print(f"no {what}", file=sys.stderr)
    return 0


# --- cancel ----------------------------------------------------------------------------------


async def cmd_cancel(args: argparse.Namespace) -> int:
    client = await connect()
    handle = client.get_workflow_handle(args.workflow_id)
    with batch_named(args.workflow_id):
        described = await handle.describe()
        status = described.status or WorkflowExecutionStatus.RUNNING
        if status != WorkflowExecutionStatus.RUNNING:
            print(f"batch {args.workflow_id!r} already ended ({status_name(status)}): nothing to cancel")
            return 0
        await handle.cancel()
    print(
        f"cancelling batch {args.workflow_id!r}: running shards stop at their next heartbeat ...",
        file=sys.stderr,
    )
    deadline = time.monotonic() + args.wait_s
    while time.monotonic() < deadline:
        with batch_named(args.workflow_id):
            status = (await handle.describe()).status or WorkflowExecutionStatus.RUNNING
        if status != WorkflowExecutionStatus.RUNNING:
            print(json.dumps({"workflow_id": args.workflow_id, "status": status_name(status)}))
            if status == WorkflowExecutionStatus.CANCELED:
                print(
                    f"cancelled: committed parts are kept; `batch-inference resume {args.workflow_id}` "
                    "takes it up again",
                    file=sys.stderr,
                )
            return 0
        await asyncio.sleep(0.5)
    print(
        f"batch {args.workflow_id!r} is still stopping after {args.wait_s:.0f}s (is a worker running?); "
        "see `batch-inference list`",
        file=sys.stderr,
    )
    return 1
