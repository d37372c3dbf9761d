"""One shard, end to end: read parts ahead, send their micro-batches to Serve, commit each part
in order (results, errors, then its checkpoint), and join the parts into the shard's final
files at the end. Temporal stays outside: the activity passes in where to resume and reads
``progress`` for its heartbeats.

Several parts are in flight at once (``parts_in_flight``): the next parts' requests go out while
the current one is committed, so Serve never idles at a checkpoint. One semaphore
(``max_in_flight``) bounds the requests of all of them.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.errors import Failure
from services.worker import jsonl_sink, telemetry
from services.worker.contracts import ShardInput
from services.worker.layout import OutputLayout
from services.worker.malloc import release_free_memory
from services.worker.manifests import Checkpoint, Plan, RecordFailure, ShardProgress
from services.worker.serve_client import ServeClient, model_error
from services.worker.source import JsonlShardReader, RawPart, ShardReader

# Parts committed (by all shards of a worker) between two hand-backs of the heap's free memory
# to the OS (malloc.py): often enough to bound peak RSS, rarely enough to cost little CPU.
TRIM_EVERY_PARTS = 8


class ShardFailed(Exception):
    """The shard cannot go on (non-retryable): ``failure`` says why."""

    def __init__(self, failure: Failure, message: str):
        super().__init__(message)
        self.failure = failure


@dataclass
class PartResult:
    """One part's results and errors as file content, and how many records each holds."""

    results: bytes
    succeeded: int
    errors: bytes
    failures: list[RecordFailure]


class HeapTrimmer:
    """Counts the parts a worker commits (all shards together) and hands the heap's free memory
    back every ``TRIM_EVERY_PARTS``."""

    def __init__(self) -> None:
        self.parts_committed = 0

    async def part_committed(self) -> None:
        self.parts_committed += 1
        if self.parts_committed % TRIM_EVERY_PARTS == 0:
            await asyncio.to_thread(release_free_memory)


async def uninterrupted(fn: Callable[..., Any], *args: Any) -> Any:
    """Blocking I/O in a thread that a cancellation cannot cut short: the activity ends only
    after the write has, so a cancelled shard writes nothing after it reports back."""
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await work
        raise


class ShardPipeline:
    def __init__(
        self,
        serve: ServeClient,
        input: ShardInput,
        plan: Plan,
        progress: ShardProgress,
        trimmer: HeapTrimmer,
    ):
        self.serve, self.input, self.plan = serve, input, plan
        self.layout = OutputLayout(input.output_uri)
        self.entry = plan.shards[input.shard]
        self.progress = progress  # the last committed part's: what the activity heartbeats
        self._trimmer = trimmer
        self._duplicates = dict(self.entry.duplicates)

    async def run(self) -> ShardProgress:
        """Process the shard's records from ``progress`` on and commit its final files."""
        reader: ShardReader = await asyncio.to_thread(
            JsonlShardReader, self.input.input_uri, self.progress.offset, self.plan.short_lines
        )
        ahead: collections.deque[tuple[asyncio.Task[PartResult], int, int, int]] = collections.deque()
        limit = asyncio.Semaphore(self.input.max_in_flight)
        total = self.entry.records
        try:
            read_done, read_line = self.progress.done, self.progress.line
            while self.progress.done < total:
                while len(ahead) < self.input.parts_in_flight and read_done < total:
                    want = min(self.input.checkpoint_every, total - read_done)
                    raw = await asyncio.to_thread(reader.read, want, read_line)
                    if len(raw.raws) != want:
                        raise ShardFailed(
                            Failure.INPUT_CHANGED,
                            f"input changed while the batch ran: shard {self.input.shard} expected {want} "
                            f"more records at line {read_line}, found {len(raw.raws)}",
                        )
                    task = asyncio.create_task(self._predict(reader, raw, limit))
                    ahead.append((task, want, raw.consumed, raw.next_line))
                    read_done, read_line = read_done + want, raw.next_line
                    del raw
                task, want, consumed, next_line = ahead.popleft()
                await self._commit_part(await task, want, consumed, next_line)
        finally:
            for task, *_ in ahead:
                task.cancel()
            await asyncio.gather(*(task for task, *_ in ahead), return_exceptions=True)
            reader.close()
        commit = asyncio.ensure_future(
            asyncio.to_thread(self.layout.commit_shard, self.input.shard, self.progress.part)
        )
        try:
            await asyncio.shield(commit)
        except asyncio.CancelledError:
            await commit  # cancelled while joining: the shard is done, so report it done
        return self.progress

    async def _commit_part(self, result: PartResult, records: int, consumed: int, next_line: int) -> None:
        done = self.progress
        progress = ShardProgress(
            part=done.part + 1,
            offset=done.offset + consumed,
            line=next_line,
            done=done.done + records,
            succeeded=done.succeeded + result.succeeded,
            failed=done.failed + len(result.failures),
        )
        checkpoint = Checkpoint(plan_id=self.plan.plan_id, progress=progress)
        await uninterrupted(
            self.layout.write_part, self.input.shard, done.part, result.results, result.errors, checkpoint
        )
        telemetry.record_part(self.input.model, result.succeeded, result.failures)
        self.progress = progress
        await self._trimmer.part_committed()

    async def _predict(self, reader: ShardReader, raw: RawPart, limit: asyncio.Semaphore) -> PartResult:
        """Results and errors for one part, in input order. The worker's hottest code.

        What a part holds while its requests are out sets the worker's peak memory: each
        micro-batch is encoded at once and the raw lines and parsed inputs let go, and each
        reply becomes result lines on arrival."""
        part = reader.parse(raw, self._duplicates)
        del raw
        ids, lines, positions, failures = part.ids, part.lines, part.positions, part.failures
        size = self.input.micro_batch_size
        batches = [(start, min(size, len(ids) - start)) for start in range(0, len(ids), size)]
        bodies = [self.serve.encode(part.inputs[start : start + count]) for start, count in batches]
        del part
        model = self.input.model

        async def send(start: int, count: int, body: bytes) -> bytes | tuple[list[Any], list[Any]]:
            async with limit:
                predictions, model_errors = await telemetry.serve_predict(self.serve, model, body, count)
            if model_errors.count(None) == count:  # none rejected (the usual case): lines now
                return jsonl_sink.results(ids[start : start + count], predictions)
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
                    failures[pos] = RecordFailure.of(ids[index], lines[pos], model_error(error))
            out.append(jsonl_sink.results(kept_ids, kept))
            succeeded += len(kept_ids)
        ordered = [failures[pos] for pos in sorted(failures)]
        return PartResult(b"".join(out), succeeded, jsonl_sink.failures(ordered), ordered)
