"""Record the histories ``test_replay.py`` replays: ``make record-histories``.

Runs representative batches on a real Temporal dev server, with workers built by ``build_worker``
(in-process, and as processes for the one that is killed) against a real local Ray Serve, and
writes every run's history as JSON (``WorkflowHistory.to_json()``, what ``temporal workflow show
--output json`` prints) to ``tests/replay/histories/<scenario>.json``, a continue-as-new chain
as ``<scenario>.run<N>.json``.

It writes only the scenarios asked for, replacing their files: by default those that have no
history yet; named ones (``record SCENARIO ...``); or all (``--all``). A history kept from older
workflow code is evidence that batches started on that code still replay, so re-record an
existing scenario on purpose only, after keeping its files as ``<scenario>.<tag>.json`` (``git
mv``: tagged files are never touched). See the README's "Changing the workflow safely".

    .venv/bin/python -m tests.replay.record [SCENARIO ...] [--all] [--list] [--keep-state]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle, WorkflowHistory

from services import constants as c
from services.cli import start_batch
from services.lineage_cli import original_input
from services.local.paths import REPO_ROOT
from services.local.ray_serve import LocalRayServe, ensure_token
from services.local.temporal_dev import TemporalDevServer
from services.worker.config import WorkerSettings
from services.worker.contracts import (
    BatchInferenceInput,
    BatchInferenceOutput,
    Progress,
    ScheduleContext,
    Tuning,
)
from services.worker.serve_client import RetrySettings, ServeClient, TokenSource
from services.worker.worker import build_worker
from tests.helpers.processes import WorkerProcesses
from tests.helpers.records import echo_records, iris_records, write_jsonl
from tests.helpers.replay import HISTORIES, PRIORITY_INPUT, evidence_missing
from tests.helpers.temporal import connect_when_ready
from tests.helpers.waiting import wait_until
from tests.helpers.workers import Attempts, worker_on

STATE = REPO_ROOT / ".state" / "record-histories"
QUEUE = "replay"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
# Slow enough to stop mid-shard: one 10-record request at a time, a part every 100 records.
SLOW = dict(
    shard_size=500, max_concurrent_shards=2, checkpoint_every=100, micro_batch_size=10,
    max_in_flight=1, parts_in_flight=1, heartbeat_timeout_s=2,
)  # fmt: skip
# A shard gives up on an unavailable Serve within about a second (3 in-activity attempts), and
# the batch asks Serve again after 1 s, then at most every 4 s: tests/faults' outage settings.
OUTAGE_RETRIES = RetrySettings(max_attempts=3, initial_s=0.2, max_s=0.5)
OUTAGE_TUNING = dict(shard_max_attempts=2, serve_wait_initial_s=1, serve_wait_max_s=4)

log = logging.getLogger("record-histories")


class Recorder:
    """Runs the scenarios on one dev server and one Serve; writes their histories."""

    def __init__(
        self,
        client: Client,
        address: str,
        serve: LocalRayServe,
        token_file: Path,
        data: Path,
        wanted: set[str],
    ):
        self.client, self.address, self.serve = client, address, serve
        self.token_file, self.data = token_file, data
        self.wanted = wanted  # the scenarios whose files are written
        self.written: list[Path] = []

    # --- plumbing ------------------------------------------------------------------------------

    async def start(self, name: str, batch: BatchInferenceInput, queue: str = QUEUE) -> WorkflowHandle:
        return await start_batch(self.client, batch, queue, f"replay-{name}")

    async def save(self, name: str, handle: WorkflowHandle) -> None:
        """Every run of ``handle``'s execution, from the one it started with to the last one it
        continued as, each to its own file, in place of the scenario's previous ones; nothing if
        the scenario was not asked for (recorded only as the way to another one)."""
        if name not in self.wanted:
            log.info("%s: not asked for, not written", name)
            return
        runs: list[WorkflowHistory] = []
        run_id: str | None = handle.first_execution_run_id or handle.run_id
        while run_id:
            history = await self.client.get_workflow_handle(handle.id, run_id=run_id).fetch_history()
            runs.append(history)
            last = history.events[-1]
            continued = last.HasField("workflow_execution_continued_as_new_event_attributes")
            run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id or None
            run_id = run_id if continued else None
        for history in runs:  # a recording that missed what it is for is not kept
            missing = evidence_missing(name, list(history.events))
            if missing:
                rejected = STATE / f"rejected-{name}.json"  # to see what it holds instead
                rejected.write_text(history.to_json() + "\n")
                raise RuntimeError(
                    f"{name}: the recorded history lacks {'; '.join(missing)} (see {rejected})"
                )
        for old in own_files(name):
            old.unlink()
        for n, history in enumerate(runs, 1):
            path = HISTORIES / (f"{name}.run{n}.json" if len(runs) > 1 else f"{name}.json")
            path.write_text(history.to_json() + "\n")
            self.written.append(path)
            log.info("%s: %d events", path.name, len(history.events))

    async def finished(self, handle: WorkflowHandle) -> BatchInferenceOutput | BaseException:
        try:
            return await handle.result()
        except WorkflowFailureError as exc:
            return exc.cause or exc

    async def progress(self, handle: WorkflowHandle) -> Progress:
        return await handle.query(c.PROGRESS_QUERY, result_type=Progress)

    async def until(self, handle: WorkflowHandle, check: Callable[[Progress], bool], what: str) -> None:
        deadline = time.monotonic() + 120
        while not check(await self.progress(handle)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{handle.id}: {what}")
            await asyncio.sleep(0.2)

    @contextlib.asynccontextmanager
    async def worker(self) -> AsyncIterator[None]:
        """An in-process worker (the real ``build_worker``) on the recording's task queue."""
        serve = ServeClient(self.serve.url, TokenSource(token_file=str(self.token_file)))
        worker = build_worker(
            self.client, WorkerSettings(task_queue=QUEUE, serve_url=self.serve.url, metrics_port=0), serve
        )
        try:
            async with worker:
                yield
        finally:
            await serve.aclose()

    def folder(self, name: str) -> Path:
        return self.data / name

    # --- the scenarios -------------------------------------------------------------------------

    async def file_continue_as_new(self) -> None:
        """600 records in 12 shards, continued as new after every 4: three runs."""
        source = write_jsonl(self.folder("can") / "in.jsonl", echo_records(600, "can"))
        batch = BatchInferenceInput(
            input_uri=str(source), output_uri=str(self.folder("can") / "out"), model="echo",
            tuning=Tuning(shard_size=50, max_concurrent_shards=2, checkpoint_every=25,
                          continue_as_new_after_shards=4),
        )  # fmt: skip
        handle = await self.start("file-continue-as-new", batch)
        result = await handle.result()
        assert result.runs == 3 and result.succeeded == 600, result
        await self.save("file-continue-as-new", handle)

    async def inline(self) -> None:
        tuning = Tuning(micro_batch_size=3, max_concurrent_shards=2)
        batch = BatchInferenceInput(records=echo_records(7, "in"), model="echo", tuning=tuning)
        handle = await self.start("inline", batch)
        assert (await handle.result()).succeeded == 7
        await self.save("inline", handle)

    async def cancelled_then_resumed(self) -> None:
        """A batch cancelled with shards running, then started again on its folder under its id
        (what ``batch-inference resume`` does): the second run reuses what the first committed."""
        source = write_jsonl(self.folder("resume") / "in.jsonl", echo_records(3000, "res"))
        batch = BatchInferenceInput(
            input_uri=str(source), output_uri=str(self.folder("resume") / "out"), model="echo",
            tuning=Tuning(**SLOW),
        )  # fmt: skip
        handle = await self.start("cancelled", batch)
        await self.until(handle, lambda p: p.shards_done >= 1 and p.shards_running >= 1, "a shard done")
        await handle.cancel()
        outcome = await self.finished(handle)
        assert "cancel" in str(outcome).lower(), outcome
        await self.save("cancelled", handle)
        again = await original_input(self.client, handle.id)
        resumed = await start_batch(self.client, again, QUEUE, handle.id)
        result = await resumed.result()
        assert result.succeeded == 3000 and result.resumed_records > 0, result
        await self.save("resumed", resumed)

    async def error_budget(self) -> None:
        """Five records the iris model rejects in the first shard, one allowed: the batch fails
        there, cancelling the shards still running."""
        bad = [{"id": f"text{i}", "input": {"text": "not iris"}} for i in range(5)]
        source = write_jsonl(self.folder("budget") / "in.jsonl", bad + iris_records(115, "ok"))
        batch = BatchInferenceInput(
            input_uri=str(source), output_uri=str(self.folder("budget") / "out"), model="iris",
            max_error_ratio=0.01, tuning=Tuning(shard_size=10, max_concurrent_shards=4, checkpoint_every=5),
        )  # fmt: skip
        handle = await self.start("error-budget", batch)
        outcome = await self.finished(handle)
        assert "error budget exceeded" in str(outcome), outcome
        await self.save("error-budget", handle)

    async def parquet_options(self) -> None:
        """Hive-partitioned Parquet input, four columns as the model input, Parquet results with
        a column and the partition key kept."""
        events = self.folder("parquet") / "events" / "date=2026-12-01"
        events.mkdir(parents=True)
        for n in range(2):
            rows = 300
            table = pa.table(
                {
                    "id": [f"p{n}-{i}" for i in range(rows)],
                    **{f: [5.1 + (i % 7) / 10 for i in range(rows)] for f in FEATURES},
                    "customer": [f"c{i % 5}" for i in range(rows)],
                }
            )
            pq.write_table(table, events / f"part-{n}.parquet", row_group_size=100)
        batch = BatchInferenceInput(
            input_uri=str(events.parent), output_uri=str(self.folder("parquet") / "out"), model="iris",
            input_columns=FEATURES, keep_columns=["customer", "date"], output_format="parquet",
            tuning=Tuning(shard_size=150, max_concurrent_shards=2, checkpoint_every=50),
        )  # fmt: skip
        handle = await self.start("parquet-options", batch)
        assert (await handle.result()).succeeded == 600
        await self.save("parquet-options", handle)

    async def retried_records(self) -> None:
        """A batch that completes with failures (within its budget), then a retry of only its
        model failures with another model (``retry_of``)."""
        records = iris_records(90, "ok") + [{"id": f"text{i}", "input": {"text": "x"}} for i in range(10)]
        source = write_jsonl(self.folder("retry") / "in.jsonl", records)
        output = self.folder("retry") / "out"
        batch = BatchInferenceInput(
            input_uri=str(source), output_uri=str(output), model="iris", max_error_ratio=0.2,
            tuning=Tuning(shard_size=50, checkpoint_every=20),
        )  # fmt: skip
        handle = await self.start("with-failures", batch)
        assert (await handle.result()).failed == 10
        await self.save("with-failures", handle)
        retry = BatchInferenceInput(retry_of=str(output), retry_only=["model"], model="echo")
        handle = await self.start("retry", retry)
        assert (await handle.result()).succeeded == 10
        await self.save("retry", handle)

    async def scheduled(self) -> None:
        """A recurring batch's run started by hand for a given time: its templates filled from it."""
        when = datetime(2026, 12, 1, tzinfo=UTC)
        write_jsonl(self.folder("scheduled") / "in" / "2026-12-01.jsonl", echo_records(40, "sch"))
        batch = BatchInferenceInput(
            input_uri=str(self.folder("scheduled") / "in" / "{date}.jsonl"),
            output_uri=str(self.folder("scheduled") / "out" / "{date}"),
            model="echo", schedule=ScheduleContext(scheduled_time=when), tuning=Tuning(shard_size=20),
        )  # fmt: skip
        handle = await self.start("scheduled", batch)
        result = await handle.result()
        assert result.output_uri and result.output_uri.endswith("2026-12-01"), result
        await self.save("scheduled", handle)

    async def worker_killed(self) -> None:
        """A worker process SIGKILLed mid-shard (after a committed part); another one starts: the
        shard's next attempt resumes from its heartbeat, the workflow task moves off the dead
        worker's sticky queue."""
        queue = f"{QUEUE}-kill"
        source = write_jsonl(self.folder("kill") / "in.jsonl", echo_records(2000, "kill"))
        output = self.folder("kill") / "out"
        batch = BatchInferenceInput(
            input_uri=str(source), output_uri=str(output), model="echo",
            tuning=Tuning(**{**SLOW, "heartbeat_timeout_s": 3}),
        )  # fmt: skip
        processes = WorkerProcesses(self.folder("kill"))
        try:

            def spawn():
                return processes.spawn(self.address, queue, self.serve.url, self.token_file).polling()

            first = await spawn()
            handle = await self.start("worker-killed", batch, queue)
            await wait_until(
                lambda: any((output / c.PARTS_DIR).glob("shard-*/part-*.ckpt.jsonl")), 120, "a committed part"
            )
            first.signal(signal.SIGKILL)
            await first.exited(30)
            await spawn()
            result = await handle.result()
            assert result.succeeded == 2000 and result.resumed_records > 0, result
        finally:
            processes.kill_leftovers()
        await self.save("worker-killed", handle)

    async def progress_published(self) -> None:
        """A batch publishing its progress (the dev server has the search attributes): upserts
        at its start, as shards finish and at its end, and a timer for what the 1 s interval held
        back (``publish-progress``)."""
        source = write_jsonl(self.folder("progress") / "in.jsonl", echo_records(1200, "pub"))
        batch = BatchInferenceInput(
            input_uri=str(source), output_uri=str(self.folder("progress") / "out"), model="echo",
            tuning=Tuning(shard_size=100, max_concurrent_shards=2, checkpoint_every=50,
                          micro_batch_size=10, max_in_flight=1, progress_every_s=1),
        )  # fmt: skip
        handle = await self.start("progress-published", batch)
        assert (await handle.result()).succeeded == 1200
        await self.save("progress-published", handle)

    async def priority(self) -> None:
        """A batch whose input sets a priority and a fairness key, started without them on the
        workflow (as ``temporal workflow start --input`` does): its shards get them only from
        the workflow's scheduling (``activity-priority``)."""
        source = write_jsonl(self.folder("priority") / "in.jsonl", echo_records(200, "pri"))
        batch = BatchInferenceInput(
            input_uri=str(source), output_uri=str(self.folder("priority") / "out"), model="echo",
            tuning=Tuning(shard_size=50, max_concurrent_shards=2), **PRIORITY_INPUT,
        )  # fmt: skip
        handle = await self.client.start_workflow(
            c.WORKFLOW_NAME, batch, id="replay-priority", task_queue=QUEUE, result_type=BatchInferenceOutput
        )
        assert (await handle.result()).succeeded == 200
        await self.save("priority", handle)

    async def serve_outage(self) -> None:
        """Serve stopped mid-batch until the shards give up on it (ServeUnavailable) and a check
        of Serve finds it still down, then started again: the batch waits for it (timers,
        ``check_serve``), re-runs the shards from their checkpoints and completes
        (``wait-out-serve-outages``). A worker of its own, with the short retry budget."""
        total = 3000
        source = write_jsonl(self.folder("outage") / "in.jsonl", echo_records(total, "out"))
        batch = BatchInferenceInput(
            input_uri=str(source), output_uri=str(self.folder("outage") / "out"), model="echo",
            tuning=Tuning(**{**SLOW, "heartbeat_timeout_s": 5}, **OUTAGE_TUNING),
        )  # fmt: skip
        attempts = Attempts()
        async with worker_on(self.client, self.serve.url, self.token_file, attempts, OUTAGE_RETRIES) as queue:
            handle = await self.start("serve-outage", batch, queue)
            await wait_until(lambda: attempts.count("200") >= 20, 300, "Serve answering the shards")
            log.info("stopping Serve")
            await asyncio.to_thread(self.serve.stop)
            # Each running shard gives up once, then waits: an attempt more means a failed check.
            window = batch.tuning.max_concurrent_shards
            await self.until(
                handle,
                lambda p: p.status == "waiting_for_serve" and p.serve_attempts > window,
                "the batch waiting for Serve, a check of it failed",
            )
            log.info("starting Serve again")
            await asyncio.to_thread(self.serve.start)
            result = await handle.result()
        assert result.succeeded == total and result.failed == 0 and result.resumed_records > 0, result
        await self.save("serve-outage", handle)

    async def run(self) -> None:
        """The recordings of the scenarios asked for: on one shared in-process worker, then
        those that bring their own workers."""
        todo = [r for r in RECORDINGS if self.wanted & set(r.scenarios)]
        shared = [r for r in todo if r.shared_worker]
        if shared:
            async with self.worker():
                for recording in shared:
                    log.info("recording %s", recording.method)
                    await getattr(self, recording.method)()
        for recording in todo:
            if not recording.shared_worker:
                log.info("recording %s", recording.method)
                await getattr(self, recording.method)()


