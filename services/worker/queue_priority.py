"""The Temporal ``Priority`` a batch gives its activities. Workflow code: deterministic.

A batch started through the project (``submit``, schedules) carries its priority on the workflow
itself and its activities inherit it; one started by hand (``temporal workflow start --input``)
has it only in its input, so the workflow passes it to each activity it schedules.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.common import Priority

from services.worker.contracts import BatchInferenceInput

# Activities scheduled with the input's priority: a command field older histories lack.
PRIORITY_PATCH = "activity-priority"


def activity_priority(input: BatchInferenceInput) -> Priority:
    """The input's priority, or the default (inherit the workflow's) when it sets none or when
    replaying a history recorded before this change."""
    priority = input.temporal_priority()
    if priority == Priority.default or not workflow.patched(PRIORITY_PATCH):
        return Priority.default
    return priority
