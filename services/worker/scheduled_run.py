"""A recurring batch's run: its URI templates filled from the time Temporal scheduled it.

Workflow code, imported passed through: ``zoneinfo`` objects do not survive the sandbox's proxies.
The time is the ``TemporalScheduledStartTime`` search attribute a Temporal Schedule sets on every
run it starts (the nominal time, whole seconds, UTC; the workflow id ends with the same time), so
every replay, every worker and a re-delivered run fill in the same folders. Never a clock.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ApplicationError

from services.errors import Failure
from services.worker.contracts import BatchInferenceInput
from services.worker.uri_templates import fill, fill_uris

SCHEDULED_START_TIME = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")


def filled(input: BatchInferenceInput) -> BatchInferenceInput:
    """``input`` with its templates filled; unchanged for a plain batch, and for a continued run
    (``state`` is set: its input was filled by the first run)."""
    context = input.schedule
    if context is None or input.state is not None:
        return input
    when = context.scheduled_time or workflow.info().typed_search_attributes.get(SCHEDULED_START_TIME)
    if when is None:
        raise ApplicationError(
            "this batch's URIs are templates filled from the time a Temporal Schedule started it, and "
            "no schedule started it: give schedule.scheduled_time (e.g. 2026-12-01T00:00:00Z) to run it "
            "for that time, or trigger the schedule (`batch-inference schedule trigger <id>`)",
            type=Failure.NO_SCHEDULED_TIME,
            non_retryable=True,
        )
    zone = context.time_zone
    return input.model_copy(
        update={
            "input_uri": fill_uris(input.input_uri, when, zone) if input.input_uri is not None else None,
            "output_uri": fill(input.output_uri, when, zone) if input.output_uri is not None else None,
            "schedule": context.model_copy(update={"scheduled_time": when}),
        }
    )
