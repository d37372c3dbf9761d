"""What the CLI says when the person at it got something wrong: one line, saying what to do.

Each mistake is told apart by type (an ``RPCError``'s status code, a pydantic error's location,
an ``ApplicationError``'s type), never by reading message text, and becomes a
``services.errors.CommandError`` that ``batch-inference`` prints without a traceback (exit 2).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ValidationError
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from services import constants as c
from services.errors import BadSetting, CommandError, Failure, NoSuchBatch
from services.worker.config import TemporalSettings
from services.worker.contracts import BatchInferenceInput, Progress, Tuning
from services.worker.manifests import DataSpec

# --- Temporal ---------------------------------------------------------------------------------


async def connect(settings: TemporalSettings | None = None) -> Client:
    """A client, or a ``CommandError`` saying where the CLI looked for Temporal."""
    settings = settings or TemporalSettings()
    try:
        return await settings.connect()
    except RuntimeError as exc:  # the SDK's only error for a failed connect (the bridge's)
        raise CommandError(
            f"cannot connect to Temporal at {settings.address} (namespace {settings.namespace}): start it "
            f"(`batch-inference temporal`) or point {c.ENV_TEMPORAL_ADDRESS} at it [{exc}]"
        ) from None


@contextlib.contextmanager
def batch_named(workflow_id: str) -> Iterator[None]:
    """Around calls about one batch: Temporal's NOT_FOUND becomes ``NoSuchBatch``."""
    try:
        yield
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise NoSuchBatch(workflow_id) from None
        raise


# A query waits for a worker to answer it; none polling the batch's task queue means none will.
PROGRESS_TIMEOUT = timedelta(seconds=10)
_TIMED_OUT = (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED)  # the server's, or ours


class NoWorker(CommandError):
    def __init__(self, workflow_id: str, task_queue: str, waited: timedelta):
        super().__init__(
            f"no worker answered for batch {workflow_id!r} within {waited.total_seconds():.0f}s: start one "
            f"on its task queue ({c.ENV_TEMPORAL_TASK_QUEUE}={task_queue} batch-inference worker)"
        )
        self.task_queue = task_queue


async def query_progress(handle: WorkflowHandle, wait: timedelta = PROGRESS_TIMEOUT) -> Progress:
    """The batch's ``progress`` query, or ``NoWorker`` naming the task queue to serve."""
    try:
        return await handle.query(c.PROGRESS_QUERY, result_type=Progress, rpc_timeout=wait)
    except RPCError as exc:
        if exc.status not in _TIMED_OUT:
            raise
        raise NoWorker(handle.id, (await handle.describe()).task_queue, wait) from None


def failure_line(err: WorkflowFailureError) -> str:
    """Why a batch failed, in one line: the reason of our own failure type if one is in the
    chain (what the user must fix), else every cause, outermost first."""
    chain: list[BaseException] = []
    cause: BaseException | None = err.cause
    while cause is not None:
        chain.append(cause)
        cause = getattr(cause, "cause", None)
    for failure in reversed(chain):
        if isinstance(failure, ApplicationError) and Failure.is_ours(failure.type):
            return failure.message
    return " <- ".join(str(f) for f in chain) or str(err)


# --- --set and other input --------------------------------------------------------------------

DATA_OPTIONS = tuple(DataSpec.model_fields)
TUNING_OPTIONS = tuple(Tuning.model_fields)


def split_settings(items: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--set KEY=VALUE`` items as (data options, tuning options); an unknown key is refused
    with every valid one (the models' fields), a closely matching one first."""
    data: dict[str, Any] = {}
    tuning: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BadSetting(key, f"--set takes KEY=VALUE, got {item!r} (e.g. --set micro_batch_size=500)")
        if key in DATA_OPTIONS:
            data[key] = parse_value(text)
        elif key in TUNING_OPTIONS:
            tuning[key] = parse_value(text)
        else:
            close = difflib.get_close_matches(key, DATA_OPTIONS + TUNING_OPTIONS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise BadSetting(
                key,
                f"unknown setting {key!r}; {hint}valid: data options {', '.join(DATA_OPTIONS)} "
                f"and tuning options {', '.join(TUNING_OPTIONS)}",
            )
    return data, tuning


def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON (numbers, lists, objects), else the text itself (``parquet``)."""
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def tuning_from(settings: dict[str, Any]) -> Tuning:
    """``Tuning`` from ``--set`` values; a bad value names its key, what it got and what fits."""
    try:
        return Tuning(**settings)
    except ValidationError as exc:
        raise BadSetting(_first_key(exc), describe_validation(exc, Tuning, show_input=True)) from None


def add_priority_flags(p: argparse.ArgumentParser) -> None:
    """The batch's Temporal priority and fairness (README "Fair sharing and priority")."""
    p.add_argument("--priority", type=int, help="1 (runs first) to 5 (last); default 3")
    p.add_argument("--fairness-key", help="who the batch is for (e.g. a team): keys share workers in turn")
    p.add_argument("--fairness-weight", type=float, help="this key's share relative to others' (default 1)")


def batch_input(**fields: Any) -> BatchInferenceInput:
    """The batch input from the command line's values, refused as ``tuning_from`` refuses."""
    try:
        return BatchInferenceInput(**fields)
    except ValidationError as exc:
        raise BadSetting(
            _first_key(exc), describe_validation(exc, BatchInferenceInput, show_input=True)
        ) from None


def describe_validation(
    exc: ValidationError, model: type[BaseModel] | None = None, show_input: bool = False
) -> str:
    """A pydantic error as "key: what it should be (what the key is)"; a model-level check's own
    message as it is. Inputs are shown only when asked (settings may hold secrets)."""
    lines = []
    for error in exc.errors(include_url=False):
        ctx_error = (error.get("ctx") or {}).get("error")
        if error["type"] == "value_error" and isinstance(ctx_error, ValueError):
            message = str(ctx_error)  # our own validator's sentence, without pydantic's prefix
        else:
            message = error["msg"][:1].lower() + error["msg"][1:]
            if show_input and "input" in error:
                message += f" (got {repr(error['input'])[:80]})"
        key = ".".join(str(part) for part in error["loc"])
        fields = model.model_fields if model is not None else {}
        field = fields.get(str(error["loc"][0])) if error["loc"] else None
        about = f" ({field.description})" if field is not None and field.description else ""
        lines.append(f"{key}{about}: {message}" if key else message)
    return "; ".join(lines)


def _first_key(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    return str(errors[0]["loc"][0]) if errors and errors[0]["loc"] else ""
