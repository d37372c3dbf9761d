"""Recurring batches without a server: URI templates filled from a scheduled time, schedule
definitions checked and turned into Temporal Schedules, the input field plain batches ignore."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from temporalio import activity
from temporalio.client import ScheduleActionStartWorkflow, ScheduleOverlapPolicy, WorkflowFailureError
from temporalio.common import Priority
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from services import constants as c
from services import schedules as s
from services.errors import CommandError, Failure
from services.worker.contracts import (
    BatchInferenceInput,
    ScheduleContext,
    ShardInput,
    ShardOutput,
    Tuning,
)
from services.worker.uri_templates import PLACEHOLDERS, TemplateError, fill, fill_uris, placeholders
from services.worker.workflows import BatchInferenceWorkflow
from tests.helpers.fake_activities import FakeBatchActivities
from tests.helpers.temporal import time_skipping_env

# 01:30 UTC on 1 Dec 2026 is 02:30 in Berlin, 10:30 in Tokyo and 20:30 on 30 Nov in New York.
WHEN = datetime(2026, 12, 1, 1, 30, 5, tzinfo=UTC)


# --- templates ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        ("UTC", "s3://b/events/date=2026-12-01/h=01/20261201T013005"),
        ("Europe/Berlin", "s3://b/events/date=2026-12-01/h=02/20261201T023005"),
        ("Asia/Tokyo", "s3://b/events/date=2026-12-01/h=10/20261201T103005"),
        ("America/New_York", "s3://b/events/date=2026-11-30/h=20/20261130T203005"),
    ],
)
def test_placeholders_are_read_in_the_schedules_time_zone(zone: str, expected: str) -> None:
    assert fill("s3://b/events/date={date}/h={hour}/{datetime}", WHEN, zone) == expected


def test_every_placeholder_and_literal_braces() -> None:
    template = "/".join("{" + name + "}" for name in PLACEHOLDERS) + "/{{x}}"
    assert fill(template, WHEN, "UTC") == "2026-12-01/2026/12/01/01/30/20261201T013005/{x}"
    assert fill_uris(["a/{date}", "b/{hour}"], WHEN, "UTC") == ["a/2026-12-01", "b/01"]
    assert fill("s3://b/plain/", WHEN, "UTC") == "s3://b/plain/"


def test_daylight_saving_is_the_zones() -> None:
    # Berlin is UTC+2 in summer: 01:30 UTC in July is 03:30 there.
    assert fill("{hour}", datetime(2026, 7, 1, 1, 30, tzinfo=UTC), "Europe/Berlin") == "03"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("s3://b/{dat}/", r"unknown placeholder \{dat\}; valid: \{date\}, \{year\}"),
        ("s3://b/{date:%Y}/", r"unknown placeholder \{date:%Y\}"),
        ("s3://b/{date!r}/", r"unknown placeholder \{date!r\}"),
        ("s3://b/{0}/", r"unknown placeholder \{0\}"),
        ("s3://b/{date/", r"unbalanced braces"),
        ("s3://b/date}/", r"unbalanced braces"),
    ],
)
def test_a_bad_template_is_refused_listing_the_valid_names(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        placeholders(template)


# --- the input field ------------------------------------------------------------------------------


def test_plain_batches_keep_braces_literally() -> None:
    batch = BatchInferenceInput(input_uri="/data/{odd}/in.jsonl", output_uri="/out/{x}")
    assert batch.schedule is None and batch.input_uri == "/data/{odd}/in.jsonl"


def test_a_scheduled_batchs_templates_and_zone_are_checked() -> None:
    ok = BatchInferenceInput(
        input_uri=["s3://b/{date}/", "s3://c/{hour}/"], output_uri="s3://o/{date}", schedule=ScheduleContext()
    )
    assert ok.schedule == ScheduleContext(time_zone="UTC", scheduled_time=None)
    with pytest.raises(ValidationError, match=r"unknown placeholder \{when\}"):
        BatchInferenceInput(input_uri="s3://b/{when}/", output_uri="s3://o/", schedule=ScheduleContext())
    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Olympus'"):
        BatchInferenceInput(
            input_uri="s3://b/{date}/",
            output_uri="s3://o/",
            schedule=ScheduleContext(time_zone="Mars/Olympus"),
        )


# --- definitions ----------------------------------------------------------------------------------

BASE = {"id": "nightly", "input": "s3://b/events/date={date}/", "output": "s3://b/scored/{date}/"}


def test_a_definition_becomes_a_temporal_schedule() -> None:
    config = s.checked(
        {
            **BASE,
            "cron": "0 2 * * *",
            "timeZone": "Europe/Berlin",
            "model": "iris",
            "set": {"output_format": "parquet", "micro_batch_size": 500},
            "overlap": "buffer-one",
            "catchupWindow": "6h",
            "paused": True,
            "taskQueue": "q",
            "owner": "helm:ns/rel",
            "priority": 2,
            "fairnessKey": "team-a",
            "fairnessWeight": 2.5,
        }
    )
    schedule = config.schedule()
    action = schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    # Each run starts with the priority, and its input carries it for its activities.
    assert action.priority == Priority(priority_key=2, fairness_key="team-a", fairness_weight=2.5)
    assert (action.workflow, action.id, action.task_queue) == (c.WORKFLOW_NAME, "nightly", "q")
    (batch,) = action.args
    assert isinstance(batch, BatchInferenceInput)
    assert batch.schedule == ScheduleContext(time_zone="Europe/Berlin")
    assert (batch.priority, batch.fairness_key, batch.fairness_weight) == (2, "team-a", 2.5)
    assert (batch.output_format, batch.tuning.micro_batch_size, batch.model) == ("parquet", 500, "iris")
    assert batch.input_uri == "s3://b/events/date={date}/", "templates travel unfilled"
    assert schedule.spec.cron_expressions == ["0 2 * * *"] and schedule.spec.time_zone_name == "Europe/Berlin"
    assert schedule.policy.overlap == ScheduleOverlapPolicy.BUFFER_ONE
    assert schedule.policy.catchup_window == timedelta(hours=6)
    assert schedule.state.paused and schedule.state.note == "managed by helm:ns/rel"
    # The definition rides along in the action's memo, camelCase as in the chart's values.
    stored = s.ScheduleConfig.model_validate(action.memo[s.CONFIG_MEMO])
    assert stored == config and action.memo[s.CONFIG_MEMO]["timeZone"] == "Europe/Berlin"


def test_intervals_and_defaults() -> None:
    config = s.checked({**BASE, "every": "1d/2h"})
    (interval,) = config.schedule().spec.intervals
    assert (interval.every, interval.offset) == (timedelta(days=1), timedelta(hours=2))
    assert (config.overlap, config.catchup_window, config.time_zone) == ("skip", "1d", "UTC")
    assert config.schedule().policy.overlap == ScheduleOverlapPolicy.SKIP
    assert s.parse_duration("1h30m") == timedelta(minutes=90)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({}, "give exactly one of cron or every"),
        ({"cron": "0 2 * * *", "every": "1h"}, "give exactly one of cron or every"),
        ({"every": "daily"}, "'daily' is not a duration"),
        ({"every": "0s"}, "every must be longer than 0s"),
        ({"every": "1h", "catchupWindow": "5s"}, "at least 10s"),
        ({"every": "1h", "timeZone": "Europe/Atlantis"}, "unknown time zone 'Europe/Atlantis'"),
        ({"every": "1h", "output": "s3://b/{dt}/"}, r"unknown placeholder \{dt\}"),
        ({"every": "1h", "overlap": "queue"}, "overlap: Input should be 'skip'"),
        ({"every": "1h", "set": {"bogus": 1}}, "unknown setting 'bogus'"),
        ({"every": "1h", "set": {"micro_batch_size": 5000}}, "micro_batch_size"),
        ({"every": "1h", "timezone": "UTC"}, "timezone: Extra inputs are not permitted"),
        ({"every": "1h", "id": "two words"}, "id: String should match pattern"),
    ],
)
def test_a_bad_definition_is_refused_naming_the_schedule(change: dict, message: str) -> None:
    with pytest.raises(CommandError, match=message) as err:
        s.checked({**BASE, **change})
    assert str(err.value).startswith("schedule '")


def test_differences_name_what_changed() -> None:
    current = s.checked({**BASE, "cron": "0 2 * * *"})
    assert s.differences(current, False, current) == []
    assert s.differences(current, False, s.checked({**BASE, "cron": "0 3 * * *", "model": "iris"})) == [
        "cron",
        "model",
    ]
    assert s.differences(current, True, current) == ["paused"]
    assert s.differences(None, False, current) == ["made without batch-inference"]


# --- the workflow fills the templates once -----------------------------------------------------------


class Recorder(FakeBatchActivities):
    """Activities that record what the workflow asked for: 4 shards of 10 records."""

    def __init__(self) -> None:
        super().__init__(total=40)

    @activity.defn(name="process_shard")
    async def process_shard(self, input: ShardInput) -> ShardOutput:
        return ShardOutput(shard=input.shard, records=10, succeeded=10, failed=0)


async def test_the_workflow_fills_templates_from_the_given_time_once_across_runs() -> None:
    """A time given in the input (a run for a past date without a schedule) fills the templates
    before planning; the runs after continue-as-new keep the filled URIs."""
    recorder = Recorder()
    batch = BatchInferenceInput(
        input_uri="/in/date={date}/",
        output_uri="/out/{date}/h{hour}",
        schedule=ScheduleContext(time_zone="Europe/Berlin", scheduled_time=WHEN),
        tuning=Tuning(shard_size=10, max_concurrent_shards=1, continue_as_new_after_shards=1),
    )
    env = await time_skipping_env()
    try:
        async with Worker(
            env.client,
            task_queue="sched-unit",
            workflows=[BatchInferenceWorkflow],
            activities=[recorder.plan_batch, recorder.process_shard, recorder.write_summary],
        ):
            result = await env.client.execute_workflow(
                BatchInferenceWorkflow.run, batch, id="sched-unit-1", task_queue="sched-unit"
            )
            assert (result.runs, result.output_uri) == (4, "/out/2026-12-01/h02")
            ((plan,),) = [recorder.plans]
            assert plan.input_uri == "/in/date=2026-12-01/"
            assert recorder.summaries[-1].input_uri == "/in/date=2026-12-01/"

            # Templated, and neither a schedule nor a time: refused at once, saying what to do.
            unscheduled = batch.model_copy(update={"schedule": ScheduleContext()})
            with pytest.raises(WorkflowFailureError) as err:
                await env.client.execute_workflow(
                    BatchInferenceWorkflow.run, unscheduled, id="sched-unit-2", task_queue="sched-unit"
                )
            cause = err.value.cause
            assert isinstance(cause, ApplicationError) and cause.type == Failure.NO_SCHEDULED_TIME
            assert "give schedule.scheduled_time" in cause.message
    finally:
        await env.shutdown()
