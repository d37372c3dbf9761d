"""Activities: plan a file batch, process one shard, predict an inline chunk, write the summary.

Bulk data stays in files: activities exchange shard numbers, offsets, counts and URIs with the
workflow. One ``ServeClient`` (one connection pool) is shared by every activity of the worker.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

from temporalio import activity
from temporalio.exceptions import ApplicationError

from services.constants import PARTS_DIR
from services.worker import storage, telemetry
from services.worker.malloc import release_free_memory
from services.worker.models import (
    InlineInput,
    InlineOutput,
    InlinePrediction,
    PlanInput,
    PlanOutput,
    ShardInput,
    ShardOutput,
    ShardProgress,
    SummaryInput,
)
from services.worker.serve_client import ServeClient

log = logging.getLogger(__name__)


def _non_retryable(message: str, kind: str) -> ApplicationError:
    return ApplicationError(message, type=kind, non_retryable=True)


# Records repeating an earlier id go to the errors file; past this many the input is taken to be
# broken (e.g. a file concatenated twice) and planning fails, saying so.
MAX_DUPLICATE_RECORDS = 100_000


def _mark_duplicates(input_uri: str, shards: list[dict[str, Any]], repeated: set[int], extra: int) -> int:
    """Second scan, only when some id hash repeats: note in each shard's plan entry the lines
    whose id an earlier line already has (``[line, first line]``); the first occurrence is
    processed, later ones become errors. Returns how many records are duplicates."""
    first_line: dict[bytes, int] = {}
    found = 0
    with storage.open_input(input_uri) as fh:
        line = 1
        for shard in shards:
            records, _, line = storage.read_records(fh, shard["records"], line)
            keyed = [(number, key) for number, raw in records if (key := storage.record_key(raw)) is not None]
            hashes = storage.key_hashes([key for _, key in keyed]).tolist()
            marked = []
            for (number, key), key_hash in zip(keyed, hashes, strict=True):
                if key_hash not in repeated:
                    continue
                first = first_line.setdefault(key, number)
                if first == number:
                    continue
                if extra > MAX_DUPLICATE_RECORDS:
                    raise _non_retryable(
                        f"more than {MAX_DUPLICATE_RECORDS} records repeat an earlier id (e.g. id "
                        f"{key.decode()} at line {number} repeats line {first}): the input looks duplicated; "
                        "remove the repeated records and resubmit",
                        "DuplicateIds",
                    )
                marked.append([number, first])
            if marked:
                shard["duplicates"] = marked
                found += len(marked)
    return found


def _plan(input: PlanInput) -> dict[str, Any]:
    """Count records once and note where each shard starts: a shard's number alone then fixes
    its records, so a retry redoes exactly the same ones. One fast scan, before any shard runs:
    0.25-0.3 s per million records here (docs/performance.md)."""
    if not storage.exists(input.input_uri):
        raise _non_retryable(f"input not found: {input.input_uri}", "InputNotFound")
    index = storage.RecordIndex()
    ids = storage.DuplicateIds()
    long_lines = False
    try:
        with storage.open_input(input.input_uri) as fh:
            for records in storage.scan_records(fh):
                index.add(records)
                long_lines = long_lines or records.long_lines
                ids.add(storage.chunk_key_hashes(records))
            size, total = fh.tell(), index.total
            if total == 0:
                raise _non_retryable(f"input has no records (empty file): {input.input_uri}", "EmptyInput")
            shards: list[dict[str, Any]] = []
            start = 0
            for count in storage.shard_sizes(total, input.shard_size, input.max_concurrent_shards):
                # A shard starts at its first record, not at blank lines before it.
                line, offset = index.locate(fh, start)
                shards.append({"offset": offset, "line": line, "records": count})
                start += count
        repeated, extra = ids.repeated_hashes(MAX_DUPLICATE_RECORDS)
    finally:
        ids.close()
    duplicates = _mark_duplicates(input.input_uri, shards, repeated, extra) if repeated else 0
    plan = {
        "plan_id": uuid.uuid4().hex,  # tells this batch's checkpoints from leftovers in the folder
        "input_uri": input.input_uri,
        "input_bytes": size,
        "shard_size": input.shard_size,
        "total_records": total,
        "short_lines": not long_lines,  # no line over MAX_RECORD_BYTES: shards read in bulk
        "duplicate_records": duplicates,
        "shards": shards,
    }
    try:
        storage.write_json(storage.plan_uri(input.output_uri), plan)
        storage.remove_final_shards(input.output_uri)
    except (PermissionError, NotADirectoryError, FileExistsError, OSError) as exc:
        raise _non_retryable(
            f"cannot write to output location {input.output_uri}: {exc.strerror or exc}",
            "OutputNotWritable",
        ) from None
    return plan


async def _uninterrupted(fn: Any, *args: Any) -> Any:
    """Blocking I/O in a thread that a cancellation cannot cut short: the activity ends only
    after the write has, so a cancelled shard writes nothing after it reports back."""
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await work
        raise


class PartResult(NamedTuple):
    """One part's results and errors as JSON Lines text (one bytes object each, not one per
    line: see ``json_codec.dumps_jsonl``) and how many lines each holds."""

    out: bytes
    succeeded: int
    errors: bytes
    failed: int


# Parts committed (by all shards of this worker) between two hand-backs of the heap's free
# memory to the OS (malloc.py): every 8 parts kept a 1M batch's peak RSS 3 MB lower for ~60 ms
# of CPU per 1M records; after every part cost 0.34 s (docs/performance.md).
TRIM_EVERY_PARTS = 8


class BatchActivities:
    def __init__(self, serve: ServeClient):
        self.serve = serve
        self._parts_committed = 0

    @activity.defn
    async def plan_batch(self, input: PlanInput) -> PlanOutput:
        plan = await asyncio.to_thread(_plan, input)
        return PlanOutput(total_records=plan["total_records"], num_shards=len(plan["shards"]))

    @activity.defn
    @telemetry.shard_activity
    async def process_shard(self, input: ShardInput) -> ShardOutput:
        info = activity.info()
        plan = await asyncio.to_thread(storage.read_json, storage.plan_uri(input.output_uri))
        entry = plan["shards"][input.shard]
        if info.attempt > 1 and (
            counts := await asyncio.to_thread(storage.final_counts, input.output_uri, input.shard)
        ):
            # An earlier attempt wrote the final files and died before Temporal heard of it (the
            # plan removed any earlier batch's final files, so these are this batch's).
            succeeded, failed = counts
            log.info("shard %d was already committed (attempt %d)", input.shard, info.attempt)
            records = succeeded + failed
            return ShardOutput(
                shard=input.shard, records=records, succeeded=succeeded, failed=failed, resumed_from=records
            )
        if info.heartbeat_details:
            progress = ShardProgress.model_validate(info.heartbeat_details[0])
        else:
            progress = ShardProgress(offset=entry["offset"], line=entry["line"])
        # Heartbeats are throttled, so parts committed after the last one Temporal received may
        # be on disk too: each part's checkpoint file says where the next part starts.
        progress = await asyncio.to_thread(self._last_checkpoint, input, plan.get("plan_id"), progress)
        if progress.done:
            log.info("shard %d resumes at record %d (attempt %d)", input.shard, progress.done, info.attempt)
        resumed_from = progress.done
        duplicates = {line: first for line, first in entry.get("duplicates", ())}

        state = {"progress": progress}
        interval = (
            max(0.2, min(1.0, info.heartbeat_timeout.total_seconds() / 3)) if info.heartbeat_timeout else 1.0
        )

        async def keep_alive() -> None:
            # The only heartbeats: the last committed checkpoint, never more, every second or so
            # (they also deliver cancellation). The SDK sends at most one per throttle interval
            # anyway, so one per part would only cost the worker a conversion per part.
            while True:
                await asyncio.sleep(interval)
                activity.heartbeat(state["progress"].model_dump())

        ticker = asyncio.create_task(keep_alive())
        fh = await asyncio.to_thread(storage.open_input, input.input_uri)
        short_lines = bool(plan.get("short_lines"))
        try:
            await asyncio.to_thread(fh.seek, progress.offset)
            # Parts in flight (4 by default): the next parts' requests go out while the current
            # one is committed, so Serve never idles at a checkpoint, and four shards keep the
            # worker's 32 connections busy (Serve spends less CPU per record with 32 requests in
            # flight than with 16: docs/performance.md). One limit bounds them all.
            limit = asyncio.Semaphore(input.max_in_flight)
            ahead: collections.deque[tuple[asyncio.Task, int, int, int]] = collections.deque()
            read_done, read_line = progress.done, progress.line
            while progress.done < entry["records"]:
                while len(ahead) < input.parts_in_flight and read_done < entry["records"]:
                    want = min(input.checkpoint_every, entry["records"] - read_done)
                    lines, raws, consumed, next_line = await asyncio.to_thread(
                        storage.read_part, fh, want, read_line, short_lines
                    )
                    if len(raws) != want:
                        raise _non_retryable(
                            f"input changed while the batch ran: shard {input.shard} expected {want} "
                            f"more records at line {read_line}, found {len(raws)}",
                            "InputChanged",
                        )
                    task = asyncio.create_task(self._predict_part(input, lines, raws, duplicates, limit))
                    ahead.append((task, want, consumed, next_line))
                    read_done, read_line = read_done + want, next_line
                task, want, consumed, next_line = ahead.popleft()
                result = await task
                done_part = progress.part
                progress = ShardProgress(
                    part=progress.part + 1,
                    offset=progress.offset + consumed,
                    line=next_line,
                    done=progress.done + want,
                    succeeded=progress.succeeded + result.succeeded,
                    failed=progress.failed + result.failed,
                )
                checkpoint = {"plan_id": plan.get("plan_id"), "progress": progress.model_dump()}
                await _uninterrupted(self._write_part, input, done_part, result, checkpoint)
                telemetry.record_part(input.model, result.succeeded, result.errors)
                state["progress"] = progress
                self._parts_committed += 1
                if self._parts_committed % TRIM_EVERY_PARTS == 0:
                    await asyncio.to_thread(release_free_memory)
        finally:
            for task, *_ in ahead:
                task.cancel()
            await asyncio.gather(*(task for task, *_ in ahead), return_exceptions=True)
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            fh.close()

        commit = asyncio.ensure_future(asyncio.to_thread(self._commit_shard, input, progress.part))
        try:
            await asyncio.shield(commit)
        except asyncio.CancelledError:
            await commit  # cancelled while joining: the shard is done, so report it done
        return ShardOutput(
            shard=input.shard,
            records=progress.done,
            succeeded=progress.succeeded,
            failed=progress.failed,
            resumed_from=resumed_from,
        )

    async def _predict_part(
        self,
        input: ShardInput,
        lines: Sequence[int],
        raws: list[bytes | None],
        duplicates: dict[int, int],
        limit: asyncio.Semaphore,
    ) -> PartResult:
        """Results and error lines for one part, in input order. The worker's hottest code: a
        part of good records is parsed and written in bulk, line by line only if some are bad.

        What a part holds while its requests are out is what sets the worker's peak memory
        (32 requests of 1,000 records in flight): each micro-batch is encoded at once and the
        raw lines and parsed inputs let go, and each reply becomes result lines on arrival."""
        parsed = None if duplicates or None in raws else storage.parse_lines(raws)  # type: ignore[arg-type]
        errors: dict[int, bytes] = {}
        if parsed is not None:
            ids, inputs = parsed
            positions: range | list[int] = range(len(raws))
        else:
            positions, ids, inputs = [], [], []
            for pos, (line, raw) in enumerate(zip(lines, raws, strict=True)):
                if raw is None:
                    reason = f"record longer than {storage.MAX_RECORD_BYTES} bytes"
                    errors[pos] = storage.error_line(None, line, "parse", reason)
                    continue
                try:
                    record_id, model_input = storage.parse_line(raw)
                except storage.BadRecord as exc:
                    errors[pos] = storage.error_line(storage.id_hint(raw), line, "parse", str(exc))
                    continue
                if duplicates and line in duplicates:
                    reason = f"duplicate id: line {duplicates[line]} has the same id"
                    errors[pos] = storage.error_line(record_id, line, "duplicate", reason)
                    continue
                positions.append(pos)
                ids.append(record_id)
                inputs.append(model_input)
        del raws, parsed
        size = input.micro_batch_size
        batches = [(start, min(size, len(ids) - start)) for start in range(0, len(ids), size)]
        bodies = [self.serve.encode(inputs[start : start + count]) for start, count in batches]
        del inputs

        async def send(start: int, count: int, body: bytes) -> bytes | tuple[list[Any], list[Any]]:
            async with limit:
                predictions, model_errors = await telemetry.serve_predict(
                    self.serve, input.model, body, count
                )
            if model_errors.count(None) == count:  # none rejected (the usual case): lines now
                return storage.results_jsonl(ids[start : start + count], predictions)
            return predictions, model_errors

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(send(start, count, body))
                    for (start, count), body in zip(batches, bodies, strict=True)
                ]
                del bodies
        except BaseExceptionGroup as group_error:
            # Surface the first real error (e.g. a non-retryable ApplicationError) as itself,
            # so Temporal's retry policy sees its type.
            raise group_error.exceptions[0] from None
        out: list[bytes] = []
        succeeded = 0
        for (start, count), task in zip(batches, tasks, strict=True):
            reply = task.result()
            if isinstance(reply, bytes):
                out.append(reply)
                succeeded += count
                continue
            kept_ids, kept = [], []
            for index, prediction, error in zip(itertools.count(start), *reply, strict=False):
                if error is None:
                    kept_ids.append(ids[index])
                    kept.append(prediction)
                else:
                    pos = positions[index]
                    errors[pos] = storage.error_line(ids[index], lines[pos], "model", error)
            out.append(storage.results_jsonl(kept_ids, kept))
            succeeded += len(kept_ids)
        return PartResult(b"".join(out), succeeded, b"".join(errors[p] for p in sorted(errors)), len(errors))

    @staticmethod
    def _write_part(input: ShardInput, part: int, result: PartResult, checkpoint: dict[str, Any]) -> None:
        """A part's results, errors and checkpoint, the checkpoint last: on disk it means the
        part is whole. No errors file for a part without errors (the join counts it empty), and
        none left from an earlier attempt at the same part."""
        storage.write_bytes(storage.part_uri(input.output_uri, input.shard, part, "out"), result.out)
        errors_uri = storage.part_uri(input.output_uri, input.shard, part, "err")
        if result.errors:
            storage.write_bytes(errors_uri, result.errors)
        else:
            storage.remove(errors_uri)
        storage.write_json(storage.part_uri(input.output_uri, input.shard, part, "ckpt"), checkpoint)

    @staticmethod
    def _last_checkpoint(input: ShardInput, plan_id: str | None, progress: ShardProgress) -> ShardProgress:
        """Follow the checkpoint files of parts committed from ``progress`` on (only this batch's:
        the plan id tells them from an earlier batch's leftovers in the same folder)."""
        while plan_id:
            uri = storage.part_uri(input.output_uri, input.shard, progress.part, "ckpt")
            if not storage.exists(uri):
                break
            saved = storage.read_json(uri)
            if saved.get("plan_id") != plan_id:
                break
            progress = ShardProgress.model_validate(saved["progress"])
        return progress

    @staticmethod
    def _commit_shard(input: ShardInput, parts: int) -> None:
        """Join the committed parts into the shard's final files, errors last, then drop the
        parts: if this worker dies after the join but before Temporal records the shard as done,
        the retry finds both final files and reports them (``final_counts``); if it dies during
        the join, the parts are still there to join again. Each shard cleans up after itself, so
        the batch's last step has no thousands of part files left to remove (0.15 s per 1M)."""
        storage.concat(
            storage.shard_uri(input.output_uri, input.shard),
            [storage.part_uri(input.output_uri, input.shard, p, "out") for p in range(parts)],
        )
        storage.concat(
            storage.errors_uri(input.output_uri, input.shard),
            [storage.part_uri(input.output_uri, input.shard, p, "err") for p in range(parts)],
            missing_ok=True,
        )
        storage.remove(storage.shard_parts_uri(input.output_uri, input.shard), recursive=True)

    @activity.defn
    async def predict_inline(self, input: InlineInput) -> InlineOutput:
        pairs = [storage.split_record(r) for r in input.records]
        body = self.serve.encode([p[1] for p in pairs])
        predictions, errors = await telemetry.serve_predict(self.serve, input.model, body, len(pairs))
        return InlineOutput(
            predictions=[
                InlinePrediction(id=record_id, prediction=prediction, error=error)
                for (record_id, _), prediction, error in zip(pairs, predictions, errors, strict=True)
            ]
        )

    @activity.defn
    async def write_summary(self, input: SummaryInput) -> str:
        uri = storage.summary_uri(input.output_uri)
        summary = input.summary
        if input.unsettled_shards:
            # A shard can commit its final files and still end cancelled in the workflow (its
            # result and the cancellation arriving together): its files say what it did.
            ok, failed = await asyncio.to_thread(
                storage.count_final, input.output_uri, input.unsettled_shards
            )
            summary = {
                **summary,
                "succeeded": summary["succeeded"] + ok,
                "failed": summary["failed"] + failed,
            }
        await asyncio.to_thread(storage.write_json, uri, summary)
        telemetry.record_batch_finished(summary)
        if summary.get("status") == "completed":
            # Every shard committed its final files; a cancelled or failed batch keeps its parts.
            await asyncio.to_thread(storage.remove, storage.join(input.output_uri, PARTS_DIR), True)
        else:
            # ... but only those of unfinished shards: a shard with final files needs no parts.
            await asyncio.to_thread(storage.remove_committed_parts, input.output_uri)
        return uri
