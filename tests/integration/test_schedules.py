"""Recurring batches on the real dev server, driven through `batch-inference schedule` as a user
runs it (a process: its exit code and what it prints), with a real worker and Ray Serve:
- a triggered run completes into the folder its templates name for its scheduled time;
- a backfilled time runs under the id Temporal derives from that time, and again into the same
  folder (a re-delivered run);
- `create` again is recognised, `create --update` changes the one schedule in place;
- a trigger while a run is going is skipped (overlap skip), as the schedule's counts and the
  worker's metrics say; a failed run shows on the metrics the alert reads;
- bad definitions are refused with a message and exit code 2;
- the README's `temporal schedule create` line works as written.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import REGISTRY
from temporalio.client import Client, WorkflowExecutionStatus

from services import constants as c
from services import metrics as m
from services.local.processes import venv_bin
from services.worker.contracts import BatchInferenceOutput
from services.worker.schedule_metrics import SchedulePoller
from tests.helpers.cli import run_cli
from tests.helpers.records import iris_records, read_outputs, write_jsonl

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
NOT_YEARLY = "0 0 1 1 *"  # a cron that does not fire during a test: runs come from trigger/backfill


async def schedule(server, queue: str, *args: str, timeout_s: float = 60) -> tuple[int, str, str]:
    """`batch-inference schedule ...` as a process against the dev server, on ``queue``."""
    env = {**os.environ, c.ENV_TEMPORAL_ADDRESS: server.address, c.ENV_TEMPORAL_TASK_QUEUE: queue}
    proc = await asyncio.create_subprocess_exec(
        venv_bin("batch-inference"), "schedule", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.fixture
async def schedule_id(client: Client) -> AsyncIterator[str]:
    """A fresh schedule id; the schedule (if made) and its running runs are gone afterwards."""
    name = f"it-{uuid.uuid4().hex[:8]}"
    yield name
    handle = client.get_schedule_handle(name)
    try:
        running = (await handle.describe()).info.running_actions
        await handle.delete()
    except Exception:
        return
    for run in running:
        try:
            await client.get_workflow_handle(getattr(run, "workflow_id", "")).terminate("test over")
        except Exception:
            pass


def scheduled_time(run_id: str, schedule_id: str) -> datetime:
    """The time Temporal appended to the schedule's workflow id: ``<id>-2026-12-01T00:00:00Z``."""
    suffix = run_id.removeprefix(f"{schedule_id}-")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", suffix), run_id
    return datetime.fromisoformat(suffix)


def assert_every_id_once(records: list[dict], output: Path) -> None:
    results, errors = read_outputs(output)
    assert not errors
    assert Counter(r["id"] for r in results) == Counter(r["id"] for r in records)


