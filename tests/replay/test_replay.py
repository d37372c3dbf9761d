"""Every recorded history (``make record-histories``) replays on the current workflow code: a
change that would break batches running while a new worker version rolls out fails here, naming
the history and the event. And a change made without ``workflow.patched`` is caught, while the
same change behind a patch replays.

Fast: the SDK's ``Replayer``, no server.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory
from temporalio.workflow import NondeterminismError

from services.worker.file_batch import SERVE_OUTAGE_PATCH
from services.worker.progress_attributes import PUBLISH_PROGRESS_PATCH
from services.worker.queue_priority import PRIORITY_PATCH
from services.worker.workflows import BatchInferenceWorkflow
from tests.helpers.replay import (
    HISTORIES,
    evidence_missing,
    history_files,
    load_history,
    patches,
    reason,
    replay,
    scenario,
)
from tests.replay.changed_workflow import PatchedChange, UnpatchedChange

FILES = history_files()
# What the histories cover (tests/replay/record.py records them): dropping one fails here.
SCENARIOS = {
    "file-continue-as-new",  # a file batch through three runs (each run's history)
    "inline",
    "cancelled",  # shards running when it was cancelled
    "resumed",  # the cancelled batch started again on its folder
    "error-budget",  # failed by its error budget with shards still running
    "worker-killed",  # a shard retried after its worker was SIGKILLed
    "parquet-options",  # Parquet in with input_columns, Parquet out with keep_columns
    "with-failures",  # completed with failed records ...
    "retry",  # ... and the retry_of batch re-running them
    "scheduled",  # a recurring batch's run for a given scheduled_time
    # Recorded on the code of the patches below (the ones above predate them):
    "progress-published",  # search-attribute upserts and the publish timer (publish-progress)
    "priority",  # the input's priority and fairness on every shard (activity-priority)
    "serve-outage",  # shards giving up on a stopped Serve, timers, check_serve (wait-out-serve-outages)
}
# The patches whose commands the histories cover: each both ways, old path and new.
PATCHES = {SERVE_OUTAGE_PATCH, PRIORITY_PATCH, PUBLISH_PROGRESS_PATCH}


def test_the_histories_cover_every_scenario() -> None:
    assert {scenario(path) for path in FILES} == SCENARIOS
    chain = [path.name for path in FILES if scenario(path) == "file-continue-as-new"]
    assert len(chain) >= 3, f"every run of the continue-as-new chain: {chain}"

    def events(name: str) -> list[HistoryEvent]:
        return list(load_history(HISTORIES / f"{name}.json").events)

    def kinds(name: str) -> set[int]:
        return {e.event_type for e in events(name)}

    # What made each one worth recording, so a re-recording that missed it fails here.
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW in kinds("file-continue-as-new.run2")
    assert {
        EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED,
    } <= kinds("cancelled"), "cancelled with shards running"
    assert {
        EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
    } <= kinds("error-budget"), "failed with shards running"
    attempts = [
        e.activity_task_started_event_attributes.attempt
        for e in events("worker-killed")
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    assert max(attempts) >= 2, "a shard retried after its worker was killed"
    for name in ("progress-published", "priority", "serve-outage"):
        assert evidence_missing(name, events(name)) == [], f"{name}.json lacks what it was recorded for"


def test_every_patch_is_replayed_both_ways() -> None:
    """A history recorded before each patch (its old path: no marker) and one after (its new
    commands), so a change to either path is caught."""
    markers = {path.name: patches(load_history(path).events) for path in FILES}
    for patch in sorted(PATCHES):
        assert any(patch in found for found in markers.values()), f"no history takes {patch!r}"
        assert any(patch not in found for found in markers.values()), f"no history predates {patch!r}"


@pytest.mark.parametrize("path", FILES, ids=[path.stem for path in FILES])
async def test_every_history_replays_on_the_current_workflow(path: Path) -> None:
    history = load_history(path)
    try:
        await replay(history, BatchInferenceWorkflow)
    except Exception as exc:
        pytest.fail(
            f"{path.name} (workflow {history.workflow_id}, run {history.run_id}) no longer replays: "
            f"{reason(exc)}. A batch started before this change would fail the same way on the new "
            "worker: put the change behind workflow.patched() (README: Changing the workflow safely).",
            pytrace=False,
        )


def first_command(history: WorkflowHistory) -> HistoryEvent:
    """The event of the first command the workflow gave: after its first task completed."""
    events = list(history.events)
    completed = next(
        i for i, e in enumerate(events) if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    )
    return events[completed + 1]


@pytest.mark.parametrize("path", FILES, ids=[path.stem for path in FILES])
async def test_an_unpatched_change_is_caught_and_a_patched_one_replays(path: Path) -> None:
    """A timer before planning: a command no recorded history has."""
    history = load_history(path)
    with pytest.raises(NondeterminismError) as caught:
        await replay(history, UnpatchedChange)
    why = reason(caught.value)
    assert why.startswith("[TMPRL1100] Nondeterminism error:"), why
    first = first_command(history)
    if first.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
        assert f"HistoryEvent(id: {first.event_id}, ActivityTaskScheduled)" in why, why
    elif patches([first]):  # a workflow.patched() asked before planning (activity-priority)
        (patch,) = patches([first])
        assert f"patch marker encountered for change {patch}, but there is no corresponding" in why, why
    else:  # the plan, a local activity: its marker is recorded once it has run
        assert first.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
        assert "Missing associated machine for LocalActivity(1)" in why, why
    await replay(history, PatchedChange)