@dataclass(frozen=True)
class Recording:
    """A ``Recorder`` method and the scenarios it writes; ``shared_worker``: it runs on the
    shared in-process worker (else it brings its own)."""

    method: str
    scenarios: tuple[str, ...]
    shared_worker: bool = True


RECORDINGS = (
    Recording("file_continue_as_new", ("file-continue-as-new",)),
    Recording("inline", ("inline",)),
    Recording("cancelled_then_resumed", ("cancelled", "resumed")),
    Recording("error_budget", ("error-budget",)),
    Recording("parquet_options", ("parquet-options",)),
    Recording("retried_records", ("with-failures", "retry")),
    Recording("scheduled", ("scheduled",)),
    Recording("progress_published", ("progress-published",)),
    Recording("priority", ("priority",)),
    Recording("worker_killed", ("worker-killed",), shared_worker=False),
    Recording("serve_outage", ("serve-outage",), shared_worker=False),  # last: it stops Serve
)
SCENARIOS = [name for recording in RECORDINGS for name in recording.scenarios]


def own_files(name: str) -> list[Path]:
    """The files the recorder writes for scenario ``name`` (``<name>.json``, ``<name>.run<N>.json``),
    not its tagged copies (``<name>.<tag>.json``: an older code's histories)."""
    own = re.compile(rf"{re.escape(name)}(\.run\d+)?\.json")
    return sorted(path for path in HISTORIES.glob(f"{name}.*json") if own.fullmatch(path.name))


