"""Planning a file batch: count the records once, cut equal shards, note where each starts and
which records repeat an earlier id, and write the plan before any shard runs.

One fast scan of the input (``jsonl_scan``) feeds the index of record starts and the duplicate
finder together; a second scan runs only when some id hash repeats.
"""

from __future__ import annotations

import uuid

from services.errors import Failure
from services.worker import duplicates, fs, jsonl, jsonl_scan
from services.worker.contracts import PlanInput
from services.worker.layout import OutputLayout
from services.worker.manifests import Plan, ShardPlan

# Records repeating an earlier id go to the errors file; past this many the input is taken to be
# broken (e.g. a file concatenated twice) and planning fails, saying so.
MAX_DUPLICATE_RECORDS = 100_000


class PlanError(Exception):
    """The batch cannot start: ``failure`` says why (a non-retryable failure type)."""

    def __init__(self, failure: Failure, message: str):
        super().__init__(message)
        self.failure = failure


def shard_sizes(total: int, shard_size: int, window: int) -> list[int]:
    """Records per shard: at most ``shard_size``, as equal as can be, and as many shards as a
    multiple of ``window`` (the shards running at once) when there are enough records. Equal
    shards that fill the window end together, rather than a last wave leaving slots idle."""
    count = -(-total // shard_size)
    count = min(total, -(-count // window) * window)
    base, extra = divmod(total, count)
    return [base + 1] * extra + [base] * (count - extra)


def make_plan(input: PlanInput) -> Plan:
    """Plan the batch and write ``_plan.json``; raises ``PlanError``."""
    if not fs.exists(input.input_uri):
        raise PlanError(Failure.INPUT_NOT_FOUND, f"input not found: {input.input_uri}")
    index = jsonl_scan.RecordIndex()
    ids = duplicates.DuplicateIds()
    long_lines = False
    try:
        with fs.open_input(input.input_uri) as fh:
            for records in jsonl_scan.scan_records(fh):
                index.add(records)
                long_lines = long_lines or records.long_lines
                ids.add(duplicates.chunk_key_hashes(records))
            size, total = fh.tell(), index.total
            if total == 0:
                raise PlanError(Failure.EMPTY_INPUT, f"input has no records (empty file): {input.input_uri}")
            shards: list[ShardPlan] = []
            start = 0
            for count in shard_sizes(total, input.shard_size, input.max_concurrent_shards):
                # A shard starts at its first record, not at blank lines before it.
                line, offset = index.locate(fh, start)
                shards.append(ShardPlan(offset=offset, line=line, records=count))
                start += count
        repeated, extra = ids.repeated_hashes(MAX_DUPLICATE_RECORDS)
    finally:
        ids.close()
    found = _mark_duplicates(input.input_uri, shards, repeated, extra) if repeated else 0
    plan = Plan(
        plan_id=uuid.uuid4().hex,
        input_uri=input.input_uri,
        input_bytes=size,
        shard_size=input.shard_size,
        total_records=total,
        short_lines=not long_lines,
        duplicate_records=found,
        shards=shards,
    )
    try:
        OutputLayout(input.output_uri).start(plan)
    except OSError as exc:
        raise PlanError(
            Failure.OUTPUT_NOT_WRITABLE,
            f"cannot write to output location {input.output_uri}: {exc.strerror or exc}",
        ) from None
    return plan


def _mark_duplicates(input_uri: str, shards: list[ShardPlan], repeated: set[int], extra: int) -> int:
    """Second scan, only when some id hash repeats: note in each shard's plan the lines whose id
    an earlier line already has; a hash collision of two different ids is not a duplicate.
    Returns how many records are duplicates."""
    first_line: dict[bytes, int] = {}
    found = 0
    with fs.open_input(input_uri) as fh:
        line = 1
        for shard in shards:
            records, _, line = jsonl.read_records(fh, shard.records, line)
            keyed = [
                (number, key) for number, raw in records if (key := duplicates.record_key(raw)) is not None
            ]
            hashes = duplicates.key_hashes([key for _, key in keyed]).tolist()
            for (number, key), key_hash in zip(keyed, hashes, strict=True):
                if key_hash not in repeated:
                    continue
                first = first_line.setdefault(key, number)
                if first == number:
                    continue
                if extra > MAX_DUPLICATE_RECORDS:
                    raise PlanError(
                        Failure.DUPLICATE_IDS,
                        f"more than {MAX_DUPLICATE_RECORDS} records repeat an earlier id (e.g. id "
                        f"{key.decode()} at line {number} repeats line {first}): the input looks duplicated; "
                        "remove the repeated records and resubmit",
                    )
                shard.duplicates.append((number, first))
            found += len(shard.duplicates)
    return found