async def next_run(client: Client, workflow_id: str, after: str | None = None, timeout_s: float = 30) -> str:
    """The run id of ``workflow_id``'s latest run once it is not ``after`` (a schedule starts runs
    asynchronously)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            run_id = (await client.get_workflow_handle(workflow_id).describe()).run_id
            if run_id and run_id != after:
                return run_id
        except Exception:
            pass
        assert asyncio.get_running_loop().time() < deadline, f"no new run of {workflow_id}"
        await asyncio.sleep(0.2)


def sample(metric: m.Metric, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(metric.prom, labels)


# --- a run, into its templated folder -------------------------------------------------------------


async def test_a_triggered_run_completes_into_its_templated_folder(
    tmp_path, client, temporal_server, run_worker, schedule_id
):
    zone = ZoneInfo("Asia/Tokyo")  # not the machine's zone: the templates are read in this one
    records = iris_records(300, prefix="sched-")
    today = datetime.now(zone)
    for day in (today, today + timedelta(days=1)):  # a run just after midnight finds its folder too
        write_jsonl(tmp_path / "events" / f"date={day:%Y-%m-%d}" / "part-0.jsonl", records)
    async with run_worker() as queue:
        code, out, err = await schedule(
            temporal_server, queue, "create", schedule_id, "--cron", NOT_YEARLY, "--time-zone", "Asia/Tokyo",
            "--input", f"{tmp_path}/events/date={{date}}/", "--output", f"{tmp_path}/out/{{date}}/h{{hour}}",
            "--model", "iris", "--set", "shard_size=100",
        )  # fmt: skip
        assert code == 0, err
        assert f"schedule '{schedule_id}' created" in out

        code, out, err = await schedule(temporal_server, queue, "trigger", schedule_id)
        assert code == 0, err
        run_id = out.strip()
        when = scheduled_time(run_id, schedule_id)
        handle = client.get_workflow_handle(run_id, result_type=BatchInferenceOutput)
        result = await asyncio.wait_for(handle.result(), 600)

    local = when.astimezone(zone)
    folder = tmp_path / "out" / f"{local:%Y-%m-%d}" / f"h{local:%H}"
    assert (result.status, result.succeeded, result.output_uri) == ("completed", 300, str(folder))
    assert_every_id_once(records, folder)
    summary = json.loads((folder / "_summary.json").read_text())
    assert summary["workflow_id"] == run_id
    assert summary["input_uri"] == f"{tmp_path}/events/date={local:%Y-%m-%d}"  # a local path: made absolute
    # The time came from Temporal: the search attribute the schedule set, the id's suffix.
    attributes = (await handle.describe()).search_attributes
    assert attributes["TemporalScheduledStartTime"] == [when]
    assert attributes["TemporalScheduledById"] == [schedule_id]


async def test_a_backfilled_time_runs_under_its_own_id_and_again_into_the_same_folder(
    tmp_path, client, temporal_server, run_worker, schedule_id
):
    """02:00 in Berlin on 2026-12-01 is 01:00 UTC: the run is <id>-2026-12-01T01:00:00Z and
    writes .../2026-12-01/; backfilled again (a re-delivered run), the same id and folder."""
    records = iris_records(200, prefix="bf-")
    write_jsonl(tmp_path / "in" / "2026-12-01" / "a.jsonl", records)
    async with run_worker() as queue:
        code, _, err = await schedule(
            temporal_server, queue, "create", schedule_id, "--cron", "0 2 * * *",
            "--time-zone", "Europe/Berlin", "--model", "iris",
            "--input", f"{tmp_path}/in/{{date}}/", "--output", f"{tmp_path}/out/{{date}}",
            "--paused",  # only the backfills run
        )  # fmt: skip
        assert code == 0, err
        run_id = f"{schedule_id}-2026-12-01T01:00:00Z"
        folder = tmp_path / "out" / "2026-12-01"
        first_run = None
        for attempt in range(2):
            code, _, err = await schedule(
                temporal_server, queue, "backfill", schedule_id, "--start", "2026-12-01T02:00"
            )
            assert code == 0, err
            first_run = await next_run(client, run_id, after=first_run)
            result = await asyncio.wait_for(
                client.get_workflow_handle(
                    run_id, run_id=first_run, result_type=BatchInferenceOutput
                ).result(),
                120,
            )
            assert (result.succeeded, result.output_uri) == (200, str(folder)), attempt
            assert_every_id_once(records, folder)
        # Started again by hand (`resume`, not by the schedule): its scheduled time fills the same folder.
        again = await run_cli(
            "resume", run_id, "--wait", temporal_address=temporal_server.address, task_queue=queue
        )
        assert again.code == 0 and f"resuming in {folder}" in again.err, again.err
        assert_every_id_once(records, folder)
    runs = [w async for w in client.list_workflows(f"WorkflowId = '{run_id}'")]
    assert len(runs) == 3 and {w.status for w in runs} == {WorkflowExecutionStatus.COMPLETED}


# --- create is idempotent, update in place --------------------------------------------------------


async def test_create_again_changes_nothing_and_update_changes_the_one_schedule(
    tmp_path, client, temporal_server, schedule_id
):
    queue = "unused-queue"
    base = [
        "create", schedule_id, "--time-zone", "Europe/Berlin",
        "--input", "s3://bucket/events/date={date}/", "--output", "s3://bucket/scored/{date}/",
        "--model", "iris",
    ]  # fmt: skip
    code, out, err = await schedule(temporal_server, queue, *base, "--cron", "0 2 * * *")
    assert code == 0 and "created" in out, err
    created = (await client.get_schedule_handle(schedule_id).describe()).info.created_at

    code, out, err = await schedule(temporal_server, queue, *base, "--cron", "0 2 * * *")
    assert code == 0, err
    assert "exists with this definition: nothing to change" in out

    code, out, err = await schedule(temporal_server, queue, *base, "--cron", "30 3 * * *")
    assert code == 2 and "exists with another definition (cron)" in err and "--update" in err
    assert "Traceback" not in err

    code, out, err = await schedule(temporal_server, queue, *base, "--cron", "30 3 * * *", "--update")
    assert code == 0 and f"schedule '{schedule_id}' updated" in out, err

    code, out, err = await schedule(temporal_server, queue, "describe", schedule_id)
    assert code == 0, err
    seen = json.loads(out)
    assert seen["config"]["cron"] == "30 3 * * *" and seen["config"]["task_queue"] == queue
    assert [t.endswith("T02:30:00Z") for t in seen["next_runs"]] == [True] * 3  # 03:30 Berlin, winter
    description = await client.get_schedule_handle(schedule_id).describe()
    assert description.info.created_at == created and description.info.last_updated_at is not None

    # One schedule with this id: listed once (visibility catches up within a moment).
    for _ in range(50):
        code, out, err = await schedule(temporal_server, queue, "list")
        if schedule_id in out:
            break
        await asyncio.sleep(0.2)
    assert [line.split()[0] for line in out.splitlines()].count(schedule_id) == 1
    assert "30 3 * * *" in next(line for line in out.splitlines() if line.startswith(schedule_id))


# --- overlap: skip, and what the metrics say --------------------------------------------------------


async def test_a_trigger_while_a_run_is_going_is_skipped(
    tmp_path, client, temporal_server, run_worker, schedule_id
):
    records = iris_records(3000, prefix="slow-")
    write_jsonl(tmp_path / "in" / "slow.jsonl", records)
    async with run_worker() as queue:
        code, _, err = await schedule(
            temporal_server, queue, "create", schedule_id, "--cron", NOT_YEARLY,
            "--input", f"{tmp_path}/in/", "--output", f"{tmp_path}/out/{{datetime}}", "--model", "iris",
            # Slow on purpose: one record per request, one request at a time.
            "--set", "micro_batch_size=1", "--set", "max_in_flight=1", "--set", "max_concurrent_shards=1",
        )  # fmt: skip
        assert code == 0, err
        code, out, err = await schedule(temporal_server, queue, "trigger", schedule_id)
        assert code == 0, err
        run_id = out.strip()
        code, out, err = await schedule(temporal_server, queue, "trigger", schedule_id)
        assert code == 0, err
        assert f"skipped, the previous run is still going ({run_id}; overlap policy)" in err, (out, err)

        info = (await client.get_schedule_handle(schedule_id).describe()).info
        assert (info.num_actions, info.num_actions_skipped_overlap) == (1, 1)
        assert [getattr(r, "workflow_id", None) for r in info.running_actions] == [run_id]

        poller = SchedulePoller(client, queue)
        await poller.poll_once()
        counts = {
            o: sample(m.SCHEDULE_RUNS, schedule_id=schedule_id, outcome=o) for o in m.SCHEDULE_RUN_OUTCOMES
        }
        assert counts == {m.SCHEDULE_STARTED: 1, m.SCHEDULE_SKIPPED: 1, m.SCHEDULE_MISSED: 0}
        assert sample(m.SCHEDULE_LAST_RUN_FAILED, schedule_id=schedule_id) == 0  # still running
        await client.get_workflow_handle(run_id).terminate("overlap seen")


async def test_a_failed_scheduled_run_shows_on_the_metrics(
    tmp_path, client, temporal_server, run_worker, schedule_id
):
    """Its input folder for that date is missing: the run fails (InputNotFound), the worker's
    schedule metrics say so (BatchInferenceScheduledRunFailed reads this), and a completed run
    later clears it."""
    async with run_worker() as queue:
        code, _, err = await schedule(
            temporal_server, queue, "create", schedule_id, "--cron", NOT_YEARLY,
            "--input", f"{tmp_path}/events/{{date}}/{{hour}}{{minute}}/",
            "--output", f"{tmp_path}/out/{{datetime}}", "--model", "iris",
        )  # fmt: skip
        assert code == 0, err
        code, out, err = await schedule(temporal_server, queue, "trigger", schedule_id)
        assert code == 0, err
        run_id = out.strip()
        with pytest.raises(Exception):  # noqa: B017  (WorkflowFailureError: input not found)
            await asyncio.wait_for(client.get_workflow_handle(run_id).result(), 60)
        poller = SchedulePoller(client, queue)
        await poller.poll_once()
        assert sample(m.SCHEDULE_LAST_RUN_FAILED, schedule_id=schedule_id) == 1
        assert sample(m.SCHEDULE_PAUSED, schedule_id=schedule_id) == 0

        # The next run finds its folder (this minute's and the next: the trigger may cross one).
        now = datetime.now(UTC)
        for t in (now, now + timedelta(minutes=1)):
            write_jsonl(tmp_path / "events" / f"{t:%Y-%m-%d}" / f"{t:%H%M}" / "a.jsonl", iris_records(10))
        await asyncio.sleep(1)  # a new second: a new scheduled time, so a new run id
        code, out, err = await schedule(temporal_server, queue, "trigger", schedule_id)
        assert code == 0, err
        await asyncio.wait_for(client.get_workflow_handle(out.strip()).result(), 60)
        await poller.poll_once()
        assert sample(m.SCHEDULE_LAST_RUN_FAILED, schedule_id=schedule_id) == 0

        code, _, err = await schedule(temporal_server, queue, "pause", schedule_id)
        assert code == 0, err
        await poller.poll_once()
        assert sample(m.SCHEDULE_PAUSED, schedule_id=schedule_id) == 1

        code, out, err = await schedule(temporal_server, queue, "delete", schedule_id)
        assert code == 0 and "deleted" in out, err
        await poller.poll_once()
        assert sample(m.SCHEDULE_PAUSED, schedule_id=schedule_id) is None, "a deleted schedule's series go"


# --- bad definitions ------------------------------------------------------------------------------------

BAD = [
    ("invalid cron", ["--cron", "61 * * * *"], "Minute is not in range [0-59]"),
    ("cron with too few fields", ["--cron", "every day"], "does not have 5-7 fields"),
    ("invalid time zone", ["--cron", "0 2 * * *", "--time-zone", "Europe/Atlantis"], "unknown time zone"),
    ("interval that is not one", ["--every", "daily"], "is not a duration"),
]


@pytest.mark.parametrize(("case", "when", "message"), BAD, ids=[b[0] for b in BAD])
async def test_a_bad_schedule_is_refused_with_a_message(temporal_server, schedule_id, case, when, message):
    code, out, err = await schedule(
        temporal_server,
        "q",
        "create",
        schedule_id,
        *when,
        "--input",
        "s3://b/{date}/",
        "--output",
        "s3://b/o/{date}",
    )
    assert code == 2, (out, err)
    assert message in err and err.startswith("error: ") and "Traceback" not in err


async def test_a_template_naming_an_unknown_placeholder_is_refused_listing_the_valid_ones(
    temporal_server, schedule_id
):
    code, out, err = await schedule(
        temporal_server, "q", "create", schedule_id, "--cron", "0 2 * * *",
        "--input", "s3://b/events/dt={day_of_year}/", "--output", "s3://b/o/{date}",
    )  # fmt: skip
    assert code == 2, (out, err)
    assert "unknown placeholder {day_of_year}; valid: {date}, {year}, {month}, {day}, {hour}" in err
    assert "Traceback" not in err


async def test_unknown_schedules_are_named(temporal_server):
    for verb in ("describe", "pause", "trigger", "delete"):
        code, _, err = await schedule(temporal_server, "q", verb, "no-such-schedule")
        assert code == 2 and "no schedule 'no-such-schedule'" in err and "Traceback" not in err, verb
    code, out, err = await schedule(temporal_server, "q", "delete", "no-such-schedule", "--missing-ok")
    assert code == 0 and "not there" in out, err


# --- the README's `temporal schedule create` ------------------------------------------------------------


def readme_command(first_word: str) -> list[str]:
    """The README's shell command starting with ``first_word``, joined and split as sh would."""
    text = README.read_text()
    start = text.index(first_word)
    block = text[start : text.index("\n```", start)]
    lines = []
    for line in block.splitlines():
        lines.append(line.rstrip().removesuffix("\\"))
        if not line.rstrip().endswith("\\"):
            break
    return shlex.split(" ".join(lines))


