"""Inputs and outputs of the workflow and activities: numbers and URIs, never bulk data.

Only inline batches (small jobs, the original example) carry records, and they are capped well
below Temporal's payload limit.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from temporalio.common import Priority

from services.constants import RETRIES_DIR, SERVE_MAX_ARROW_ROWS, SERVE_MAX_REQUEST_BYTES
from services.errors import Code, Stage
from services.worker import uri_templates
from services.worker.manifests import BatchStatus, BatchSummary, DataSpec

# Temporal refuses payloads over 2 MB and warns above 256 KB: inline batches stay under this.
INLINE_LIMIT_BYTES = 256 * 1024
# A request body's default most bytes: half Serve's default limit, so a worker whose tuning
# was never touched stays under it with room to spare.
DEFAULT_REQUEST_BYTES = SERVE_MAX_REQUEST_BYTES // 2
# Records per shard when tuning.shard_size is not set. Parquet and CSV rows cost less each (the
# Arrow way, about five times less) and a Parquet shard decodes its row group from the group's
# start, so their shards are larger; each is then a few seconds of work, either way.
SHARD_SIZE, COLUMNAR_SHARD_SIZE = 50_000, 250_000
# A part on the Arrow way: one request of Serve's most rows (Serve's cost is per request).
COLUMNAR_PART_ROWS = SERVE_MAX_ARROW_ROWS
# What ``retry_only`` may name: a stage, or a record error code.
RETRYABLE_NAMES = frozenset([*Stage, *Code])
FAIRNESS_KEY_MAX_BYTES = 64  # Temporal's limit on a fairness key


def retry_output(retry_of: str, workflow_id: str) -> str:
    """Where a retry writes by default: beside the batch it retries, named by its workflow id
    (a re-delivered retry writes the same folder)."""
    return "/".join([retry_of.rstrip("/"), RETRIES_DIR, workflow_id])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Tuning(_Strict):
    """How a batch is cut and how hard it pushes Serve. Defaults are the tuned values."""

    micro_batch_size: int = Field(1000, ge=1, le=1024, description="records per HTTP request")
    max_request_bytes: int = Field(
        DEFAULT_REQUEST_BYTES,
        ge=1024,
        description="most bytes per HTTP request body (keep it under Serve's max_request_bytes)",
    )
    max_in_flight: int = Field(32, ge=1, le=256, description="concurrent requests per shard")
    max_concurrent_shards: int = Field(4, ge=1, le=500, description="sliding window width")
    shard_size: int | None = Field(
        None,
        ge=1,
        description="most records per shard (shards are cut equal, filling the window); default: "
        f"{COLUMNAR_SHARD_SIZE:,} for Parquet or CSV input, {SHARD_SIZE:,} otherwise",
    )
    checkpoint_every: int = Field(2000, ge=1, description="records per committed part")
    columnar_part_rows: int = Field(
        COLUMNAR_PART_ROWS,
        ge=1,
        le=1_048_576,
        description="rows per committed part when a shard sends Arrow (checkpoint_every is the JSON "
        "way's), fewer where rows are wide: a part stays about max_request_bytes",
    )
    parts_in_flight: int = Field(
        4, ge=1, le=64, description="parts a shard has read and sent ahead of its next commit"
    )
    heartbeat_timeout_s: float = Field(30, gt=0, le=3600)
    shard_max_attempts: int = Field(20, ge=0, description="0 = retry until cancelled")
    continue_as_new_after_shards: int | None = Field(
        None, ge=1, description="force continue-as-new after this many shards per run"
    )
    serve_wait_initial_s: float = Field(
        5, gt=0, le=3600, description="first wait before asking Serve again once it stays unavailable"
    )
    serve_wait_max_s: float = Field(
        60, gt=0, le=3600, description="longest wait between two checks of an unavailable Serve"
    )
    max_serve_outage_s: float = Field(
        4 * 3600, gt=0, description="the batch fails once Serve has been unavailable this long"
    )
    progress_every_s: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="seconds of workflow time between publications of the batch's progress while "
        "shards finish (each one history event; status changes publish at once)",
    )


class BatchState(_Strict):
    """What a run hands to the next one on continue-as-new: cursors and counters only."""

    started_at: datetime
    total_records: int
    num_shards: int
    next_shard: int = 0
    succeeded: int = 0
    failed: int = 0
    resumed_records: int = 0
    runs: int = 1
    progress_attributes: bool = False  # the plan's answer, kept for the next runs


class ScheduleContext(_Strict):
    """A recurring batch: its URIs are templates (``{date}``, ``{hour}``, ... of
    ``uri_templates``) filled, when its first run starts, from the time it was scheduled for."""

    time_zone: str = Field("UTC", description="IANA time zone the placeholders are read in")
    scheduled_time: datetime | None = Field(
        None,
        description="the time to fill them from; None = the run's TemporalScheduledStartTime, which "
        "Temporal Schedules set (a run started otherwise must give it)",
    )


class BatchInferenceInput(DataSpec):
    """Start a batch: inline ``records`` (small jobs) or ``input_uri`` + ``output_uri``. The
    fields of ``DataSpec`` (formats, which fields are the id and the model input) apply to file
    batches."""

    records: list[Any] | None = Field(None, description="inline records (small jobs only)")
    retry_of: str | None = Field(
        None,
        description="output folder of a finished batch: re-run its failed records (instead of input_uri)",
    )
    retry_only: list[str] = Field(
        default_factory=list,
        description="with retry_of: only failures of these stages or codes (default: all)",
    )
    input_uri: str | list[str] | None = Field(
        None,
        description="a file, a folder/prefix, a glob, or a list of them: local paths or fsspec URLs",
    )
    output_uri: str | None = Field(None, description="folder for shard outputs and errors")
    model: str | None = Field(None, description="model name; None = Serve's default model")
    max_error_ratio: float = Field(
        0.0, ge=0, le=1, description="fraction of records allowed to fail before the batch fails"
    )
    start_over: bool = Field(
        False,
        description="plan anew even if the output folder holds this batch already (else it resumes there)",
    )
    tuning: Tuning = Field(default_factory=Tuning)
    schedule: ScheduleContext | None = Field(
        None, description="a recurring batch: input_uri/output_uri are templates; None = literal URIs"
    )
    priority: int | None = Field(
        None,
        ge=1,
        le=5,
        description="Temporal task priority: 1 runs first, 5 last; None = the default (3) or what "
        "the workflow was started with",
    )
    fairness_key: str | None = Field(
        None,
        min_length=1,
        description="who the batch runs for (e.g. a team): shards of backlogged keys are dispatched "
        "in turn, in proportion to their weights (at most 64 bytes)",
    )
    fairness_weight: float | None = Field(
        None, ge=0.001, le=1000, description="this key's share relative to others' (default 1.0)"
    )
    state: BatchState | None = Field(None, description="internal: set by continue-as-new")

    def temporal_priority(self) -> Priority:
        """The batch's ``Priority`` for Temporal; unset fields (0/empty) inherit the workflow's."""
        if self.priority is None and self.fairness_key is None and self.fairness_weight is None:
            return Priority.default
        return Priority(
            priority_key=self.priority, fairness_key=self.fairness_key, fairness_weight=self.fairness_weight
        )

    def data_spec(self) -> DataSpec:
        return DataSpec.model_validate(self.model_dump(include=set(DataSpec.model_fields)))

    @model_validator(mode="after")
    def _check_source(self) -> BatchInferenceInput:
        sources = [self.records is not None, self.input_uri is not None, self.retry_of is not None]
        if sum(sources) != 1:
            raise ValueError(
                "give exactly one of 'records' (inline), 'input_uri' (files) "
                "or 'retry_of' (a batch's failed records)"
            )
        if unknown := [name for name in self.retry_only if name not in RETRYABLE_NAMES]:
            raise ValueError(
                f"'retry_only' names unknown stages or codes {unknown}; "
                f"valid: {', '.join(sorted(RETRYABLE_NAMES))}"
            )
        if isinstance(self.input_uri, list) and not self.input_uri:
            raise ValueError("'input_uri' is an empty list: nothing to do")
        if self.input_uri is not None and not self.output_uri:
            raise ValueError("'output_uri' is required with 'input_uri'")
        if self.records is not None:
            if not self.records:
                raise ValueError("'records' is empty: nothing to do")
            size = len(json.dumps(self.records, separators=(",", ":")))
            if size > INLINE_LIMIT_BYTES:
                raise ValueError(
                    f"inline records are {size // 1024} KiB; the limit is "
                    f"{INLINE_LIMIT_BYTES // 1024} KiB. Write them to a JSONL file "
                    "and pass 'input_uri' and 'output_uri' instead."
                )
        if self.fairness_key is not None and len(self.fairness_key.encode()) > FAIRNESS_KEY_MAX_BYTES:
            raise ValueError(f"'fairness_key' is at most {FAIRNESS_KEY_MAX_BYTES} bytes (Temporal's limit)")
        if self.model is not None and not self.model.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"model name {self.model!r} may hold only letters, digits, '-' and '_'")
        return self

    @model_validator(mode="after")
    def _check_templates(self) -> BatchInferenceInput:
        # Refused when a schedule is made, not at 3 a.m. when its first run starts.
        if self.schedule is not None:
            uri_templates.zone(self.schedule.time_zone)
            uris = self.input_uri if isinstance(self.input_uri, list) else [self.input_uri]
            for uri in [*uris, self.output_uri]:
                if uri is not None:
                    uri_templates.placeholders(uri)
        return self


class InlinePrediction(BaseModel):
    id: Any = None
    prediction: Any = None
    error: str | None = None
    error_code: Code | None = None


class BatchInferenceOutput(BaseModel):
    status: BatchStatus = "completed"
    total_records: int
    succeeded: int
    failed: int
    shards: int = 0
    runs: int = 1
    resumed_records: int = Field(
        0, description="records not re-sent after a retry thanks to the shards' heartbeated checkpoints"
    )
    duration_s: float
    records_per_second: float
    output_uri: str | None = None
    errors_uri: str | None = None
    summary_uri: str | None = None
    predictions: list[InlinePrediction] | None = None


ProgressStatus = Literal[
    "planning", "running", "waiting_for_serve", "finalizing", "completed", "cancelled", "failed"
]


class Progress(BaseModel):
    """The ``progress`` query's answer."""

    status: ProgressStatus
    total_records: int = 0
    succeeded: int = 0
    failed: int = 0
    shards_total: int = 0
    shards_done: int = 0
    shards_running: int = 0
    run: int = 1
    elapsed_s: float = 0.0
    records_per_second: float = 0.0
    waiting_for_serve_since: datetime | None = Field(
        None, description="status waiting_for_serve: when Serve was first found unavailable"
    )
    serve_attempts: int = Field(
        0, description="status waiting_for_serve: shard attempts and checks that found Serve unavailable"
    )

    def serve_wait_line(self) -> str | None:
        """``waiting for Serve since <time>, <n> attempts`` while the batch waits, else None."""
        if self.waiting_for_serve_since is None:
            return None
        since = self.waiting_for_serve_since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"waiting for Serve since {since}, {self.serve_attempts} attempts"


