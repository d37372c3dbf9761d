"""Changed copies of the BatchInference workflow, for the replay test: one change made without
a patch (a timer before planning: a command the recorded histories do not have), and the same
change behind ``workflow.patched``, as the README says to make it.

Workflow code: imported again in the replayer's sandbox, so it stays import-pure.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import ValidationError
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from services.constants import WORKFLOW_NAME
    from services.worker.contracts import BatchInferenceInput, BatchInferenceOutput
    from services.worker.workflows import BatchInferenceWorkflow

PATCH_ID = "pause-before-planning"


@workflow.defn(name=WORKFLOW_NAME, failure_exception_types=[ValidationError])
class UnpatchedChange(BatchInferenceWorkflow):
    @workflow.run
    async def run(self, input: BatchInferenceInput) -> BatchInferenceOutput:
        await workflow.sleep(timedelta(seconds=1))
        return await super().run(input)


@workflow.defn(name=WORKFLOW_NAME, failure_exception_types=[ValidationError])
class PatchedChange(BatchInferenceWorkflow):
    @workflow.run
    async def run(self, input: BatchInferenceInput) -> BatchInferenceOutput:
        if workflow.patched(PATCH_ID):  # False while replaying a batch started before the change
            await workflow.sleep(timedelta(seconds=1))
        return await super().run(input)
