"""What a batch writes beside its results, as typed contracts: the plan (``_plan.json``), each
committed part's checkpoint, one line of an errors file, and the summary (``_summary.json``).

Written with ``model_dump_json`` and read back with ``model_validate_json``: a file that does
not match fails loudly, never as a missing key found later.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.errors import Code, RecordError, Stage


class ShardProgress(BaseModel):
    """Heartbeat details: where a retried attempt resumes (all parts before ``part`` are
    committed)."""

    part: int = 0
    offset: int  # byte offset of the next record in the input
    line: int  # 1-based line number of the next record
    done: int = 0
    succeeded: int = 0
    failed: int = 0


class ShardPlan(BaseModel):
    """Where one shard's records are: its number alone then fixes its work, so a retry redoes
    exactly the same records."""

    offset: int = Field(description="byte offset of the shard's first record")
    line: int = Field(description="1-based line number of the shard's first record")
    records: int
    duplicates: list[tuple[int, int]] = Field(
        default_factory=list, description="[line, line of the first record with that id]"
    )


class Plan(BaseModel):
    """``_plan.json``: written before any shard runs."""

    plan_id: str = Field(description="tells this batch's checkpoints from leftovers in the folder")
    input_uri: str
    input_bytes: int
    shard_size: int
    total_records: int
    short_lines: bool = Field(description="no line over the record limit: shards read in bulk")
    duplicate_records: int = 0
    shards: list[ShardPlan]


class Checkpoint(BaseModel):
    """A committed part's last file: on disk it means the part is whole, and says where the
    next part starts."""

    plan_id: str
    progress: ShardProgress


class RecordFailure(BaseModel):
    """One line of an errors file: which record, where, at which stage, why (``code``) and a
    message for people (``reason``)."""

    model_config = ConfigDict(use_enum_values=True)

    id: Any = None
    line: int | None = None
    stage: Stage
    code: Code
    reason: str

    @classmethod
    def of(cls, record_id: Any, line: int | None, error: RecordError) -> RecordFailure:
        return cls(id=record_id, line=line, stage=error.stage, code=error.code, reason=error.message)


BatchStatus = Literal["completed", "cancelled", "failed"]


class BatchSummary(BaseModel):
    """``_summary.json``: how the batch ended and where everything is."""

    status: BatchStatus
    workflow_id: str
    input_uri: str | None
    output_uri: str
    errors_uri: str
    model: str | None
    total_records: int
    succeeded: int
    failed: int
    shards: int
    shards_done: int | None = Field(description="None unless the batch completed")
    runs: int
    resumed_records: int
    duration_s: float
    records_per_second: float

    def settled(self, succeeded: int, failed: int) -> BatchSummary:
        """This summary with the records of shards that committed while being stopped."""
        return self.model_copy(
            update={"succeeded": self.succeeded + succeeded, "failed": self.failed + failed}
        )