class PlanInput(_Strict):
    input_uri: str | list[str] | None = None
    output_uri: str
    spec: DataSpec = Field(default_factory=DataSpec)
    model: str | None = None
    start_over: bool = False
    retry_of: str | None = None
    retry_only: list[str] = []
    shard_size: int | None = None  # None: by the input's format (plan.py)
    max_concurrent_shards: int = 1  # shards are cut in a multiple of this


class PlanOutput(BaseModel):
    total_records: int
    num_shards: int
    progress_attributes: bool = Field(
        False, description="the namespace has the progress search attributes: the batch publishes to them"
    )


class ShardInput(_Strict):
    input_uri: str | list[str] | None = None  # unused: the plan lists the files
    output_uri: str
    shard: int
    model: str | None
    micro_batch_size: int
    max_in_flight: int
    checkpoint_every: int
    parts_in_flight: int = 2  # what shards scheduled before this field existed did
    max_request_bytes: int = DEFAULT_REQUEST_BYTES
    columnar_part_rows: int = COLUMNAR_PART_ROWS


class ShardOutput(BaseModel):
    shard: int
    records: int
    succeeded: int
    failed: int
    resumed_from: int = 0  # records skipped thanks to the heartbeat checkpoint


class ServeCheck(BaseModel):
    """Whether Serve answered a check while a batch waits for it, and if not why."""

    ok: bool
    reason: str = ""


class InlineInput(_Strict):
    records: list[Any]
    model: str | None


class InlineOutput(BaseModel):
    predictions: list[InlinePrediction]


class SummaryInput(_Strict):
    summary: BatchSummary
    unsettled_shards: list[int] = []  # stopped shards whose final files, if any, count too
