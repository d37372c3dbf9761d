"""Recorded workflow histories (``make record-histories``) and replaying them with the SDK's
``Replayer``: no server, the worker's own data converter and sandbox."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import ActivityTaskScheduledEventAttributes, HistoryEvent
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from services import constants as c
from services.errors import Failure
from services.local.paths import REPO_ROOT
from services.worker.activities import BatchActivities
from services.worker.config import DATA_CONVERTER
from services.worker.file_batch import SERVE_OUTAGE_PATCH
from services.worker.progress_attributes import PUBLISH_PROGRESS_PATCH
from services.worker.queue_priority import PRIORITY_PATCH

HISTORIES = REPO_ROOT / "tests" / "replay" / "histories"
# Core's reason inside the SDK's NondeterminismError, e.g. "[TMPRL1100] Nondeterminism error:
# Timer machine does not handle this event: HistoryEvent(id: 5, ActivityTaskScheduled)".
_REASON = re.compile(r'message: "((?:[^"\\]|\\.)*)"')
# How Temporal's Core SDK records a ``workflow.patched`` call: a marker whose details hold the id.
PATCH_MARKER, PATCH_DATA = "core_patch", "patch-data"
# The input fields the ``priority`` scenario sets (and nothing on the workflow itself).
PRIORITY_INPUT = {"priority": 1, "fairness_key": "replay-tenant", "fairness_weight": 2.0}
# The summary of the timers a batch waiting for Serve sleeps on (file_batch.py).
SERVE_WAIT_SUMMARY = "waiting for Serve"


def history_files() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


def scenario(path: Path) -> str:
    """``file-continue-as-new.run2.json`` -> ``file-continue-as-new``."""
    return path.name.split(".")[0]


def load_history(path: Path) -> WorkflowHistory:
    """A history as ``WorkflowHistory.to_json()`` or ``temporal workflow show --output json``
    wrote it; the workflow id from its first event (it decides e.g. a retry's folder)."""
    text = path.read_text()
    started = json.loads(text)["events"][0]["workflowExecutionStartedEventAttributes"]
    return WorkflowHistory.from_json(started.get("workflowId") or path.stem, text)


async def replay(history: WorkflowHistory, workflow: type) -> None:
    """Replay ``history`` on ``workflow``; raises the SDK's error on any nondeterminism."""
    replayer = Replayer(workflows=[workflow], data_converter=DATA_CONVERTER)
    await replayer.replay_workflow(history)


def reason(error: BaseException) -> str:
    """The replay failure in one line: Core's message naming the event, when there is one."""
    found = _REASON.search(str(error))
    return found.group(1) if found else str(error)


# --- what a history holds: the commands a scenario was recorded to cover ---------------------------


def patches(events: Iterable[HistoryEvent]) -> set[str]:
    """The ids of the ``workflow.patched`` markers in a history."""
    found = set()
    for e in events:
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            marker = e.marker_recorded_event_attributes
            if marker.marker_name == PATCH_MARKER:
                found.add(json.loads(marker.details[PATCH_DATA].payloads[0].data)["id"])
    return found


def scheduled(events: Iterable[HistoryEvent], activity: str) -> list[ActivityTaskScheduledEventAttributes]:
    """Every ActivityTaskScheduled of the activity type ``activity``."""
    return [
        e.activity_task_scheduled_event_attributes
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == activity
    ]


def timer_summaries(events: Iterable[HistoryEvent]) -> list[str | None]:
    """The summary of every TimerStarted (``workflow.sleep(..., summary=...)``); None: none given
    (e.g. the timeout of a ``workflow.wait``)."""
    return [
        json.loads(e.user_metadata.summary.data) if e.user_metadata.HasField("summary") else None
        for e in events
        if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED
    ]


def upserted(events: Iterable[HistoryEvent]) -> list[dict[str, object]]:
    """The search attributes of every UpsertWorkflowSearchAttributes: name -> value."""
    upserts = [
        e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
        for e in events
        if e.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
    ]
    return [{name: json.loads(payload.data) for name, payload in fields.items()} for fields in upserts]


def activity_failure_types(events: Iterable[HistoryEvent]) -> list[str]:
    """The application failure type of every ActivityTaskFailed (e.g. ``ServeUnavailable``)."""
    return [
        e.activity_task_failed_event_attributes.failure.application_failure_info.type
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED
    ]


def evidence_missing(name: str, events: list[HistoryEvent]) -> list[str]:
    """What the recording ``name`` (a scenario of the newest patches) was made to show that
    ``events`` lack: empty when all of it is there, or for another scenario."""
    if name == "progress-published":
        published = upserted(events)
        checks = {
            f"a {PUBLISH_PROGRESS_PATCH!r} patch marker": PUBLISH_PROGRESS_PATCH in patches(events),
            "upserts of both progress attributes": any(
                set(c.PROGRESS_SEARCH_ATTRIBUTES) <= set(attrs) for attrs in published
            ),
            "a published 'completed' status last": bool(published)
            and published[-1].get(c.PROGRESS_STATUS_ATTRIBUTE) == "completed",
            "a publish timer (the progress held back until the interval ends)": None
            in timer_summaries(events),
        }
    elif name == "priority":
        shards = scheduled(events, BatchActivities.process_shard.__name__)
        started = events[0].workflow_execution_started_event_attributes
        checks = {
            f"an {PRIORITY_PATCH!r} patch marker": PRIORITY_PATCH in patches(events),
            "no priority on the workflow (only the input has one)": not started.priority.ListFields(),
            "shards scheduled": bool(shards),
            f"every shard scheduled with the input's priority {PRIORITY_INPUT}": all(
                (s.priority.priority_key, s.priority.fairness_key, s.priority.fairness_weight)
                == tuple(PRIORITY_INPUT.values())
                for s in shards
            ),
        }
    elif name == "serve-outage":
        checks = {
            f"a {SERVE_OUTAGE_PATCH!r} patch marker": SERVE_OUTAGE_PATCH in patches(events),
            f"a shard given up with {Failure.SERVE_UNAVAILABLE}": str(Failure.SERVE_UNAVAILABLE)
            in activity_failure_types(events),
            f"a {SERVE_WAIT_SUMMARY!r} timer": SERVE_WAIT_SUMMARY in timer_summaries(events),
            "a check_serve activity scheduled": bool(scheduled(events, BatchActivities.check_serve.__name__)),
            "the batch completed": events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
        }
    else:
        return []
    return [what for what, there in checks.items() if not there]
