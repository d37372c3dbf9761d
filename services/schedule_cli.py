"""``batch-inference schedule ...``: recurring batches on Temporal Schedules (``services/schedules.py``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

import yaml
from temporalio.client import Client, ScheduleActionExecutionStartWorkflow, ScheduleBackfill, ScheduleHandle
from temporalio.service import RPCError

from services import constants as c
from services import schedules as s
from services.cli_errors import add_priority_flags, connect, split_settings
from services.errors import CommandError
from services.worker.config import TemporalSettings
from services.worker.uri_templates import VALID, zone

DESCRIPTION = f"""Recurring batches on Temporal Schedules. Each run starts the BatchInference workflow with
its input and output URI templates filled from the time it was scheduled for, in --time-zone:
placeholders {VALID}
({{datetime}} is 20261201T000000; {{{{ and }}}} are literal braces).
A run's workflow id is <schedule id>-<scheduled time, UTC> (e.g. nightly-2026-12-01T00:00:00Z), so a
re-delivered run has the same id and writes the same folder. A schedule's definition is kept with it:
`create` of the same definition again says so and changes nothing; `create --update` (or `apply`)
changes it in place, never making a second one."""


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "schedule",
        help="recurring batches on Temporal Schedules (create, list, describe, pause, trigger, ...)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="schedule_command", required=True)

    cr = sub.add_parser(
        "create",
        help="create a schedule (or say it exists unchanged; --update changes it in place)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cr.add_argument("id", help="schedule id, also the prefix of its runs' workflow ids")
    when = cr.add_mutually_exclusive_group(required=True)
    when.add_argument(
        "--cron", help="cron expression, e.g. '0 2 * * *' (02:00 daily), '@hourly'; read in --time-zone"
    )
    when.add_argument("--every", help="interval, e.g. 1h, 30m, 1d; '1d/2h' = daily at 02:00 UTC (an offset)")
    cr.add_argument(
        "--time-zone", default="UTC", help="IANA time zone of --cron and the templates (default UTC)"
    )
    cr.add_argument(
        "--input",
        action="append",
        required=True,
        help="input URI template, e.g. 's3://bucket/events/date={date}/'; repeat for several",
    )
    cr.add_argument(
        "--output", required=True, help="output folder template, e.g. 's3://bucket/scored/{date}/'"
    )
    cr.add_argument("--model", help="model name (default: Serve's default model)")
    cr.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a data option or tuning, as for submit (e.g. output_format=parquet, micro_batch_size=500)",
    )
    cr.add_argument("--max-error-ratio", type=float, default=0.0)
    add_priority_flags(cr)
    cr.add_argument(
        "--overlap",
        choices=list(s.OVERLAP_POLICIES),
        default="skip",
        help="when a run is due while the previous one is still going: skip it (default), buffer one or "
        "all to start after it, cancel or terminate it, or allow all to run at once",
    )
    cr.add_argument(
        "--catchup-window",
        default=s.DEFAULT_CATCHUP_WINDOW,
        help="how late a run missed while Temporal was unavailable may still start (default "
        f"{s.DEFAULT_CATCHUP_WINDOW}; at least 10s)",
    )
    cr.add_argument("--paused", action="store_true", help="create it paused")
    cr.add_argument("--task-queue", help=f"default: ${c.ENV_TEMPORAL_TASK_QUEUE} or {c.DEFAULT_TASK_QUEUE}")
    cr.add_argument("--update", action="store_true", help="if it exists with another definition, update it")

    ap = sub.add_parser(
        "apply",
        help="create or update every schedule of a list (YAML or JSON); with --owner, delete the "
        "owner's schedules no longer listed",
        description="Entries take the chart's `schedules:` keys: id, cron or every, timeZone, input, output, "
        "model, set, maxErrorRatio, overlap, catchupWindow, paused, taskQueue. The chart's hook Job runs "
        "this with --owner helm:<namespace>/<release>.",
    )
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", type=Path, help="a YAML or JSON list of schedules ('-' for stdin)")
    source.add_argument("--json", help="the list as JSON text")
    ap.add_argument("--owner", help="who manages these schedules (e.g. helm:<namespace>/<release>)")

    sub.add_parser("list", help="schedules of BatchInference workflows: state, when, next and last run")

    de = sub.add_parser("describe", help="a schedule's definition, state, counts and recent runs (JSON)")
    de.add_argument("id")

    for verb, what in (
        ("pause", "pause a schedule (no runs start)"),
        ("unpause", "let a schedule run again"),
    ):
        pa = sub.add_parser(verb, help=what)
        pa.add_argument("id")
        pa.add_argument("--note", help="why (shown by describe)")

    tr = sub.add_parser("trigger", help="start a run now (the overlap policy still applies)")
    tr.add_argument("id")
    tr.add_argument(
        "--overlap", choices=list(s.OVERLAP_POLICIES), help="this time only (default: the schedule's)"
    )

    bf = sub.add_parser(
        "backfill",
        help="run the times of a past period as the schedule would have (same run ids, same folders)",
        description="Starts the runs the schedule had (or would have had) between --start and --end, "
        "each with its own scheduled time: the same workflow ids and folders as the originals, so a "
        "failed run's folder resumes where it stopped. Times without an offset are in the schedule's "
        "time zone.",
    )
    bf.add_argument("id")
    bf.add_argument("--start", required=True, help="first scheduled time, e.g. 2026-12-01T02:00")
    bf.add_argument("--end", help="last scheduled time (default: --start)")
    bf.add_argument(
        "--overlap",
        choices=list(s.OVERLAP_POLICIES),
        default="buffer-all",
        help="between these runs and others (default buffer-all: one after another)",
    )

    dl = sub.add_parser("delete", help="delete schedules (running batches carry on)")
    dl.add_argument("ids", nargs="*", metavar="id")
    dl.add_argument("--owner", help="delete every schedule this owner manages (the chart's uninstall hook)")
    dl.add_argument("--missing-ok", action="store_true", help="a schedule that does not exist is no error")


async def run(args: argparse.Namespace) -> int:
    """Run one ``schedule`` command: 0 done, 2 a mistake to fix (a message, no traceback)."""
    try:
        return await _run(args)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


async def _run(args: argparse.Namespace) -> int:
    settings = TemporalSettings()
    command = args.schedule_command
    # What can be checked without Temporal is checked before connecting.
    config = _config_from_flags(args, settings) if command == "create" else None
    listed = _load_list(args) if command == "apply" else None
    client = await connect(settings)
    match command:
        case "create":
            assert config is not None
            outcome = await s.create_or_update(client, config, update=args.update)
            await _report(client, config.id, outcome)
        case "apply":
            for schedule_id, outcome in await s.apply(client, listed, args.owner, settings.task_queue):
                print(f"{schedule_id}: {outcome}")
        case "list":
            await _list(client)
        case "describe":
            print((await s.view(client, args.id)).model_dump_json(indent=2))
        case "pause" | "unpause":
            handle = client.get_schedule_handle(args.id)
            await s.describe(handle)  # NOT_FOUND -> NoSuchSchedule
            note = args.note or f"{command}d with batch-inference"
            await (handle.pause(note=note) if command == "pause" else handle.unpause(note=note))
            print(f"{args.id}: {command}d")
        case "trigger":
            return await _trigger(client.get_schedule_handle(args.id), args.overlap)
        case "backfill":
            await _backfill(client, args)
        case "delete":
            return await _delete(client, args)
    return 0


def _config_from_flags(args: argparse.Namespace, settings: TemporalSettings) -> s.ScheduleConfig:
    from services.cli import abs_uri  # here: services.cli imports this module

    data, tuning = split_settings(args.set)  # submit's --set: unknown keys named, values parsed
    return s.checked(
        {
            "id": args.id,
            "cron": args.cron,
            "every": args.every,
            "time_zone": args.time_zone,
            "input": [abs_uri(u) for u in args.input] if len(args.input) > 1 else abs_uri(args.input[0]),
            "output": abs_uri(args.output),
            "model": args.model,
            "set": {**data, **tuning},
            "max_error_ratio": args.max_error_ratio,
            "priority": args.priority,
            "fairness_key": args.fairness_key,
            "fairness_weight": args.fairness_weight,
            "overlap": args.overlap,
            "catchup_window": args.catchup_window,
            "paused": args.paused,
            "task_queue": args.task_queue or settings.task_queue,
        }
    )


def _load_list(args: argparse.Namespace) -> Any:
    if args.json is not None:
        text = args.json
    elif str(args.file) == "-":
        text = sys.stdin.read()
    else:
        try:
            text = args.file.read_text()
        except OSError as exc:
            raise CommandError(f"cannot read {args.file}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CommandError(f"the schedule list is neither JSON nor YAML: {exc}") from None
    if isinstance(data, dict) and "schedules" in data:
        data = data["schedules"]  # a values file's section
    return data or []


async def _report(client: Client, schedule_id: str, outcome: s.Outcome) -> None:
    seen = await s.view(client, schedule_id, statuses=0)
    if outcome == s.Outcome.UNCHANGED:
        print(f"schedule {schedule_id!r} exists with this definition: nothing to change")
    else:
        print(f"schedule {schedule_id!r} {outcome}")
    local = zone(seen.config.time_zone) if seen.config else None
    upcoming = ", ".join(t.astimezone(local).isoformat() for t in seen.next_runs) or "-"
    state = "paused" if seen.paused else f"next runs {upcoming}"
    print(f"  {state}; runs are named {schedule_id}-<scheduled time>, e.g. {_example_id(seen)}")


def _example_id(seen: s.ScheduleView) -> str:
    when = seen.next_runs[0] if seen.next_runs else None
    return f"{seen.id}-{when.strftime('%Y-%m-%dT%H:%M:%SZ')}" if when else f"{seen.id}-2026-12-01T00:00:00Z"


async def _list(client: Client) -> None:
    ids = await s.batch_schedule_ids(client)
    views = await asyncio.gather(*(s.view(client, i, statuses=1) for i in ids))
    rows = [("ID", "STATE", "WHEN", "TIME ZONE", "NEXT RUN", "LAST RUN")]
    for v in views:
        when = (v.config.cron or f"every {v.config.every}") if v.config else "(not made by batch-inference)"
        last = v.recent_runs[-1] if v.recent_runs else None
        rows.append(
            (
                v.id,
                "paused" if v.paused else "active",
                when,
                v.config.time_zone if v.config else "-",
                v.next_runs[0].astimezone(zone(v.config.time_zone) if v.config else None).isoformat()
                if v.next_runs and not v.paused
                else "-",
                f"{last.workflow_id} ({last.status or 'gone'})" if last else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if len(rows) == 1:
        print("(no schedules: `batch-inference schedule create --help`)", file=sys.stderr)


async def _trigger(handle: ScheduleHandle, overlap: str | None) -> int:
    before = (await s.describe(handle)).info
    await handle.trigger(overlap=s.OVERLAP_POLICIES[overlap] if overlap else None)
    # The schedule acts asynchronously: watch its counters to say what the trigger did.
    for _ in range(50):
        info = (await s.describe(handle)).info
        if info.num_actions > before.num_actions:
            newest = info.recent_actions[-1].action
            name = newest.workflow_id if isinstance(newest, ScheduleActionExecutionStartWorkflow) else "?"
            print(f"{handle.id}: started {name}", file=sys.stderr)
            print(name)  # for scripts, as submit prints its workflow id
            return 0
        if info.num_actions_skipped_overlap > before.num_actions_skipped_overlap:
            running = ", ".join(
                r.workflow_id
                for r in info.running_actions
                if isinstance(r, ScheduleActionExecutionStartWorkflow)
            )
            print(
                f"{handle.id}: skipped, the previous run is still going ({running}; overlap policy)",
                file=sys.stderr,
            )
            return 0
        await asyncio.sleep(0.2)
    print(
        f"{handle.id}: triggered (no run seen yet: `batch-inference schedule describe {handle.id}`)",
        file=sys.stderr,
    )
    return 0


async def _backfill(client: Client, args: argparse.Namespace) -> None:
    seen = await s.view(client, args.id, statuses=0)
    local = zone(seen.config.time_zone if seen.config else "UTC")
    start, end = _time(args.start, local), _time(args.end or args.start, local)
    if end < start:
        raise CommandError(f"--end {args.end} is before --start {args.start}")
    handle = client.get_schedule_handle(args.id)
    # Temporal's range excludes its start: one second earlier takes in a run due at --start.
    backfill = ScheduleBackfill(
        start_at=start - timedelta(seconds=1), end_at=end, overlap=s.OVERLAP_POLICIES[args.overlap]
    )
    try:
        await handle.backfill(backfill)
    except RPCError as exc:
        raise s.refused(args.id, exc) from None
    print(
        f"{args.id}: asked Temporal to start the runs due from {start.isoformat()} to {end.isoformat()} "
        f"(overlap {args.overlap}; `batch-inference schedule describe {args.id}` lists them)"
    )


def _time(text: str, local: tzinfo) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(
            f"{text!r} is not a time: write e.g. 2026-12-01T02:00 or 2026-12-01T01:00:00Z"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=local)


async def _delete(client: Client, args: argparse.Namespace) -> int:
    if not args.ids and not args.owner:
        raise CommandError("name the schedules to delete, or --owner to delete every one an owner manages")
    ids = list(args.ids) + (await s.owned_by(client, args.owner) if args.owner else [])
    for schedule_id in dict.fromkeys(ids):
        outcome = await s.delete(client, schedule_id, missing_ok=args.missing_ok or bool(args.owner))
        said = "deleted" if outcome == s.Outcome.DELETED else "not there (nothing to delete)"
        print(f"{schedule_id}: {said}")
    return 0
