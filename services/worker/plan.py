"""Planning a file batch: find the input files, count their records once, cut equal shards over
them all, note where each shard starts and which records repeat an earlier id, and write the
plan before any shard runs.

Files are listed in bulk (``inputs``) and scanned in parallel: a text file in one pass (its
record index and id hashes together, ``text_files``), a Parquet file by its footer and id column
(``parquet_files``). A second pass over the records runs only when some id hash repeats.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from pydantic import ValidationError

from services.constants import PLAN_FILE
from services.errors import BatchError, Failure
from services.worker import csv_records, duplicates, fs, parquet_files, retry, text_files
from services.worker.contracts import COLUMNAR_SHARD_SIZE, SHARD_SIZE, PlanInput
from services.worker.inputs import FoundFile, InputError, resolve
from services.worker.layout import OutputLayout
from services.worker.manifests import (
    COLUMNAR_FORMATS,
    DataSpec,
    Duplicate,
    InputFile,
    Plan,
    Segment,
    ShardPlan,
)
from services.worker.source import PartParser, ShardReader

# Records repeating an earlier id go to the errors file; past this many the input is taken to be
# broken (e.g. a file concatenated twice) and planning fails, saying so.
MAX_DUPLICATE_RECORDS = 100_000
# Files scanned at once: object stores answer many requests in parallel; a local disk is read
# by fewer threads (the scan's numpy work holds the GIL part of the time).
REMOTE_SCANS, LOCAL_SCANS = 16, 2


class PlanError(BatchError):
    """The batch cannot start."""


def default_shard_size(files: list[InputFile]) -> int:
    """The most records per shard when the batch does not say: larger for Parquet and CSV (see
    ``COLUMNAR_SHARD_SIZE``)."""
    return COLUMNAR_SHARD_SIZE if files and all(f.format in COLUMNAR_FORMATS for f in files) else SHARD_SIZE


def shard_sizes(total: int, shard_size: int, window: int) -> list[int]:
    """Records per shard: at most ``shard_size``, as equal as can be, and as many shards as a
    multiple of ``window`` (the shards running at once) when there are enough records. Equal
    shards that fill the window end together, rather than a last wave leaving slots idle."""
    count = -(-total // shard_size)
    count = min(total, -(-count // window) * window)
    base, extra = divmod(total, count)
    return [base + 1] * extra + [base] * (count - extra)


class _Scanned:
    """One file as scanned: its plan entry, its record index if it is plain text, the schema of
    the columns read if it is Parquet."""

    def __init__(self, file: InputFile, text: text_files.ScannedText | None = None, schema: Any = None):
        self.file, self.text, self.schema = file, text, schema


def make_plan(input: PlanInput) -> Plan:
    """Plan the batch and write ``_plan.json``, or take up the plan already in the output folder
    (a resumed batch); raises ``PlanError``."""
    if input.retry_of is not None:
        return _plan_retry(input)
    assert input.input_uri is not None
    with _input_errors(input.input_uri):
        found = resolve(input.input_uri, input.spec.input_format)
    layout = OutputLayout(input.output_uri, input.spec.output_format)
    if not input.start_over and (earlier := _earlier_plan(layout)) is not None:
        _check_same_batch(earlier, input, found)
        return earlier
    ids = duplicates.DuplicateIds()
    try:
        with _input_errors(input.input_uri):
            scanned = _scan_all(found, input.spec, ids)
        repeated, extra = ids.repeated_hashes(MAX_DUPLICATE_RECORDS)
    finally:
        ids.close()
    files = [s.file for s in scanned]
    total = sum(f.records for f in files)
    if total == 0:
        empty = "empty file" if len(files) == 1 else "empty files"
        raise PlanError(Failure.EMPTY_INPUT, f"input has no records ({empty}): {input.input_uri}")
    shard_size = input.shard_size or default_shard_size(files)
    plan = Plan(
        plan_id=uuid.uuid4().hex,
        input_uri=input.input_uri,
        spec=input.spec,
        model=input.model,
        files=files,
        input_bytes=sum(f.size for f in files),
        shard_size=shard_size,
        total_records=total,
        shards=_cut_shards(scanned, shard_sizes(total, shard_size, input.max_concurrent_shards)),
    )
    if repeated:
        plan.duplicate_records = _mark_duplicates(plan, repeated, extra)
    try:
        layout.start(plan)
    except OSError as exc:
        raise PlanError(
            Failure.OUTPUT_NOT_WRITABLE,
            f"cannot write to output location {input.output_uri}: {exc.strerror or type(exc).__name__}",
        ) from None
    return plan


def _plan_retry(input: PlanInput) -> Plan:
    """A retry of a batch's failed records: copy them from its input into the retry's folder
    (unless a plan is there already: a resumed retry), then plan that folder with the original
    batch's data options."""
    assert input.retry_of is not None
    try:
        original = OutputLayout(input.retry_of).read_plan()
    except (FileNotFoundError, NotADirectoryError):
        raise PlanError(
            Failure.INPUT_NOT_FOUND, f"no batch to retry in {input.retry_of} (no {PLAN_FILE})"
        ) from None
    spec = original.spec.model_copy(update={"input_format": original.files[0].format})
    planned = input.model_copy(
        update={"input_uri": retry.input_folder(input.output_uri), "spec": spec, "retry_of": None}
    )
    if input.start_over or _earlier_plan(OutputLayout(input.output_uri, spec.output_format)) is None:
        with _input_errors(input.retry_of):
            count = retry.extract(original, input.retry_of, input.output_uri, input.retry_only)
        if not count:
            only = f" of {', '.join(input.retry_only)}" if input.retry_only else ""
            raise PlanError(
                Failure.EMPTY_INPUT, f"nothing to retry: {input.retry_of} has no failed records{only}"
            )
    return make_plan(planned)


