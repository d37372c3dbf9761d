"""Recurring batches on Temporal Schedules.

A schedule is defined by a ``ScheduleConfig`` (the CLI's flags, an entry of the chart's
``schedules:`` values). It becomes a Temporal Schedule whose action starts the BatchInference
workflow with URI templates (``services/worker/uri_templates.py``), and the definition itself is
kept in the action's memo: creating the same definition again is recognised as unchanged, a
changed one is updated in place (never a second schedule), and ``owner`` marks the schedules a
Helm release manages so the ones it no longer lists are deleted.

Temporal names each run ``<schedule id>-<scheduled time, RFC 3339 UTC>`` (Server 1.32: the action's
workflow id with ``-2026-12-01T00:00:00Z`` appended), and the workflow fills its templates from the
same time, so a re-delivered run has the same id and writes the same folders.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleDescription,
    ScheduleHandle,
    ScheduleIntervalSpec,
    ScheduleListActionStartWorkflow,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from services import constants as c
from services.errors import CommandError
from services.worker.contracts import BatchInferenceInput, ScheduleContext
from services.worker.uri_templates import zone

# The action memo key holding the definition a schedule was made from.
CONFIG_MEMO = "batch_inference_schedule"

Overlap = Literal["skip", "buffer-one", "buffer-all", "cancel-other", "terminate-other", "allow-all"]
OVERLAP_POLICIES: dict[str, ScheduleOverlapPolicy] = {
    "skip": ScheduleOverlapPolicy.SKIP,
    "buffer-one": ScheduleOverlapPolicy.BUFFER_ONE,
    "buffer-all": ScheduleOverlapPolicy.BUFFER_ALL,
    "cancel-other": ScheduleOverlapPolicy.CANCEL_OTHER,
    "terminate-other": ScheduleOverlapPolicy.TERMINATE_OTHER,
    "allow-all": ScheduleOverlapPolicy.ALLOW_ALL,
}
DEFAULT_CATCHUP_WINDOW = "1d"
MIN_CATCHUP = timedelta(seconds=10)  # Temporal's own floor

_DURATION = re.compile(r"(\d+)([dhms])")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> timedelta:
    """``1d``, ``6h``, ``90m``, ``1h30m``, ``45s`` (as Temporal's CLI writes them, plus days)."""
    if not text or _DURATION.sub("", text) or not _DURATION.findall(text):
        raise ValueError(f"{text!r} is not a duration: write e.g. 30s, 15m, 1h30m or 1d")
    return timedelta(seconds=sum(int(n) * _UNITS[unit] for n, unit in _DURATION.findall(text)))


class ScheduleConfig(BaseModel):
    """One recurring batch. Keys in camelCase as in the chart's values (``timeZone``); the snake_case
    names work too. Persisted in the schedule's action memo."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$", description="schedule id")
    cron: str | None = Field(None, description="cron expression (Temporal's: 5-7 fields or @daily, ...)")
    every: str | None = Field(None, description="interval, e.g. 1h, 30m, 1d; '6h/5h' = every 6 h at +5 h")
    time_zone: str = Field("UTC", description="IANA time zone of the cron and of the URI templates")
    input: str | list[str] = Field(description="input URI template(s), e.g. s3://b/events/date={date}/")
    output: str = Field(description="output folder template, e.g. s3://b/scored/{date}/")
    model: str | None = None
    set: dict[str, Any] = Field(default_factory=dict, description="data options and tuning, as --set")
    max_error_ratio: float = Field(0.0, ge=0, le=1)
    priority: int | None = Field(None, description="1 (runs first) to 5 (last); None = 3")
    fairness_key: str | None = Field(None, description="who the runs are for, e.g. a team")
    fairness_weight: float | None = Field(None, description="the key's share relative to others'")
    overlap: Overlap = Field("skip", description="when the previous run is still going")
    catchup_window: str = Field(DEFAULT_CATCHUP_WINDOW, description="how late a missed run may still start")
    paused: bool = False
    task_queue: str = Field(c.DEFAULT_TASK_QUEUE, min_length=1)
    owner: str | None = Field(None, description="who manages it, e.g. helm:<namespace>/<release>")

    @model_validator(mode="after")
    def _check(self) -> ScheduleConfig:
        if (self.cron is None) == (self.every is None):
            raise ValueError("give exactly one of cron or every")
        if self.every is not None:
            self.interval()
        if self.cron is not None and not self.cron.strip():
            raise ValueError("cron is empty")
        if parse_duration(self.catchup_window) < MIN_CATCHUP:
            raise ValueError("catchup window is at least 10s (Temporal's minimum)")
        zone(self.time_zone)
        return self

    def interval(self) -> ScheduleIntervalSpec:
        assert self.every is not None
        every, _, offset = self.every.partition("/")
        spec = ScheduleIntervalSpec(
            every=parse_duration(every), offset=parse_duration(offset) if offset else None
        )
        if spec.every <= timedelta(0):
            raise ValueError("every must be longer than 0s")
        return spec

    def batch(self) -> BatchInferenceInput:
        """The workflow input each run starts with: the same as ``submit`` builds from these flags."""
        from services.cli import build_input  # here: services.cli imports this module's CLI

        args = argparse.Namespace(
            inline=None,
            input=[self.input] if isinstance(self.input, str) else list(self.input),
            output=self.output,
            model=self.model,
            max_error_ratio=self.max_error_ratio,
            priority=self.priority,
            fairness_key=self.fairness_key,
            fairness_weight=self.fairness_weight,
            set=[f"{key}={json.dumps(value)}" for key, value in self.set.items()],
        )
        batch = build_input(args)
        return BatchInferenceInput.model_validate(
            {**batch.model_dump(exclude_unset=True), "schedule": ScheduleContext(time_zone=self.time_zone)}
        )

    def schedule(self) -> Schedule:
        batch = self.batch()
        if self.cron is not None:
            spec = ScheduleSpec(cron_expressions=[self.cron], time_zone_name=self.time_zone)
        else:
            spec = ScheduleSpec(intervals=[self.interval()], time_zone_name=self.time_zone)
        return Schedule(
            action=ScheduleActionStartWorkflow(
                c.WORKFLOW_NAME,
                batch,
                id=self.id,  # Temporal appends "-<scheduled time>" to each run's id
                task_queue=self.task_queue,
                priority=batch.temporal_priority(),
                memo={CONFIG_MEMO: self.model_dump(mode="json", by_alias=True, exclude_none=True)},
            ),
            spec=spec,
            policy=SchedulePolicy(
                overlap=OVERLAP_POLICIES[self.overlap], catchup_window=parse_duration(self.catchup_window)
            ),
            state=ScheduleState(paused=self.paused, note=f"managed by {self.owner}" if self.owner else None),
        )


def checked(config: dict[str, Any] | ScheduleConfig) -> ScheduleConfig:
    """A definition validated in full (its batch input too), or a ``CommandError`` saying which
    schedule is wrong and how."""
    name = config.id if isinstance(config, ScheduleConfig) else config.get("id", "?")
    try:
        config = config if isinstance(config, ScheduleConfig) else ScheduleConfig.model_validate(config)
        config.batch()
    except ValidationError as exc:
        raise CommandError(f"schedule {name!r}: {_validation_message(exc)}") from None
    except (CommandError, ValueError) as exc:  # a --set key or value, a template, a time zone
        raise CommandError(f"schedule {name!r}: {exc}") from None
    return config


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        ctx_error = (error.get("ctx") or {}).get("error")
        message = str(ctx_error) if isinstance(ctx_error, ValueError) else error["msg"]
        where = ".".join(str(p) for p in error["loc"])
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


# --- Temporal ---------------------------------------------------------------------------------


class Outcome(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    DELETED = "deleted"
    MISSING = "missing"


class NoSuchSchedule(CommandError):
    def __init__(self, schedule_id: str):
        super().__init__(f"no schedule {schedule_id!r} (see `batch-inference schedule list`)")
        self.schedule_id = schedule_id


class ScheduleDiffers(CommandError):
    def __init__(self, schedule_id: str, differences: list[str]):
        super().__init__(
            f"schedule {schedule_id!r} exists with another definition ({'; '.join(differences)}): "
            "pass --update to change it in place"
        )


class NotOurs(CommandError):
    """A schedule another owner manages (a Helm release, or none: made by hand)."""

    def __init__(self, schedule_id: str, owner: str | None, wanted: str | None):
        me = wanted or "the CLI"
        if owner:
            message = f"schedule {schedule_id!r} is managed by {owner}, not {me}: change it in its values"
        else:
            message = (
                f"schedule {schedule_id!r} was made outside {me}: delete it first "
                f"(`batch-inference schedule delete {schedule_id}`) or choose another id"
            )
        super().__init__(message)
        self.schedule_id, self.owner = schedule_id, owner


def refused(schedule_id: str, exc: RPCError) -> CommandError:
    """Temporal's answer to a bad schedule (invalid cron or time zone, ...), by status code."""
    if exc.status == RPCStatusCode.NOT_FOUND:
        return NoSuchSchedule(schedule_id)
    if exc.status == RPCStatusCode.INVALID_ARGUMENT:
        return CommandError(f"Temporal refused schedule {schedule_id!r}: {exc.message}")
    raise exc


async def describe(handle: ScheduleHandle) -> ScheduleDescription:
    try:
        return await handle.describe()
    except RPCError as exc:
        raise refused(handle.id, exc) from None


def stored_config(client: Client, description: ScheduleDescription) -> ScheduleConfig | None:
    """The definition a schedule was made from; None if batch-inference did not make it."""
    action = description.schedule.action
    memo = getattr(action, "memo", None) or {}
    payload = memo.get(CONFIG_MEMO)
    if payload is None:
        return None
    value = (
        payload
        if isinstance(payload, dict)
        else client.data_converter.payload_converter.from_payload(payload)
    )
    try:
        return ScheduleConfig.model_validate(value)
    except ValidationError:
        return None  # written by another version: treated as not ours to compare


def differences(current: ScheduleConfig | None, paused: bool, wanted: ScheduleConfig) -> list[str]:
    if current is None:
        return ["made without batch-inference"]
    changed = [
        name
        for name in ScheduleConfig.model_fields
        if name != "paused" and getattr(current, name) != getattr(wanted, name)
    ]
    if paused != wanted.paused:
        changed.append("paused" if paused else "not paused")
    return changed


async def create_or_update(client: Client, config: ScheduleConfig, update: bool) -> Outcome:
    """Create the schedule; if it exists: unchanged, updated in place (``update``), or refused."""
    config = checked(config)
    schedule = config.schedule()
    handle = client.get_schedule_handle(config.id)
    try:
        await client.create_schedule(config.id, schedule)
        return Outcome.CREATED
    except ScheduleAlreadyRunningError:
        pass
    except RPCError as exc:
        raise refused(config.id, exc) from None
    description = await describe(handle)
    current = stored_config(client, description)
    current_owner = current.owner if current is not None else None
    if current_owner != config.owner:
        raise NotOurs(config.id, current_owner, config.owner)
    changed = differences(current, description.schedule.state.paused, config)
    if not changed:
        return Outcome.UNCHANGED
    if not update:
        raise ScheduleDiffers(config.id, changed)

    def replace(_: ScheduleUpdateInput) -> ScheduleUpdate:
        return ScheduleUpdate(schedule=schedule)

    try:
        await handle.update(replace)
    except RPCError as exc:
        raise refused(config.id, exc) from None
    return Outcome.UPDATED


async def batch_schedule_ids(client: Client) -> list[str]:
    """Every schedule that starts BatchInference workflows (Temporal visibility: a schedule made a
    moment ago may not be listed yet)."""
    ids = []
    async for entry in await client.list_schedules():
        action = entry.schedule.action if entry.schedule else None
        if isinstance(action, ScheduleListActionStartWorkflow) and action.workflow == c.WORKFLOW_NAME:
            ids.append(entry.id)
    return sorted(ids)


async def owned_by(client: Client, owner: str) -> list[str]:
    owned = []
    for schedule_id in await batch_schedule_ids(client):
        try:
            description = await client.get_schedule_handle(schedule_id).describe()
        except RPCError:
            continue  # deleted meanwhile
        config = stored_config(client, description)
        if config is not None and config.owner == owner:
            owned.append(schedule_id)
    return owned


async def delete(client: Client, schedule_id: str, missing_ok: bool = False) -> Outcome:
    try:
        await client.get_schedule_handle(schedule_id).delete()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND and missing_ok:
            return Outcome.MISSING
        raise refused(schedule_id, exc) from None
    return Outcome.DELETED


async def apply(
    client: Client, configs: list[dict[str, Any]], owner: str | None, task_queue: str
) -> list[tuple[str, Outcome]]:
    """Make Temporal hold exactly these schedules: create or update each; with ``owner``, delete
    the schedules it owns that are no longer listed. Every definition is checked before any
    change (Temporal itself checks the cron expressions, when each is written). Entries without
    a task queue get ``task_queue``."""
    if not isinstance(configs, list) or not all(isinstance(raw, dict) for raw in configs):
        raise CommandError("schedules: expected a list of schedule definitions (objects)")
    wanted = [
        checked(
            {**raw, "owner": owner}
            if "taskQueue" in raw or "task_queue" in raw
            else {**raw, "owner": owner, "taskQueue": task_queue}
        )
        for raw in configs
    ]
    ids = [config.id for config in wanted]
    if duplicates := sorted({i for i in ids if ids.count(i) > 1}):
        raise CommandError(f"schedule ids listed twice: {', '.join(duplicates)}")
    results = [(config.id, await create_or_update(client, config, update=True)) for config in wanted]
    if owner:
        for schedule_id in await owned_by(client, owner):
            if schedule_id not in ids:
                results.append((schedule_id, await delete(client, schedule_id, missing_ok=True)))
    return results


# --- what describe and list show -----------------------------------------------------------------


class RunView(BaseModel):
    workflow_id: str
    scheduled_at: datetime
    started_at: datetime
    status: str | None = Field(None, description="the run's status now (completed, failed, ...)")


class ScheduleView(BaseModel):
    id: str
    config: ScheduleConfig | None = Field(description="its definition; None: not made by batch-inference")
    paused: bool
    note: str | None
    runs_started: int
    skipped_overlap: int = Field(description="runs not started because the previous one was running")
    missed_catchup_window: int = Field(description="runs not started because Temporal was too late")
    running: list[str]
    recent_runs: list[RunView] = Field(description="the 10 most recent runs, oldest first")
    next_runs: list[datetime]
    created_at: datetime
    updated_at: datetime | None


async def run_status(client: Client, workflow_id: str) -> str | None:
    """A run's status now, following continue-as-new (``None`` if Temporal no longer has it)."""
    try:
        status = (await client.get_workflow_handle(workflow_id).describe()).status
    except RPCError:
        return None
    return status.name.lower() if status is not None else None


async def view(client: Client, schedule_id: str, statuses: int = 10) -> ScheduleView:
    """What a schedule is and has done; the status of its ``statuses`` most recent runs."""
    description = await describe(client.get_schedule_handle(schedule_id))
    info, state = description.info, description.schedule.state
    recent = [
        RunView(
            workflow_id=result.action.workflow_id,
            scheduled_at=result.scheduled_at,
            started_at=result.started_at,
        )
        for result in info.recent_actions
        if isinstance(result.action, ScheduleActionExecutionStartWorkflow)
    ]
    looked_up = recent[len(recent) - statuses :] if statuses else []
    for run, status in zip(
        looked_up, await asyncio.gather(*(run_status(client, r.workflow_id) for r in looked_up)), strict=True
    ):
        run.status = status
    return ScheduleView(
        id=schedule_id,
        config=stored_config(client, description),
        paused=state.paused,
        note=state.note or None,
        runs_started=info.num_actions,
        skipped_overlap=info.num_actions_skipped_overlap,
        missed_catchup_window=info.num_actions_missed_catchup_window,
        running=[
            r.workflow_id for r in info.running_actions if isinstance(r, ScheduleActionExecutionStartWorkflow)
        ],
        recent_runs=recent,
        next_runs=list(info.next_action_times[:3]),
        created_at=info.created_at,
        updated_at=info.last_updated_at,
    )
