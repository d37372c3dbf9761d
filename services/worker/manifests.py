"""What a batch writes beside its results, as typed contracts: the plan (``_plan.json``), each
committed part's checkpoint, one line of an errors file, and the summary (``_summary.json``).

Written with ``model_dump_json`` and read back with ``model_validate_json``: a file that does
not match fails loudly, never as a missing key found later.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.errors import Code, RecordError, Stage

InputFormat = Literal["jsonl", "csv", "parquet"]
OutputFormat = Literal["jsonl", "parquet"]
# Formats read as tables: a shard of them can go to Serve as Arrow columns (arrow_path.py).
COLUMNAR_FORMATS: frozenset[InputFormat] = frozenset({"parquet", "csv"})
Compression = Literal["gzip", "bz2", "zstd"]
ColumnType = Literal["string", "int64", "float64", "bool"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecordFields(_Strict):
    """Which fields of a record (JSONL) or columns (CSV, Parquet) are its id, its model input,
    and what passes through to the results."""

    id_field: str = Field("id", min_length=1, description="the record's id: a string or an integer")
    input_field: str | None = Field(None, min_length=1, description="the model input is this field's value")
    input_columns: list[str] | None = Field(
        None, min_length=1, description="the model input is an object of these fields"
    )
    keep_columns: list[str] = Field(
        default_factory=list,
        description="fields (or Hive partition keys) copied from the input to each result",
    )

    def required(self, partition: dict[str, str]) -> list[str]:
        """The columns every file of a CSV or Parquet input must have."""
        named = [
            self.id_field,
            *(self.input_columns or []),
            *([self.input_field] if self.input_field else []),
        ]
        return named + [c for c in self.keep_columns if c not in partition]

    @model_validator(mode="after")
    def _check_fields(self) -> RecordFields:
        if self.input_field is not None and self.input_columns is not None:
            raise ValueError("give at most one of 'input_field' and 'input_columns'")
        if self.id_field in (self.input_columns or []) or self.id_field == self.input_field:
            raise ValueError(f"the id field {self.id_field!r} cannot also be the model input")
        if self.id_field in self.keep_columns or {"prediction", "id"} & set(self.keep_columns):
            raise ValueError("'keep_columns' cannot name the id field, 'id' or 'prediction'")
        return self


class DataSpec(RecordFields):
    """How a file batch reads its input and writes its results."""

    input_format: InputFormat | None = Field(
        None, description="jsonl, csv or parquet; None = by each file's suffix"
    )
    column_types: dict[str, ColumnType] = Field(
        default_factory=dict, description="CSV column types (others are inferred from the first rows)"
    )
    output_format: OutputFormat = Field("jsonl", description="results as jsonl or parquet")


class InputFile(BaseModel):
    """One input file as planned: what it is, how many records it holds and how to find them."""

    uri: str
    format: InputFormat
    compression: Compression | None = None
    size: int
    version: str | None = Field(None, description="the store's etag/generation or mtime when planned")
    records: int
    partition: dict[str, str] = Field(default_factory=dict, description="Hive keys from its folders")
    columns: dict[str, str] = Field(
        default_factory=dict, description="CSV: header names and their types, in order"
    )
    row_groups: list[int] = Field(default_factory=list, description="Parquet: rows per row group")
    short_lines: bool = Field(True, description="no line over the record limit: read in bulk")

    @property
    def seekable(self) -> bool:
        """Whether a byte offset finds a record (plain text), rather than reading from the start."""
        return self.format != "parquet" and self.compression is None


class Segment(BaseModel):
    """A run of a shard's records in one file."""

    file: int = Field(description="index into the plan's files")
    start: int = Field(description="0-based index of the first record in the file")
    offset: int = Field(0, description="its byte offset (plain text files)")
    line: int = Field(
        1,
        description="its 1-based line (text) or row (Parquet); 0 in a compressed file (counted when read)",
    )
    records: int


class ShardProgress(BaseModel):
    """Heartbeat details: where a retried attempt resumes (all parts before ``part`` are
    committed)."""

    part: int = 0
    segment: int = 0  # the segment of the next record
    record: int = 0  # records of that segment before it
    offset: int = 0  # its byte offset in the file (plain text files)
    line: int = 1  # its line (row) number in the file
    done: int = 0
    succeeded: int = 0
    failed: int = 0


class Duplicate(BaseModel):
    """A record whose id an earlier record has: (file, line) of both."""

    file: int
    line: int
    first_file: int
    first_line: int


class ShardPlan(BaseModel):
    """Where one shard's records are: its number alone then fixes its work, so a retry redoes
    exactly the same records."""

    segments: list[Segment]
    records: int
    duplicates: list[Duplicate] = Field(default_factory=list)

    def start(self) -> ShardProgress:
        """Where a first attempt starts."""
        first = self.segments[0]
        return ShardProgress(offset=first.offset, line=first.line)


class Plan(BaseModel):
    """``_plan.json``: written before any shard runs."""

    plan_id: str = Field(description="tells this batch's checkpoints from leftovers in the folder")
    input_uri: str | list[str]
    spec: DataSpec
    model: str | None = None
    files: list[InputFile]
    input_bytes: int
    shard_size: int
    total_records: int
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
    file: str | None = None
    line: int | None = Field(None, description="1-based line (text) or row (Parquet) in the file")
    stage: Stage
    code: Code
    reason: str

    @classmethod
    def of(
        cls, record_id: Any, line: int | None, error: RecordError, file: str | None = None
    ) -> RecordFailure:
        return cls(
            id=record_id, file=file, line=line, stage=error.stage, code=error.code, reason=error.message
        )


BatchStatus = Literal["completed", "cancelled", "failed"]


class BatchSummary(BaseModel):
    """``_summary.json``: how the batch ended and where everything is."""

    status: BatchStatus
    workflow_id: str
    input_uri: str | list[str] | None
    retry_of: str | None = Field(None, description="the batch whose failed records this one re-ran")
    output_uri: str
    output_format: OutputFormat = "jsonl"
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
    retries: list[str] = Field(
        default_factory=list, description="output folders of retries of its failed records"
    )

    def settled(self, succeeded: int, failed: int) -> BatchSummary:
        """This summary with the records of shards that committed while being stopped."""
        return self.model_copy(
            update={"succeeded": self.succeeded + succeeded, "failed": self.failed + failed}
        )
