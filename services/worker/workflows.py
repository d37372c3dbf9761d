"""The BatchInference workflow: a file batch (``file_batch.py``) or an inline one
(``inline_batch.py``), and the side-effect-free ``progress`` query.

Workflow code must stay deterministic and import-pure: it is re-imported in Temporal's sandbox.
"""

from __future__ import annotations

from pydantic import ValidationError
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    # Passed through so the workflow and the activities share one copy of each class, and so a
    # workflow run does not execute these modules again in its sandbox. Each names its module
    # in full: ``from services.worker import x`` would load the package's modules (and what
    # they import) inside the sandbox.
    from services.constants import PROGRESS_QUERY, WORKFLOW_NAME
    from services.worker.contracts import BatchInferenceInput, BatchInferenceOutput, Progress
    from services.worker.file_batch import FileBatch
    from services.worker.inline_batch import InlineBatch
    from services.worker.scheduled_run import filled


@workflow.defn(name=WORKFLOW_NAME, failure_exception_types=[ValidationError])
class BatchInferenceWorkflow:
    def __init__(self) -> None:
        self._batch: FileBatch | InlineBatch | None = None

    @workflow.query(name=PROGRESS_QUERY)
    def progress(self) -> Progress:
        return self._batch.progress() if self._batch else Progress(status="planning")

    @workflow.run
    async def run(self, input: BatchInferenceInput) -> BatchInferenceOutput:
        input = filled(input)  # a recurring batch's URI templates, from its scheduled time
        self._batch = InlineBatch(input) if input.records is not None else FileBatch(input)
        return await self._batch.run()