async def test_the_readme_temporal_schedule_create_works(tmp_path, client, temporal_server, run_worker):
    argv = readme_command("temporal schedule create")
    assert argv[:3] == ["temporal", "schedule", "create"]
    args = dict(zip(argv[3::2], argv[4::2], strict=True))
    payload = json.loads(args["--input"])
    assert payload["schedule"]["time_zone"] == args["--time-zone"]
    name = f"readme-{uuid.uuid4().hex[:6]}"
    data = tmp_path / "data"
    records = iris_records(50, prefix="readme-")
    async with run_worker() as queue:
        # Only what a test must change: where Temporal is, the queue, ids and /data.
        args.update({"--schedule-id": name, "--workflow-id": name, "--task-queue": queue})
        args["--input"] = args["--input"].replace("/data/", f"{data}/")
        when = None
        try:
            proc = await asyncio.create_subprocess_exec(
                venv_bin("temporal"), "schedule", "create", "--address", temporal_server.address,
                *[x for kv in args.items() for x in kv],
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            out, _ = await proc.communicate()
            assert proc.returncode == 0, out.decode()
            zone = ZoneInfo(args["--time-zone"])
            today = datetime.now(zone)
            input_template = json.loads(args["--input"])["input_uri"]
            for day in (today, today + timedelta(days=1)):
                folder = Path(input_template.replace("{date}", f"{day:%Y-%m-%d}"))
                write_jsonl(folder / "part-0.jsonl", records)
            proc = await asyncio.create_subprocess_exec(
                venv_bin("temporal"), "schedule", "trigger", "--address", temporal_server.address,
                "--schedule-id", name, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            out, _ = await proc.communicate()
            assert proc.returncode == 0, out.decode()
            for _ in range(100):
                recent = (await client.get_schedule_handle(name).describe()).info.recent_actions
                if recent:
                    break
                await asyncio.sleep(0.1)
            run_id = getattr(recent[0].action, "workflow_id", "")
            when = scheduled_time(run_id, name)
            result = await asyncio.wait_for(
                client.get_workflow_handle(run_id, result_type=BatchInferenceOutput).result(), 120
            )
        finally:
            await client.get_schedule_handle(name).delete()
    output_template = json.loads(args["--input"])["output_uri"]  # /data/ already swapped for tmp_path
    expected = output_template.replace("{date}", f"{when.astimezone(zone):%Y-%m-%d}")
    assert result.succeeded == 50 and result.output_uri.rstrip("/") == expected.rstrip("/")
    assert_every_id_once(records, Path(expected))