@contextlib.contextmanager
def _input_errors(input_uri: str | list[str]) -> Iterator[None]:
    """Reading the input: what cannot be found or read fails the plan, naming it."""
    try:
        yield
    except InputError as exc:
        raise PlanError(exc.failure, str(exc)) from None
    except FileNotFoundError as exc:  # a file deleted between the listing and its scan
        raise PlanError(Failure.INPUT_NOT_FOUND, f"input not found: {exc.filename or exc}") from None
    except PermissionError as exc:
        raise PlanError(Failure.ACCESS_DENIED, f"access denied reading {exc.filename or input_uri}") from None


def _earlier_plan(layout: OutputLayout) -> Plan | None:
    """The plan of a batch that ran in this folder before, if any (one written by an older
    version, which this one cannot read, counts as none)."""
    try:
        return layout.read_plan()
    except (FileNotFoundError, NotADirectoryError, ValidationError):
        return None  # not there (or not a folder: writing the new plan says so)


def _check_same_batch(earlier: Plan, input: PlanInput, found: list[FoundFile]) -> None:
    """A batch started again on its output folder resumes only if it is the same batch over
    the same files; anything else would mix two batches' results in one folder."""
    if (earlier.input_uri, earlier.spec, earlier.model) != (input.input_uri, input.spec, input.model):
        raise PlanError(
            Failure.OUTPUT_IN_USE,
            f"{input.output_uri} holds another batch (input {earlier.input_uri}, model "
            f"{earlier.model or 'default'}, its own data options): use another output folder, or set "
            "'start_over' to replace it",
        )
    planned = [(f.uri, f.size, f.version) for f in earlier.files]
    now = [(f.uri, f.size, f.version) for f in found]
    if planned != now:
        changed = next(
            (f"{a[0]} (size {a[1]}, version {a[2]} when planned; now size {b[1]}, version {b[2]})"
             for a, b in zip(planned, now, strict=False) if a != b),
            f"{len(planned)} files when planned, {len(now)} now",
        )  # fmt: skip
        raise PlanError(
            Failure.INPUT_CHANGED,
            f"the input changed since the batch in {input.output_uri} was planned: {changed}; set "
            "'start_over' to plan it anew (the results so far are dropped)",
        )


def _scan_all(found: list[FoundFile], spec: DataSpec, ids: duplicates.DuplicateIds) -> list[_Scanned]:
    local = all(fs.is_local(f.uri) for f in found[:1])
    lock = threading.Lock()
    with concurrent.futures.ThreadPoolExecutor(LOCAL_SCANS if local else REMOTE_SCANS) as pool:
        scanned = list(pool.map(lambda f: _scan(f, spec, ids, lock), found))
    if found and found[0].format == "parquet":
        _same_schema(scanned)
    return scanned


def _scan(found: FoundFile, spec: DataSpec, ids: duplicates.DuplicateIds, lock: threading.Lock) -> _Scanned:
    entry: dict[str, Any] = {
        "uri": found.uri,
        "format": found.format,
        "compression": found.compression,
        "size": found.size,
        "version": found.version,
        "partition": found.partition,
    }
    if found.format == "parquet":

        def on_ids(column: pa.Array) -> None:
            hashes = duplicates.column_key_hashes(column)
            with lock:
                ids.add(hashes)

        footer = parquet_files.scan(found, spec, on_ids)
        return _Scanned(
            InputFile(**entry, records=sum(footer.row_groups), row_groups=footer.row_groups),
            schema=footer.schema,
        )
    if found.format == "jsonl":
        hashes = functools.partial(duplicates.chunk_key_hashes, id_field=spec.id_field)
        text = text_files.scan_text(found, hashes, ids, lock)
        return _Scanned(InputFile(**entry, records=text.records, short_lines=text.short_lines), text)
    csv_ids = _CsvIds(found, spec)
    text = text_files.scan_text(found, csv_ids.hashes, ids, lock)
    assert text.header is not None
    columns = csv_records.column_types(
        text.header, text.first_lines, spec.id_field, spec.column_types, found.uri
    )
    if missing := [c for c in spec.required(found.partition) if c not in columns]:
        raise InputError(
            Failure.INPUT_UNREADABLE,
            f"{found.uri}: no column {missing[0]!r} (its header: {', '.join(columns)})",
        )
    return _Scanned(
        InputFile(**entry, records=text.records, short_lines=text.short_lines, columns=columns), text
    )


