"""Day-2 commands on a finished batch: ``verify`` its lineage, ``retry`` its failed records,
``resume`` it where it stopped. Each takes a workflow id or (verify, retry) an output folder."""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import Any

from temporalio.client import Client
from temporalio.converter import decode_typed_search_attributes

from services import constants as c
from services.cli_errors import batch_named, connect
from services.worker.config import TemporalSettings
from services.worker.contracts import RETRYABLE_NAMES, BatchInferenceInput, Tuning
from services.worker.layout import OutputLayout
from services.worker.scheduled_run import SCHEDULED_START_TIME
from services.worker.uri_templates import fill


def add_parsers(sub: Any) -> None:
    v = sub.add_parser(
        "verify",
        help="prove every input record of a batch appears exactly once in its results or errors",
        description="Reads the batch's plan, its input, results, errors and retries. Exit 0: every input "
        "record exactly once; 1: some missing or doubled (a few are named); 2: no batch there.",
    )
    v.add_argument("output", help="the batch's output folder: local path or fsspec URL")
    v.add_argument("--json", action="store_true", help="print the verdict as JSON")

    r = sub.add_parser(
        "retry",
        help="re-run a finished batch's failed records as a new batch beside it",
        description="Copies the failed records (all, or --only some stages/codes) from the batch's input "
        "into <output>/retries/<new workflow id>/ and runs them there; the original summary then lists the "
        "retry, and `verify` counts a record its results fix as succeeded.",
    )
    r.add_argument("batch", help="the batch's workflow id or output folder")
    r.add_argument(
        "--only",
        help="comma-separated stages or codes to retry (default: all), from: "
        + ", ".join(sorted(RETRYABLE_NAMES)),
    )
    r.add_argument("--model", help="model name (default: the batch's)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="tuning, as for submit")
    r.add_argument("--id", help="workflow id of the retry (default: retry-<random>)")
    r.add_argument("--wait", action="store_true", help="show progress and print the summary")

    s = sub.add_parser(
        "resume",
        help="start a failed or cancelled batch again where it stopped (same workflow id and folder)",
        description="Finished shards are reused, unfinished ones resume after their last committed part. "
        "Refused if the input changed since it was planned (then submit it again with "
        "--set start_over=true).",
    )
    s.add_argument("workflow_id")
    s.add_argument("--wait", action="store_true", help="show progress and print the summary")


async def original_input(client: Client, workflow_id: str) -> BatchInferenceInput:
    """The input a batch was started with (its first run's, before any continue-as-new), with
    the time a schedule started it, if one did."""
    latest = await client.get_workflow_handle(workflow_id).fetch_history()
    started = latest.events[0].workflow_execution_started_event_attributes
    first_run = started.first_execution_run_id or latest.run_id
    history = await client.get_workflow_handle(workflow_id, run_id=first_run).fetch_history()
    first = history.events[0].workflow_execution_started_event_attributes
    (batch,) = await client.data_converter.decode(first.input.payloads, [BatchInferenceInput])
    batch = batch.model_copy(update={"state": None})
    if batch.schedule is not None and batch.schedule.scheduled_time is None:
        # A scheduled run: its templates were filled from the time the schedule started it; the
        # batch started again (not by the schedule) must be given that time to fill the same.
        when = decode_typed_search_attributes(first.search_attributes).get(SCHEDULED_START_TIME)
        batch.schedule = batch.schedule.model_copy(update={"scheduled_time": when})
    return batch


def cmd_verify(args: argparse.Namespace) -> int:
    from services.worker.lineage import report, verify

    try:
        verdict = verify(args.output)
    except FileNotFoundError:
        print(f"error: no batch in {args.output} (no {c.PLAN_FILE})", file=sys.stderr)
        return 2
    print(verdict.model_dump_json(indent=2) if args.json else report(verdict))
    return 0 if verdict.ok else 1


def _looks_like_folder(text: str) -> bool:
    return "/" in text or "://" in text


async def cmd_retry(args: argparse.Namespace) -> int:
    from services.cli import abs_uri, start_batch, started
    from services.cli_errors import parse_value
    from services.worker.retry import failed_lines

    settings = TemporalSettings()
    client = await connect(settings)
    if _looks_like_folder(args.batch):
        folder = abs_uri(args.batch)
    else:
        with batch_named(args.batch):
            folder = (await original_input(client, args.batch)).output_uri
    assert folder is not None
    only = [name.strip() for name in (args.only or "").split(",") if name.strip()]
    model = args.model
    try:
        plan = OutputLayout(folder).read_plan()
        if not failed_lines(plan, OutputLayout(folder, plan.spec.output_format), only):
            print(
                f"nothing to retry: the batch in {folder} has no failed records"
                + (f" of {args.only}" if only else "")
            )
            return 0
        model = model or plan.model
    except (FileNotFoundError, PermissionError):
        pass  # no plan there, or not readable from here: the worker checks, and says so
    tuning = {key: parse_value(value) for key, _, value in (item.partition("=") for item in args.set or [])}
    batch = BatchInferenceInput(retry_of=folder, retry_only=only, model=model, tuning=Tuning(**tuning))
    handle = await start_batch(
        client, batch, settings.task_queue, args.id or f"retry-{uuid.uuid4().hex[:12]}"
    )
    return await started(handle, args.wait, f": retrying the failed records of {folder}")


async def cmd_resume(args: argparse.Namespace) -> int:
    from services.cli import start_batch, started

    settings = TemporalSettings()
    client = await connect(settings)
    with batch_named(args.workflow_id):
        batch = await original_input(client, args.workflow_id)
    # The id of a closed batch may start again (Temporal's default reuse policy); a running one
    # is refused: WorkflowAlreadyStarted.
    handle = await start_batch(client, batch, settings.task_queue, args.workflow_id)
    return await started(handle, args.wait, f": resuming in {_folder(batch)}")


def _folder(batch: BatchInferenceInput) -> str | None:
    """The output folder, its templates filled as the workflow fills them for a scheduled run."""
    context = batch.schedule
    if context is None or context.scheduled_time is None or batch.output_uri is None:
        return batch.output_uri
    return fill(batch.output_uri, context.scheduled_time, context.time_zone)
