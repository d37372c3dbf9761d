"""What the schedules of this worker's task queue did, on ``/metrics``.

Temporal's server counts a schedule's runs (started, skipped by the overlap policy, missed by the
catch-up window) and exports them only on its own metrics endpoint, which a worker cannot read;
every schedule's description carries the same counts, so they are read from there, as they are,
rather than counted again by workflows. A failed scheduled run is found from the schedule's
recent runs and each run's status.
"""

from __future__ import annotations

import contextlib
import logging

from temporalio.client import (
    Client,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleInfo,
    WorkflowExecutionStatus,
)
from temporalio.service import RPCError

from services import metrics as m
from services.schedules import batch_schedule_ids
from services.worker.telemetry import SCHEDULE_LAST_RUN_FAILED, SCHEDULE_PAUSED, SCHEDULE_RUNS, poll_every

log = logging.getLogger(__name__)

FAILED_STATUSES = frozenset(
    {WorkflowExecutionStatus.FAILED, WorkflowExecutionStatus.TIMED_OUT, WorkflowExecutionStatus.TERMINATED}
)


class SchedulePoller:
    """Every ``interval_s``: each schedule starting BatchInference runs on ``task_queue``, its
    counts, whether it is paused and whether its last finished run failed (series of deleted
    schedules are removed)."""

    def __init__(self, client: Client, task_queue: str, interval_s: float = 15.0):
        self.client, self.task_queue, self.interval_s = client, task_queue, interval_s
        self._known: set[str] = set()

    async def run(self) -> None:
        await poll_every(self.interval_s, self.poll_once, "schedule metrics", log)

    async def poll_once(self) -> None:
        seen: set[str] = set()
        for schedule_id in await batch_schedule_ids(self.client):
            try:
                description = await self.client.get_schedule_handle(schedule_id).describe()
            except RPCError:
                continue  # deleted since it was listed
            action = description.schedule.action
            if not isinstance(action, ScheduleActionStartWorkflow) or action.task_queue != self.task_queue:
                continue
            info = description.info
            counts = (
                info.num_actions,
                info.num_actions_skipped_overlap,
                info.num_actions_missed_catchup_window,
            )
            for outcome, value in zip(m.SCHEDULE_RUN_OUTCOMES, counts, strict=True):
                SCHEDULE_RUNS.labels(schedule_id, outcome).set(value)
            SCHEDULE_PAUSED.labels(schedule_id).set(int(description.schedule.state.paused))
            SCHEDULE_LAST_RUN_FAILED.labels(schedule_id).set(int(await self._last_run_failed(info)))
            seen.add(schedule_id)
        for gone in self._known - seen:
            self._forget(gone)
        self._known = seen

    async def _last_run_failed(self, info: ScheduleInfo) -> bool:
        """Whether the newest of its recent runs that has finished failed. The status comes from
        the run itself (following continue-as-new): the schedule's own copy lags behind."""
        for result in reversed(info.recent_actions):
            if not isinstance(result.action, ScheduleActionExecutionStartWorkflow):
                continue
            try:
                status = (await self.client.get_workflow_handle(result.action.workflow_id).describe()).status
            except RPCError:
                continue  # past the namespace's retention
            if status is None or status == WorkflowExecutionStatus.RUNNING:
                continue
            return status in FAILED_STATUSES
        return False

    @staticmethod
    def _forget(schedule_id: str) -> None:
        for outcome in m.SCHEDULE_RUN_OUTCOMES:
            with contextlib.suppress(KeyError):
                SCHEDULE_RUNS.remove(schedule_id, outcome)
        for metric in (SCHEDULE_PAUSED, SCHEDULE_LAST_RUN_FAILED):
            with contextlib.suppress(KeyError):
                metric.remove(schedule_id)
