"""The batch workflow's plan and summary activities without files or Serve, for tests of the
workflow itself (the real workflow code on a Temporal server): a plan of ``total`` records cut
in the batch's shard size, summaries kept instead of written. A test gives its shards' behaviour
with a ``process_shard`` of its own (a subclass's method or a function)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from temporalio import activity

from services.worker.contracts import PlanInput, PlanOutput, SummaryInput
from services.worker.manifests import BatchSummary


class FakeBatchActivities:
    """``plan_batch`` and ``write_summary`` under the workflow's activity names. ``progress_attributes``:
    what the plan says of the namespace's progress search attributes (as the real plan asks
    ``ProgressAttributesCheck``); None: not registered."""

    def __init__(self, total: int, progress_attributes: Callable[[], Awaitable[bool]] | None = None):
        self.total = total
        self.shard_size = 0  # the batch's, once planned
        self.plans: list[PlanInput] = []
        self.summary_inputs: list[SummaryInput] = []
        self._progress_attributes = progress_attributes

    @property
    def summaries(self) -> list[BatchSummary]:
        return [i.summary for i in self.summary_inputs]

    def records_of(self, shard: int) -> int:
        """How many records the plan gave ``shard`` (the last one takes what is left)."""
        return min(self.shard_size, self.total - shard * self.shard_size)

    @activity.defn(name="plan_batch")
    async def plan_batch(self, input: PlanInput) -> PlanOutput:
        self.plans.append(input)
        self.shard_size = input.shard_size
        registered = await self._progress_attributes() if self._progress_attributes else False
        return PlanOutput(
            total_records=self.total,
            num_shards=-(-self.total // input.shard_size),
            progress_attributes=registered,
        )

    @activity.defn(name="write_summary")
    async def write_summary(self, input: SummaryInput) -> str:
        self.summary_inputs.append(input)
        return input.summary.output_uri + "/_summary.json"
