"""Errors as typed values with codes, shared by the worker, the Serve app and the metrics.

Two kinds:

- ``RecordError``: one bad record (data, not an exception for the batch). It goes to the errors
  file with its ``stage`` and ``code``; the metrics label it by ``code``. Nothing ever parses its
  message back.
- ``Failure``: why an activity or the workflow failed, as the ``type`` of Temporal's
  ``ApplicationError``; the workflow's retry policies and the CLI name these, never message text.

Stdlib only: the Serve image imports it.
"""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    """Where a record failed."""

    PARSE = "parse"  # the worker could not read it as a record
    DUPLICATE = "duplicate"  # its id repeats an earlier record's
    MODEL = "model"  # Serve's model rejected it


class Code(StrEnum):
    """Why a record failed: a bounded set, used as the ``reason`` metric label."""

    TOO_LONG = "too_long"
    NOT_UTF8 = "not_utf8"
    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_ID = "missing_id"
    BAD_ID = "bad_id"
    MISSING_FIELD = "missing_field"  # a field the model input is made of is not there
    BAD_ROW = "bad_row"  # a CSV row with the wrong number of fields
    BAD_VALUE = "bad_value"  # a CSV value that is not of its column's type
    TOO_LARGE = "too_large"  # its model input alone is over tuning.max_request_bytes
    TOO_DEEP = "too_deep"  # its model input nests past what Serve accepts (json_codec.MAX_DEPTH)
    DUPLICATE_ID = "duplicate_id"
    INVALID_INPUT = "invalid_input"  # the model's validate() refused it
    MODEL_ERROR = "model_error"  # the model raised on it
    OTHER = "other"


CODES_BY_STAGE: dict[Stage, tuple[Code, ...]] = {
    Stage.PARSE: (
        Code.TOO_LONG,
        Code.NOT_UTF8,
        Code.MALFORMED_JSON,
        Code.NOT_AN_OBJECT,
        Code.MISSING_ID,
        Code.BAD_ID,
        Code.MISSING_FIELD,
        Code.BAD_ROW,
        Code.BAD_VALUE,
        Code.TOO_LARGE,
        Code.TOO_DEEP,
    ),
    Stage.DUPLICATE: (Code.DUPLICATE_ID,),
    Stage.MODEL: (Code.INVALID_INPUT, Code.MODEL_ERROR),
}  # and OTHER, at any stage, for what none of these names (e.g. a code from a newer Serve)


class RecordError(ValueError):
    """A record that cannot be processed: where (``stage``), why (``code``) and a message for
    people (``message``, which may quote the record but never a secret)."""

    def __init__(self, stage: Stage, code: Code, message: str):
        super().__init__(message)
        self.stage, self.code, self.message = stage, code, message


class AuthCode(StrEnum):
    """Why the Serve ingress refused a request (never the token itself)."""

    MISSING_HEADER = "missing_header"  # 401
    MALFORMED_HEADER = "malformed_header"  # 401
    INVALID_TOKEN = "invalid_token"  # 403


class RequestCode(StrEnum):
    """Why the Serve ingress refused a whole request: the ``code`` beside its ``detail``."""

    BODY_TOO_LARGE = "body_too_large"  # 413: over the app's max_request_bytes
    TOO_MANY_INPUTS = "too_many_inputs"  # 413: over the app's max_records_per_request
    BAD_CONTENT_LENGTH = "bad_content_length"  # 400
    NOT_UTF8 = "not_utf8"  # 400
    MALFORMED_JSON = "malformed_json"  # 400: also NaN/Infinity, and nesting past json_codec.MAX_DEPTH
    MALFORMED_ARROW = "malformed_arrow"  # 400: an Arrow body that is not an IPC stream (arrow_wire)
    NOT_COLUMNAR = "not_columnar"  # 415: an Arrow body for a model with no columnar predict
    UNKNOWN_MODEL = "unknown_model"  # 404


_SERVE_HTTP = "ServeHTTP"  # the prefix of Failure.serve_http's types


class Failure(StrEnum):
    """``ApplicationError`` types raised by the activities and the workflow."""

    INPUT_NOT_FOUND = "InputNotFound"
    EMPTY_INPUT = "EmptyInput"
    OUTPUT_NOT_WRITABLE = "OutputNotWritable"
    INPUT_CHANGED = "InputChanged"
    DUPLICATE_IDS = "DuplicateIds"
    INPUT_UNREADABLE = "InputUnreadable"  # a corrupt or truncated file, a schema that does not fit
    ACCESS_DENIED = "AccessDenied"
    OUTPUT_IN_USE = "OutputInUse"  # the output folder holds another batch
    UNKNOWN_MODEL = "UnknownModel"  # the batch names a model Serve does not have
    ERROR_BUDGET_EXCEEDED = "ErrorBudgetExceeded"
    SERVE_UNAVAILABLE = "ServeUnavailable"  # a shard gave up its in-activity retries: the batch waits
    SERVE_OUTAGE_TOO_LONG = "ServeOutageTooLong"  # Serve stayed unavailable past tuning.max_serve_outage_s
    SERVE_PROTOCOL_ERROR = "ServeProtocolError"
    NO_SCHEDULED_TIME = "NoScheduledTime"  # URI templates, and no schedule started the run

    @staticmethod
    def serve_http(status: int) -> str:
        """The type of a non-retryable HTTP answer from Serve (e.g. ``ServeHTTP403``)."""
        return f"{_SERVE_HTTP}{status}"

    @staticmethod
    def is_ours(type_name: str | None) -> bool:
        """Whether an ``ApplicationError`` type is one of these (or a Serve answer's): raised
        on purpose with its reason, so its stack trace tells nobody anything."""
        return type_name is not None and (type_name in _FAILURE_TYPES or type_name.startswith(_SERVE_HTTP))


_FAILURE_TYPES = frozenset(Failure)


class BatchError(Exception):
    """Something a retry cannot fix stops the batch (or a shard): ``failure`` is its type,
    raised to Temporal as a non-retryable ``ApplicationError``."""

    def __init__(self, failure: Failure, message: str):
        super().__init__(message)
        self.failure = failure


# Failures a retry cannot fix: the workflow's retry policies stop at once on these.
NON_RETRYABLE: tuple[Failure, ...] = (
    Failure.INPUT_NOT_FOUND,
    Failure.EMPTY_INPUT,
    Failure.OUTPUT_NOT_WRITABLE,
    Failure.INPUT_CHANGED,
    Failure.INPUT_UNREADABLE,
    Failure.ACCESS_DENIED,
    Failure.OUTPUT_IN_USE,
    Failure.UNKNOWN_MODEL,
)


class CommandError(Exception):
    """A mistake the person running a command can fix: the CLI prints only the message, which
    says what to do, and exits 2 (no traceback)."""


class NoSuchBatch(CommandError):
    def __init__(self, workflow_id: str):
        super().__init__(f"no batch with workflow id {workflow_id!r} (see `batch-inference list`)")
        self.workflow_id = workflow_id


class BadSetting(CommandError, ValueError):
    """A ``--set`` key that is neither a data option nor a tuning one, or a value that does not fit."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class PortInUse(CommandError):
    """A local server's port is taken (often by the same server started earlier)."""

    def __init__(self, port: int, what: str, fix: str):
        super().__init__(f"port {port} ({what}) is already in use: {fix}")
        self.port, self.what = port, what
