"""Verify a batch's lineage: every input record appears exactly once across its results and its
errors files, and a retry's results fix the errors they name.

A record is known by its id, or, when it has none that parses (a parse error), by its file and
line. Each side (the input as the plan reads it; the outputs as written) is reduced to 64-bit
hashes of those keys, 8 bytes a record, sorted and compared: equal multisets mean each record
exactly once (two different keys sharing a hash could hide one missing and one doubled record
of those keys; at 2^-64 per pair, not a practical concern). Only on a mismatch are the files
read again to name the records at fault.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from services.errors import Stage
from services.worker import duplicates, fs
from services.worker.layout import OutputLayout
from services.worker.manifests import BatchSummary, Plan, RecordFailure
from services.worker.source import PartParser, ShardReader

EXAMPLES = 10
CHUNK_RECORDS = 65_536


class Mismatch(BaseModel):
    key: str  # the id as JSON, or @file:line
    inputs: int
    outputs: int


class Verdict(BaseModel):
    """What ``verify`` found in one output folder (and, nested, in each of its retries)."""

    output_uri: str
    status: str | None = Field(description="the summary's status; None if the batch wrote none")
    input_records: int
    results: int
    errors: int
    errors_by_code: dict[str, int] = Field(description="stage/code: count")
    missing: int = Field(description="input records in neither results nor errors")
    doubled: int = Field(description="records written more than once")
    examples: list[Mismatch] = Field(default_factory=list)
    retries: list[Verdict] = Field(default_factory=list)
    fixed: int = Field(0, description="errors whose id a retry's results hold")
    still_failed_by_code: dict[str, int] = Field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.doubled and all(r.ok for r in self.retries)


def _record_key(failure_file: str | None, line: int | None) -> bytes:
    return f"@{failure_file}:{line}".encode()


def _error_key(failure: RecordFailure) -> bytes:
    if failure.stage == Stage.PARSE or duplicates.id_key(failure.id) is None:
        return _record_key(failure.file, failure.line)
    return duplicates.id_key(failure.id)  # type: ignore[return-value]


def input_keys(plan: Plan) -> Iterator[list[bytes]]:
    """Each input record's key, in the plan's order, a part at a time."""
    parser = PartParser(plan, {})
    for number, shard in enumerate(plan.shards):
        reader = ShardReader(plan, number, shard.start())
        try:
            while (part := reader.read(CHUNK_RECORDS)).count:
                parsed = parser.parse(part)
                keys: list[bytes | None] = [None] * part.count
                for pos, record_id in zip(parsed.positions, parsed.ids, strict=True):
                    keys[pos] = duplicates.id_key(record_id)
                for pos in parsed.failures:
                    file, line = parsed.where(pos)
                    keys[pos] = _record_key(plan.files[file].uri, line)
                yield keys  # type: ignore[misc]
        finally:
            reader.close()


def result_keys(layout: OutputLayout, shards: int) -> Iterator[list[bytes]]:
    for shard in range(shards):
        uri = layout.shard_uri(shard)
        if not fs.exists(uri):
            continue
        if layout.format == "parquet":
            with fs.open_arrow_input(uri) as fh:
                for batch in pq.ParquetFile(fh).iter_batches(batch_size=CHUNK_RECORDS, columns=["id"]):
                    yield [k for v in batch.column(0).to_pylist() if (k := duplicates.id_key(v)) is not None]
            continue
        with fsspec.open(uri, "rb") as fh:
            for lines in _line_chunks(fh):
                yield duplicates.candidate_keys(lines)  # type: ignore[arg-type]


def errors(layout: OutputLayout, shards: int) -> Iterator[RecordFailure]:
    for shard in range(shards):
        uri = layout.errors_uri(shard)
        if not fs.exists(uri):
            continue
        with fsspec.open(uri, "rb") as fh:
            for lines in _line_chunks(fh):
                for line in lines:
                    yield RecordFailure.model_validate_json(line)


def _line_chunks(fh: Any) -> Iterator[list[bytes]]:
    carry = b""
    while chunk := fh.read(1 << 20):
        lines = (carry + chunk).split(b"\n")
        carry = lines.pop()
        if lines:
            yield [line for line in lines if line.strip()]
    if carry.strip():
        yield [carry]


def _hashes(chunks: Iterator[list[bytes]], also: list[Any] | None = None) -> Any:
    parts = [duplicates.key_hashes(keys) for keys in chunks]
    parts += also or []
    return np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)


def verify(output_uri: str) -> Verdict:
    """Check one batch's output folder and its retries; raises ``FileNotFoundError`` without a
    plan there."""
    plan = OutputLayout(output_uri).read_plan()
    layout = OutputLayout(output_uri, plan.spec.output_format)
    summary = _summary(layout)
    by_code: Counter[str] = Counter()
    error_hashes, error_keys = [], []
    failures = 0
    for failure in errors(layout, len(plan.shards)):
        failures += 1
        by_code[f"{failure.stage}/{failure.code}"] += 1
        error_keys.append(_error_key(failure))
        if len(error_keys) >= CHUNK_RECORDS:
            error_hashes.append(duplicates.key_hashes(error_keys))
            error_keys = []
    error_hashes.append(duplicates.key_hashes(error_keys))
    results = 0

    def counted(chunks: Iterator[list[bytes]]) -> Iterator[list[bytes]]:
        nonlocal results
        for keys in chunks:
            results += len(keys)
            yield keys

    outputs = _hashes(counted(result_keys(layout, len(plan.shards))), error_hashes)
    inputs = _hashes(input_keys(plan))
    verdict = Verdict(
        output_uri=output_uri,
        status=summary.status if summary else None,
        input_records=len(inputs),
        results=results,
        errors=failures,
        errors_by_code=dict(sorted(by_code.items())),
        missing=0,
        doubled=0,
    )
    if not np.array_equal(inputs, outputs):
        _explain(verdict, plan, layout, inputs, outputs)
    _with_retries(verdict, layout, summary, len(plan.shards))
    return verdict


def _summary(layout: OutputLayout) -> BatchSummary | None:
    try:
        return layout.read_summary()
    except FileNotFoundError:
        return None


def _explain(verdict: Verdict, plan: Plan, layout: OutputLayout, inputs: Any, outputs: Any) -> None:
    """Count the records missing or doubled, and name a few by reading the files again."""
    in_values, in_counts = np.unique(inputs, return_counts=True)
    out_values, out_counts = np.unique(outputs, return_counts=True)
    every = np.union1d(in_values, out_values)
    expected = np.zeros(len(every), dtype=np.int64)
    found = np.zeros(len(every), dtype=np.int64)
    expected[np.searchsorted(every, in_values)] = in_counts
    found[np.searchsorted(every, out_values)] = out_counts
    verdict.missing = int(np.clip(expected - found, 0, None).sum())
    verdict.doubled = int(np.clip(found - expected, 0, None).sum())
    wrong = every[expected != found]
    pick = set(wrong[:EXAMPLES].tolist())
    seen_in: Counter[bytes] = Counter()
    seen_out: Counter[bytes] = Counter()
    for counter, chunks in (
        (seen_in, input_keys(plan)),
        (seen_out, result_keys(layout, len(plan.shards))),
        (seen_out, ([_error_key(f)] for f in errors(layout, len(plan.shards)))),
    ):
        for keys in chunks:
            for key, key_hash in zip(keys, duplicates.key_hashes(keys).tolist(), strict=True):
                if key_hash in pick:
                    counter[key] += 1
    verdict.examples = [
        Mismatch(key=key.decode(errors="replace"), inputs=seen_in[key], outputs=seen_out[key])
        for key in sorted(set(seen_in) | set(seen_out))
    ]


def _with_retries(verdict: Verdict, layout: OutputLayout, summary: BatchSummary | None, shards: int) -> None:
    """Verify each retry of this batch, and count the errors its results fix."""
    uris = summary.retries if summary else []
    if not uris:
        return
    fixed_hashes: list[Any] = []
    for uri in uris:
        retry = verify(uri)
        verdict.retries.append(retry)
        retry_plan = OutputLayout(uri).read_plan()
        retry_layout = OutputLayout(uri, retry_plan.spec.output_format)
        fixed_hashes.append(_hashes(result_keys(retry_layout, len(retry_plan.shards))))
    fixed = set(np.concatenate(fixed_hashes).tolist()) if fixed_hashes else set()
    still: Counter[str] = Counter()
    for failure in errors(layout, shards):
        key = _error_key(failure)
        if int(duplicates.key_hashes([key])[0]) in fixed:
            verdict.fixed += 1
        else:
            still[f"{failure.stage}/{failure.code}"] += 1
    verdict.still_failed_by_code = dict(sorted(still.items()))


def report(verdict: Verdict, indent: str = "") -> str:
    """The verdict for people."""
    head = (
        "every input record exactly once"
        if verdict.missing == verdict.doubled == 0
        else (f"MISMATCH: {verdict.missing} missing, {verdict.doubled} doubled")
    )
    lines = [
        f"{indent}{verdict.output_uri} ({verdict.status or 'no summary'}): "
        f"{verdict.input_records} input records, {head}",
        f"{indent}  results {verdict.results}, errors {verdict.errors}"
        + (f" ({_codes(verdict.errors_by_code)})" if verdict.errors_by_code else ""),
    ]
    lines += [f"{indent}  {m.key}: {m.inputs} in input, {m.outputs} in outputs" for m in verdict.examples]
    for retry in verdict.retries:
        lines.append(f"{indent}  retry:")
        lines.append(report(retry, indent + "    "))
    if verdict.retries:
        still = sum(verdict.still_failed_by_code.values())
        lines.append(
            f"{indent}  combined: {verdict.results + verdict.fixed} succeeded, {still} failed"
            + (f" ({_codes(verdict.still_failed_by_code)})" if still else "")
            + f"; {verdict.fixed} fixed by retries"
        )
    return "\n".join(lines)


def _codes(counts: dict[str, int]) -> str:
    return ", ".join(f"{code} {n}" for code, n in counts.items())
