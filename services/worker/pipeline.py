"""One shard, end to end: read parts ahead, send their micro-batches to Serve, commit each part
in order (results, errors, then its checkpoint, then onto the shard's running results file),
and publish the shard's final files at the end. Temporal stays outside: the activity passes in
where to resume and reads ``progress`` for its heartbeats.

Several parts are in flight at once (``parts_in_flight``): the next parts' requests go out while
the current one is committed, so Serve never idles at a checkpoint. One semaphore
(``max_in_flight``) bounds the requests of all of them.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from services.errors import Failure
from services.worker import arrow_path, jsonl_sink, micro_batches, parquet_sink, telemetry
from services.worker.contracts import ShardInput
from services.worker.layout import OutputLayout
from services.worker.malloc import release_free_memory
from services.worker.manifests import Checkpoint, Plan, RecordFailure, ShardProgress
from services.worker.part_rows import PartRows
from services.worker.running_join import RunningJoin
from services.worker.serve_client import ServeClient, model_error
from services.worker.source import PartParser, RawPart, ShardFailed, ShardReader

# Parts committed (by all shards of a worker) between two hand-backs of the heap's free memory
# to the OS (malloc.py): often enough to bound peak RSS, rarely enough to cost little CPU.
TRIM_EVERY_PARTS = 8
# How long a cancelled shard keeps committing the parts it has in flight (their requests are out;
# committed, a resume does not send them again). Bounded: a worker's graceful shutdown waits.
DRAIN_S = 5.0


@dataclass
class PartResult:
    """One part's results and errors, and how many records each holds. Results are JSONL file
    content, or for Parquet output a table: it is encoded for its part file as the part commits,
    in a thread, not on the event loop, and the running results file takes it as it is."""

    results: bytes | pa.Table
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
        self.layout = OutputLayout(input.output_uri, plan.spec.output_format)
        self.entry = plan.shards[input.shard]
        self.progress = progress  # the last committed part's: what the activity heartbeats
        self._trimmer = trimmer
        self._parser = PartParser(
            plan, {(d.file, d.line): (d.first_file, d.first_line) for d in self.entry.duplicates}
        )
        self._parquet = plan.spec.output_format == "parquet"
        self._arrow_rows: int | None = None  # set in run(): rows per Arrow request; None: JSON
        self._running: RunningJoin | None = None  # set in run(): the results file as parts commit

    async def run(self) -> ShardProgress:
        """Process the shard's records from ``progress`` on and commit its final files."""
        self._arrow_rows = await arrow_path.use_arrow(self.serve, self.plan, self.input.model)
        reader = await asyncio.to_thread(
            ShardReader, self.plan, self.input.shard, self.progress, self.input.checkpoint_every
        )
        ahead: collections.deque[tuple[asyncio.Task[PartResult], int, ShardProgress]] = collections.deque()
        limit = asyncio.Semaphore(self.input.max_in_flight)
        total = self.entry.records
        part_rows = PartRows(self.input, columnar=self._arrow_rows is not None)
        try:
            # Only a shard that starts at its first part can write its results file as it goes.
            if self.progress.part == 0:
                self._running = await asyncio.to_thread(self._start_running_join)
            read_done = self.progress.done
            while self.progress.done < total:
                while len(ahead) < self.input.parts_in_flight and read_done < total:
                    raw = await asyncio.to_thread(self._read, reader, part_rows, total - read_done)
                    if not raw.count:  # the reader is past the shard's end: its checkpoint disagrees
                        raise ShardFailed(
                            Failure.INPUT_CHANGED,
                            f"shard {self.input.shard} found no records after {read_done} of {total}: its "
                            "input or its committed parts changed; start the batch over (start_over)",
                        )
                    task = asyncio.create_task(self._predict(raw, limit))
                    ahead.append((task, raw.count, raw.end))
                    read_done += raw.count
                    del raw
                task, count, end = ahead[0]
                result = await asyncio.shield(task)  # a cancellation leaves the part running: drained
                ahead.popleft()
                await self._commit_part(result, count, end)
        except asyncio.CancelledError:
            await self._drain(ahead)
            raise
        finally:
            for task, *_ in ahead:
                task.cancel()
            await asyncio.gather(*(task for task, *_ in ahead), return_exceptions=True)
            reader.close()
            if self._running is not None and self.progress.done < total:
                self._running.give_up()
        commit = asyncio.ensure_future(
            asyncio.to_thread(self.layout.commit_shard, self.input.shard, self.progress.part, self._running)
        )
        try:
            await asyncio.shield(commit)
        except asyncio.CancelledError:
            await commit  # cancelled while joining: the shard is done, so report it done
        return self.progress

    async def _drain(
        self, ahead: collections.deque[tuple[asyncio.Task[PartResult], int, ShardProgress]]
    ) -> None:
        """On cancellation, commit the parts whose requests are already out as they finish, in
        order, for up to ``DRAIN_S``: a resume then sends none of them again."""
        deadline = time.monotonic() + DRAIN_S
        while ahead and (left := deadline - time.monotonic()) > 0:
            task, count, end = ahead[0]
            done, _ = await asyncio.wait({task}, timeout=left)
            if not done or task.cancelled() or task.exception() is not None:
                return
            ahead.popleft()
            await self._commit_part(task.result(), count, end)

    async def _commit_part(self, result: PartResult, records: int, end: ShardProgress) -> None:
        done = self.progress
        progress = end.model_copy(
            update={
                "part": done.part + 1,
                "done": done.done + records,
                "succeeded": done.succeeded + result.succeeded,
                "failed": done.failed + len(result.failures),
            }
        )
        checkpoint = Checkpoint(plan_id=self.plan.plan_id, progress=progress)
        try:
            await uninterrupted(self._write_part, done.part, result, checkpoint)
        except asyncio.CancelledError:
            # Raised once the write has ended: the part is committed, and the next commit (a
            # drain) must follow it, not overwrite it.
            self._committed(result, progress)
            raise
        self._committed(result, progress)
        await self._trimmer.part_committed()

    @staticmethod
    def _read(reader: ShardReader, part_rows: PartRows, left: int) -> RawPart:
        """The next part, of ``part_rows.rows`` records. A shard's first read on the Arrow path
        is small, to see how wide its rows are; when a whole part fits a request, the rest of
        the part is read at once and joins it, so the first part costs Serve no extra request."""
        raw = reader.read(min(part_rows.rows, left))
        part_rows.saw(raw)
        if raw.count and (more := min(part_rows.rows, left) - raw.count) > 0:
            rest = reader.read(more)
            raw = RawPart(raw.chunks + rest.chunks, raw.count + rest.count, rest.end)
        return raw

    def _start_running_join(self) -> RunningJoin | None:
        try:
            return self.layout.running_join(self.input.shard)
        except OSError:  # e.g. the parts folder is not writable: its first part will say so
            return None

    def _write_part(self, part: int, result: PartResult, checkpoint: Checkpoint) -> None:
        results = result.results
        content = results if isinstance(results, bytes) else parquet_sink.to_bytes(results)
        self.layout.write_part(self.input.shard, part, content, result.errors, checkpoint)
        if self._running is not None:
            self._running.add(results)  # after the part is durable: it only follows them

    def _committed(self, result: PartResult, progress: ShardProgress) -> None:
        telemetry.record_part(self.input.model, result.succeeded, result.failures)
        self.progress = progress

    def _results(self, ids: list[Any], predictions: list[Any], keeps: list[Any] | None) -> Any:
        """One reply's results as the output format's piece: JSONL lines or an Arrow table."""
        if self._parquet:
            return parquet_sink.table(ids, predictions, keeps, self.plan.spec.keep_columns)
        return jsonl_sink.results(ids, predictions, keeps)

    async def _predict(self, raw: RawPart, limit: asyncio.Semaphore) -> PartResult:
        """Results and errors for one part, in input order. The worker's hottest code.

        What a part holds while its requests are out sets the worker's peak memory: each
        micro-batch is encoded at once and the raw records and parsed inputs let go, and each
        reply becomes results on arrival."""
        if self._arrow_rows and (
            columnar := arrow_path.prepare(self._parser, raw, self._arrow_rows, self.input)
        ):
            del raw
            return await arrow_path.predict_part(self.serve, self.plan, *columnar, self.input.model, limit)
        part = self._parser.parse(raw)
        del raw
        ids, keeps, positions, failures = part.ids, part.keeps, part.positions, part.failures
        max_bytes = self.input.max_request_bytes
        cut = micro_batches.cut(part.inputs, self.input.micro_batch_size, max_bytes)
        part.inputs = []
        for index, error in cut.rejected:  # never sent: Serve would refuse the whole request
            file, line = part.where(positions[index])
            failures[positions[index]] = RecordFailure.of(ids[index], line, error, self.plan.files[file].uri)
        batches = [(start, count) for start, count, _ in cut.requests]
        bodies = [body for _, _, body in cut.requests]
        del cut
        model = self.input.model

        def kept(start: int, count: int) -> list[Any] | None:
            return None if keeps is None else keeps[start : start + count]

        async def send(start: int, count: int, body: bytes) -> tuple[Any, None] | tuple[list[Any], list[Any]]:
            async with limit:
                predictions, model_errors = await telemetry.serve_predict(self.serve, model, body, count)
            if model_errors.count(None) == count:  # none rejected (the usual case): results now
                return self._results(ids[start : start + count], predictions, kept(start, count)), None
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
        out: list[Any] = []
        succeeded = 0
        for (start, count), task in zip(batches, tasks, strict=True):
            results, model_errors = task.result()
            if model_errors is None:
                out.append(results)
                succeeded += count
                continue
            good: list[int] = []
            for index, error in zip(itertools.count(start), model_errors, strict=False):
                if error is None:
                    good.append(index)
                else:
                    file, line = part.where(positions[index])
                    failures[positions[index]] = RecordFailure.of(
                        ids[index], line, model_error(error), self.plan.files[file].uri
                    )
            out.append(
                self._results(
                    [ids[i] for i in good],
                    [results[i - start] for i in good],
                    None if keeps is None else [keeps[i] for i in good],
                )
            )
            succeeded += len(good)
        ordered = [failures[pos] for pos in sorted(failures)]
        body = parquet_sink.part_table(out) if self._parquet else b"".join(out)
        return PartResult(body, succeeded, jsonl_sink.failures(ordered), ordered)
