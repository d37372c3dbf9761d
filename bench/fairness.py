"""Fair sharing and priority on a real Temporal dev server (fairness on) and local Ray Serve.

python -m bench.fairness [--slots 2] [--out bench/results]

One worker with few activity slots, so shards queue on the task queue (a real backlog: with
free slots there is nothing to order):

- tenants: tenant ``a`` submits four batches, then tenant ``b`` four (same priority, fairness
  keys ``a`` and ``b``). While both have shards to run, each one's share of the records done.
  First-come-first-served would give ``a`` nearly all of them.
- priority: eight batches at priority 3 fill the queue, then one batch at priority 1, started
  as ``temporal workflow start --input`` would start it (no Priority on the workflow: the
  workflow passes its input's to its activities). Its first shard's wait from scheduled to
  started, against one shard's duration, and how many queued shards it overtook.

Every time is read from the workflows' histories (each shard's ActivityTaskScheduled, Started and
Completed events), not from sleeps or wall clocks on this side. The integration test
(tests/integration/test_fairness.py) runs the same scenarios and checks them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter

from services import constants as c
from services.cli import start_batch
from services.local.processes import free_port
from services.local.ray_serve import LocalRayServe
from services.local.temporal_dev import FAIRNESS_CONFIG, ONE_PARTITION, TemporalDevServer
from services.worker.activities import BatchActivities
from services.worker.config import WorkerSettings
from services.worker.contracts import (
    BatchInferenceInput,
    BatchInferenceOutput,
    Progress,
    ShardOutput,
    Tuning,
)
from services.worker.serve_client import ServeClient, TokenSource
from services.worker.worker import build_worker

RESULTS = Path(__file__).parent / "results"
SHARD_ACTIVITY = BatchActivities.process_shard.__name__
# A shard of ~1 s on echo: many small sequential requests, so a shard holds its slot a while.
SHARD_TUNING = {"micro_batch_size": 25, "max_in_flight": 1, "checkpoint_every": 500}


@dataclass
class ShardSpan:
    """One shard of one batch, as its workflow's history tells it."""

    batch: str
    scheduled: datetime
    started: datetime
    completed: datetime
    records: int
    priority_key: int  # as scheduled (0: inherited from the workflow)
    fairness_key: str

    @property
    def duration_s(self) -> float:
        return (self.completed - self.started).total_seconds()

    @property
    def wait_s(self) -> float:
        return (self.started - self.scheduled).total_seconds()


async def shard_spans(client: Client, workflow_id: str) -> list[ShardSpan]:
    """Every completed shard of a batch's (last) run, from its history."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    scheduled: dict[int, Any] = {}
    started: dict[int, datetime] = {}
    spans = []
    for event in history.events:
        when = event.event_time.ToDatetime()
        if event.HasField("activity_task_scheduled_event_attributes"):
            attrs = event.activity_task_scheduled_event_attributes
            if attrs.activity_type.name == SHARD_ACTIVITY:
                scheduled[event.event_id] = (when, attrs.priority)
        elif event.HasField("activity_task_started_event_attributes"):
            started[event.activity_task_started_event_attributes.scheduled_event_id] = when
        elif event.HasField("activity_task_completed_event_attributes"):
            attrs = event.activity_task_completed_event_attributes
            if attrs.scheduled_event_id in scheduled:
                at, priority = scheduled[attrs.scheduled_event_id]
                (out,) = await client.data_converter.decode(attrs.result.payloads, [ShardOutput])
                spans.append(
                    ShardSpan(
                        workflow_id,
                        at,
                        started[attrs.scheduled_event_id],
                        when,
                        out.records,
                        priority.priority_key,
                        priority.fairness_key,
                    )
                )
    return spans


def write_batches(
    work: Path, name: str, count: int, shards: int, shard_records: int
) -> list[BatchInferenceInput]:
    """``count`` echo batches of ``shards`` equal shards, all in one window (each batch queues
    all its shards at once)."""
    work.mkdir(parents=True, exist_ok=True)
    batches = []
    for i in range(count):
        source = work / f"{name}-{i}.jsonl"
        with source.open("w") as out:
            for n in range(shards * shard_records):
                out.write(json.dumps({"id": f"{name}{i}-{n}", "input": {"n": n}}) + "\n")
        tuning = Tuning(shard_size=shard_records, max_concurrent_shards=shards, **SHARD_TUNING)
        batches.append(
            BatchInferenceInput(
                input_uri=str(source), output_uri=str(work / f"out-{name}-{i}"), model="echo", tuning=tuning
            )
        )
    return batches


def slow_worker(slots: int) -> dict[str, Any]:
    """``WorkerSettings`` of few activity slots and no eager activities: an eager shard starts on
    the worker that scheduled it without passing through the task queue, so priority and
    fairness never see it."""
    return {"max_concurrent_activities": slots, "eager_activities": 0}


# --- the tenants scenario -----------------------------------------------------------------------


def both_running(spans: dict[str, list[ShardSpan]]) -> tuple[datetime, datetime]:
    """From the moment every tenant has a shard queued to the moment the first tenant's last
    shard is done: while all of them have work."""
    start = max(min(s.scheduled for s in tenant) for tenant in spans.values())
    end = min(max(s.completed for s in tenant) for tenant in spans.values())
    return start, end


def shares(spans: dict[str, list[ShardSpan]], start: datetime, end: datetime) -> dict[str, float]:
    """Each tenant's share of the records done (shards completed) in [start, end]."""
    done = {t: sum(s.records for s in tenant if start < s.completed <= end) for t, tenant in spans.items()}
    total = sum(done.values())
    return {t: round(n / total, 3) if total else 0.0 for t, n in done.items()}


