"""Counting a batch's records, shared by the file and inline batches: the rate and the error
budget. Pure functions: the workflow calls them, so they must stay deterministic."""

from __future__ import annotations

from temporalio.exceptions import ApplicationError

from services.errors import Failure


def per_second(done: int, seconds: float) -> float:
    return round(done / seconds, 1) if seconds > 0 else 0.0


def check_error_budget(failed: int, total: int, max_error_ratio: float, where: str) -> None:
    """Fail the batch (non-retryable) once more records failed than ``max_error_ratio`` allows;
    ``where`` tells the user where to look."""
    allowed = max_error_ratio * total
    if failed > allowed:
        raise ApplicationError(
            f"error budget exceeded: {failed} of {total} records failed "
            f"(max_error_ratio={max_error_ratio} allows {int(allowed)}); {where}",
            type=Failure.ERROR_BUDGET_EXCEEDED,
            non_retryable=True,
        )
