"""Log an expected activity failure as one line with its reason, not a stack trace.

The Temporal SDK logs every failed activity as "Completing activity as failed" at WARNING with
``exc_info`` (only failures of category BENIGN go to DEBUG, and those also leave the SDK's failure
metrics, which the alerts read). A failure we raise on purpose (input not found, unknown model,
Serve refusing the token: an ``ApplicationError`` with one of ``services.errors.Failure``'s
types) already says what is wrong; its stack trace only buries that. This filter, on the SDK's
activity logger, keeps the record and its level and swaps the trace for the reason. Anything
else (a bug) keeps its trace.
"""

from __future__ import annotations

import logging

from temporalio import activity
from temporalio.exceptions import ApplicationError

from services.errors import BatchError, Failure

# The ``extra`` key the SDK sets on its "Completing activity as failed" records.
SDK_ERROR_KEY = "__temporal_error_identifier"
SDK_ACTIVITY_FAILURE = "ActivityFailure"


def reason(exc: BaseException | None) -> str | None:
    """ "<type>: <message>" for a failure of ours, None for anything else."""
    if isinstance(exc, ApplicationError) and Failure.is_ours(exc.type):
        return f"{exc.type}: {exc.message}"
    if isinstance(exc, BatchError):
        return f"{exc.failure}: {exc}"
    return None


class ExpectedFailureFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, SDK_ERROR_KEY, None) != SDK_ACTIVITY_FAILURE or not record.exc_info:
            return True
        why = reason(record.exc_info[1])
        if why is not None:
            record.msg, record.args = f"{record.getMessage()}: {why}", None
            record.exc_info, record.exc_text = None, None
        return True


def install() -> None:
    """Add the filter to the SDK's activity logger, once per process."""
    logger = activity.logger.logger
    if not any(isinstance(f, ExpectedFailureFilter) for f in logger.filters):
        logger.addFilter(ExpectedFailureFilter())