def share_timeline(spans: dict[str, list[ShardSpan]], points: int = 8) -> list[dict[str, Any]]:
    """Tenants' cumulative shares of records done at evenly spaced times while both run."""
    start, end = both_running(spans)
    step = (end - start) / points
    return [
        {"t_s": round((step * (i + 1)).total_seconds(), 2), **shares(spans, start, start + step * (i + 1))}
        for i in range(points)
    ]


async def tenants(
    client: Client, queue: str, work: Path, per_tenant: int = 4, shards: int = 6, shard_records: int = 1000
) -> dict[str, Any]:
    """Tenant ``a`` submits ``per_tenant`` batches, then tenant ``b`` as many, through the CLI's
    ``start_batch`` (the Priority on the workflow)."""
    handles: dict[str, list[WorkflowHandle]] = {}
    for tenant in ("a", "b"):
        handles[tenant] = []
        for batch in write_batches(work, f"tenant-{tenant}", per_tenant, shards, shard_records):
            batch.fairness_key = tenant
            handles[tenant].append(
                await start_batch(client, batch, queue, f"fair-{tenant}-{uuid.uuid4().hex[:6]}")
            )
    results = {t: [await h.result() for h in hs] for t, hs in handles.items()}
    spans = {t: [s for h in hs for s in await shard_spans(client, h.id)] for t, hs in handles.items()}
    start, end = both_running(spans)
    return {
        "batches_per_tenant": per_tenant,
        "shards_per_batch": shards,
        "records_per_shard": shard_records,
        "both_running_s": round((end - start).total_seconds(), 2),
        "shares_while_both_run": shares(spans, start, end),
        "share_timeline": share_timeline(spans),
        "median_shard_s": round(statistics.median(s.duration_s for t in spans.values() for s in t), 3),
        "results": {
            t: [r.model_dump(include={"succeeded", "failed"}) for r in rs] for t, rs in results.items()
        },
        "spans": spans,
    }


# --- the priority scenario ----------------------------------------------------------------------