class _CsvIds:
    """The id hashes of a CSV file's chunks, its id column read by pyarrow (its header read
    from the file's first chunk of lines)."""

    def __init__(self, found: FoundFile, spec: DataSpec):
        self.found, self.spec = found, spec
        self.names: list[str] | None = None

    def hashes(self, chunk: Any) -> Any:
        if self.names is None:
            with text_files.open_text(self.found.uri, self.found.compression) as fh:
                self.names = csv_records.header_names(
                    text_files.read_header(fh, self.found.uri), self.found.uri
                )
        if self.spec.id_field not in self.names:
            return duplicates.key_hashes([])
        kind = self.spec.column_types.get(self.spec.id_field, "string")
        values = csv_records.column_values(
            [raw for raw in chunk.raws if raw is not None], self.names, self.spec.id_field, kind
        )
        return duplicates.key_hashes([k for v in values if (k := duplicates.id_key(v)) is not None])


def _same_schema(scanned: list[_Scanned]) -> None:
    """Every Parquet file has the columns the batch reads, of the same types as the first."""
    first = scanned[0]
    for other in scanned[1:]:
        if not other.schema.equals(first.schema):
            raise InputError(
                Failure.INPUT_UNREADABLE,
                f"{other.file.uri}: its schema differs from {first.file.uri}'s "
                f"({_columns(other.schema)} vs {_columns(first.schema)})",
            )


def _columns(schema: Any) -> str:
    return ", ".join(f"{field.name}: {field.type}" for field in schema)


def _cut_shards(scanned: list[_Scanned], sizes: list[int]) -> list[ShardPlan]:
    """Shards of ``sizes`` records over the files in order, each a run of segments."""
    shards: list[ShardPlan] = []
    file, used = 0, 0  # the next record: record ``used`` of file ``file``
    handles: dict[int, Any] = {}
    try:
        for size in sizes:
            segments: list[Segment] = []
            left = size
            while left:
                while scanned[file].file.records == used:
                    file, used = file + 1, 0
                take = min(left, scanned[file].file.records - used)
                offset, line = _locate(scanned[file], used, handles, file)
                segments.append(Segment(file=file, start=used, offset=offset, line=line, records=take))
                used, left = used + take, left - take
            shards.append(ShardPlan(segments=segments, records=size))
    finally:
        for fh in handles.values():
            fh.close()
    return shards


def _locate(scanned: _Scanned, start: int, handles: dict[int, Any], key: int) -> tuple[int, int]:
    """(byte offset, line) of record ``start`` of a plain text file; (0, row) otherwise (a
    compressed file's reader counts lines itself)."""
    file, text = scanned.file, scanned.text
    if file.format == "parquet":
        return 0, start + 1
    if text is None or text.index is None:
        return 0, 0
    if key not in handles:
        handles[key] = text_files.open_text(file.uri, None)
    line, offset = text.index.locate(handles[key], start)
    return offset, line


def _mark_duplicates(plan: Plan, repeated: set[int], extra: int) -> int:
    """Second pass, only when some id hash repeats: note in each shard's plan the records whose
    id an earlier record already has; a hash collision of two different ids is not a duplicate.
    Returns how many records are duplicates."""
    first_seen: dict[bytes, tuple[int, int]] = {}
    found = 0
    parser = PartParser(plan, {})
    for number, shard in enumerate(plan.shards):
        reader = ShardReader(plan, number, shard.start())
        try:
            while (part := reader.read(65_536)).count:
                parsed = parser.parse(part)
                keys = [duplicates.id_key(i) for i in parsed.ids]
                hashes = duplicates.key_hashes([k for k in keys if k is not None]).tolist()
                keyed = [(pos, k) for pos, k in zip(parsed.positions, keys, strict=True) if k is not None]
                for (pos, key), key_hash in zip(keyed, hashes, strict=True):
                    if key_hash not in repeated:
                        continue
                    here = parsed.where(pos)
                    first = first_seen.setdefault(key, here)
                    if first == here:
                        continue
                    if extra > MAX_DUPLICATE_RECORDS:
                        raise PlanError(
                            Failure.DUPLICATE_IDS,
                            f"more than {MAX_DUPLICATE_RECORDS} records repeat an earlier id (e.g. id "
                            f"{key.decode()} at {_line(plan, here)} repeats {_line(plan, first)}): the input "
                            "looks duplicated; remove the repeated records and resubmit",
                        )
                    shard.duplicates.append(
                        Duplicate(file=here[0], line=here[1], first_file=first[0], first_line=first[1])
                    )
        finally:
            reader.close()
        found += len(shard.duplicates)
    return found


def _line(plan: Plan, where: tuple[int, int]) -> str:
    file, line = where
    return f"line {line}" if len(plan.files) == 1 else f"line {line} of {plan.files[file].uri}"