async def record(wanted: set[str], keep_state: bool) -> list[Path]:
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir(parents=True)
    temporal = TemporalDevServer.on_free_ports(STATE / "temporal").start()
    token_file = ensure_token(STATE / "serve-token")
    serve = LocalRayServe.on_free_ports(STATE / "ray", token_file)
    try:
        log.info("starting Ray Serve")
        await asyncio.to_thread(serve.start)
        client = await connect_when_ready(temporal.address)
        recorder = Recorder(client, temporal.address, serve, token_file, STATE / "data", wanted)
        HISTORIES.mkdir(exist_ok=True)
        await recorder.run()
        return recorder.written
    finally:
        await asyncio.to_thread(serve.stop)
        temporal.stop()
        if not keep_state:
            shutil.rmtree(STATE, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "scenarios", nargs="*", metavar="SCENARIO",
        help="record these, replacing their files (default: the scenarios with no history yet)",
    )  # fmt: skip
    parser.add_argument("--all", action="store_true", help="record every scenario, replacing their files")
    parser.add_argument("--list", action="store_true", help="list the scenarios and their files")
    parser.add_argument("--keep-state", action="store_true", help=f"keep {STATE} (servers' logs, data)")
    args = parser.parse_args()
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    if args.list:
        for name in SCENARIOS:
            print(f"{name:22} {' '.join(p.name for p in own_files(name)) or '(not recorded)'}")
        return 0
    if args.all:
        wanted = set(SCENARIOS)
    else:
        wanted = set(args.scenarios) or {name for name in SCENARIOS if not own_files(name)}
    if not wanted:
        print("every scenario has its histories; name those to re-record (see --help)", file=sys.stderr)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    log.info("recording %s", ", ".join(name for name in SCENARIOS if name in wanted))
    written = asyncio.run(record(wanted, args.keep_state))
    print(f"{len(written)} histories in {HISTORIES.relative_to(REPO_ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