async def wait_queued(handles: list[WorkflowHandle], shards: int, timeout_s: float = 60) -> None:
    """Until every background batch has scheduled its whole window (the backlog is there)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        progress = [await h.query(c.PROGRESS_QUERY, result_type=Progress) for h in handles]
        if all(p.shards_done + p.shards_running >= shards for p in progress):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the background batches did not queue their shards")


async def priority_jump(
    client: Client, queue: str, work: Path, background: int = 8, shards: int = 4, shard_records: int = 1000
) -> dict[str, Any]:
    """``background`` batches at priority 3 (through ``start_batch``), then one at priority 1
    started with no Priority on the workflow, its priority only in its input."""
    handles = []
    for batch in write_batches(work, "background", background, shards, shard_records):
        batch.priority = 3
        handles.append(await start_batch(client, batch, queue, f"prio3-{uuid.uuid4().hex[:6]}"))
    await wait_queued(handles, shards)
    (urgent,) = write_batches(work, "urgent", 1, 2, shard_records)
    urgent.priority = 1
    # As `temporal workflow start --input '{...,"priority":1}'`: the workflow itself at default.
    first = await client.start_workflow(
        c.WORKFLOW_NAME, urgent, id=f"prio1-{uuid.uuid4().hex[:6]}", task_queue=queue,
        result_type=BatchInferenceOutput,
    )  # fmt: skip
    results = [await h.result() for h in [*handles, first]]
    background_spans = [s for h in handles for s in await shard_spans(client, h.id)]
    urgent_spans = await shard_spans(client, first.id)
    head = min(urgent_spans, key=lambda s: s.scheduled)
    shard_s = statistics.median(s.duration_s for s in background_spans)
    return {
        "background_batches": background,
        "shards_per_batch": shards,
        "records_per_shard": shard_records,
        "median_shard_s": round(shard_s, 3),
        "first_shard_wait_s": round(head.wait_s, 3),
        "wait_in_shards": round(head.wait_s / shard_s, 2),
        # Queued before it, started after it: the backlog it overtook.
        "overtook": sum(
            1 for s in background_spans if s.scheduled < head.scheduled and s.started > head.started
        ),
        "queued_when_scheduled": sum(1 for s in background_spans if s.scheduled < head.scheduled < s.started),
        # Started while it waited: what took the slots that freed before it got one.
        "started_ahead": sum(1 for s in background_spans if head.scheduled < s.started < head.started),
        "longest_shard_s": round(max(s.duration_s for s in background_spans), 3),
        "urgent_priority_on_shards": sorted({s.priority_key for s in urgent_spans}),
        "succeeded": sum(r.succeeded for r in results),
        "head": head,
        "background_spans": background_spans,
    }


# --- the bench run -------------------------------------------------------------------------------


def figures(result: dict[str, Any]) -> dict[str, Any]:
    """A scenario's result without its spans (what the JSON and the docs keep)."""
    return {k: v for k, v in result.items() if k not in {"spans", "head", "background_spans"}}


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Fair sharing and priority ({report['when']}, one worker of {report['slots']} activity slots, "
        f"no eager activities; shared machine: {report['cpus']} CPUs)",
    ]
    for name in SERVERS:
        if name not in report:
            continue
        t, p = report[name]["tenants"], report[name]["priority"]
        lines += [
            "",
            f"Dev server: {report[name]['server']}",
            "",
            f"Tenants: {t['batches_per_tenant']} batches each x {t['shards_per_batch']} shards x "
            f"{t['records_per_shard']} records; median shard {t['median_shard_s']} s; both running "
            f"{t['both_running_s']} s; shares of records done while both run: "
            + ", ".join(f"{k} {v:.0%}" for k, v in t["shares_while_both_run"].items()),
            "",
            "| t since both run (s) | a (submitted first) | b |",
            "|---|---|---|",
            *[f"| {row['t_s']} | {row['a']:.0%} | {row['b']:.0%} |" for row in t["share_timeline"]],
            "",
            f"Priority: {p['background_batches']} batches at priority 3 x {p['shards_per_batch']} shards, "
            f"then one at priority 1: its first shard waited {p['first_shard_wait_s']} s "
            f"({p['wait_in_shards']} of a median shard's {p['median_shard_s']} s); "
            f"{p['queued_when_scheduled']} shards were queued when it was scheduled, "
            f"it overtook {p['overtook']}.",
        ]
    return "\n".join(lines) + "\n"


# The project's dev server, then controls against the same Serve: fairness off on one partition
# (first come, first served), and the server's defaults (fairness off, four partitions).
SERVERS = {
    "fairness": ("fairness on, one partition per task queue (the project's dev server)", FAIRNESS_CONFIG),
    "fifo": ("fairness off, one partition (control)", ONE_PARTITION),
    "defaults": ("the server's defaults: fairness off, four partitions (control)", ()),
}


async def scenarios(
    temporal: TemporalDevServer, serve: LocalRayServe, slots: int, work: Path
) -> dict[str, Any]:
    client = await Client.connect(temporal.address, data_converter=pydantic_data_converter)
    report: dict[str, Any] = {}
    for name, scenario in (("tenants", tenants), ("priority", priority_jump)):
        queue = f"fair-{uuid.uuid4().hex[:8]}"
        serve_client = ServeClient(serve.url, TokenSource(token_file=str(serve.token_file)))
        settings = WorkerSettings(task_queue=queue, serve_url=serve.url, **slow_worker(slots))
        try:
            async with build_worker(client, settings, serve_client):
                report[name] = figures(await scenario(client, queue, work / name))
        finally:
            await serve_client.aclose()
    return report


async def run(slots: int, control: bool) -> dict[str, Any]:
    """The scenarios on the project's dev server, then (``control``) on the control servers."""
    from bench.local_stack import local_stack

    with tempfile.TemporaryDirectory(prefix="bi-fair-", dir="/tmp") as tmp:
        work = Path(tmp)
        async with local_stack(work) as (temporal, serve):
            report: dict[str, Any] = {"slots": slots}
            report["fairness"] = {
                "server": SERVERS["fairness"][0],
                **await scenarios(temporal, serve, slots, work / "fairness"),
            }
            for name, (title, config) in list(SERVERS.items())[1:] if control else []:
                server = TemporalDevServer(
                    work / f"temporal-{name}", free_port(), free_port(), queue_config=config
                )
                await asyncio.to_thread(server.start)
                try:
                    report[name] = {"server": title, **await scenarios(server, serve, slots, work / name)}
                finally:
                    await asyncio.to_thread(server.stop)
    return report


def main() -> None:
    import os

    from bench.local_stack import stop_on_sigterm

    stop_on_sigterm()
    p = argparse.ArgumentParser(prog="python -m bench.fairness", description=__doc__)
    p.add_argument("--slots", type=int, default=2, help="the worker's activity slots (default 2)")
    p.add_argument(
        "--control",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the control servers: fairness off on one partition, and the defaults (default: yes)",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    report = asyncio.run(run(args.slots, args.control))
    report["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    report["cpus"] = os.cpu_count()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"fairness-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    stem.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
