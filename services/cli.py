"""``batch-inference``: run the whole stack locally, start its parts, submit and watch batches."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from services import batches_cli, lineage_cli, progress_exporter, schedule_cli
from services import constants as c
from services.cli_errors import (
    add_priority_flags,
    batch_input,
    batch_named,
    connect,
    describe_validation,
    failure_line,
    query_progress,
    split_settings,
    tuning_from,
)
from services.errors import CommandError
from services.local.processes import sigterm_as_ctrl_c
from services.worker.config import TemporalSettings, WorkerSettings
from services.worker.contracts import BatchInferenceInput, BatchInferenceOutput, Progress

# --- submitting and watching -----------------------------------------------------------------


def build_input(args: argparse.Namespace) -> BatchInferenceInput:
    records = None
    if args.inline is not None:
        text = Path(args.inline[1:]).read_text() if args.inline.startswith("@") else args.inline
        records = json.loads(text)
        if not isinstance(records, list):
            raise ValueError("--inline takes a JSON list of records")
    data, tuning = split_settings(args.set or [])  # an unknown key is refused, naming the valid ones
    inputs = [abs_uri(uri) for uri in args.input or []]
    return batch_input(
        records=records,
        input_uri=(inputs[0] if len(inputs) == 1 else inputs) if inputs else None,
        output_uri=abs_uri(args.output),
        model=args.model,
        max_error_ratio=args.max_error_ratio,
        tuning=tuning_from(tuning),
        priority=args.priority,
        fairness_key=args.fairness_key,
        fairness_weight=args.fairness_weight,
        **data,
    )


def abs_uri(uri: str | None) -> str | None:
    """Local paths become absolute: the worker may run elsewhere (another directory)."""
    if uri is None or "://" in uri:
        return uri
    return str(Path(uri).expanduser().resolve())


async def start_batch(
    client: Client,
    batch: BatchInferenceInput,
    task_queue: str,
    workflow_id: str | None = None,
    use_existing: bool = False,
) -> WorkflowHandle:
    """Start a batch; with ``use_existing`` a running batch of the same id is joined instead, so
    a retried submitter (e.g. a Kubernetes Job) waits for the batch it already started."""
    return await client.start_workflow(
        c.WORKFLOW_NAME,
        batch,
        id=workflow_id or f"batch-{uuid.uuid4().hex[:12]}",
        task_queue=task_queue,
        result_type=BatchInferenceOutput,
        # On the workflow: its tasks are ordered too, and its activities inherit it.
        priority=batch.temporal_priority(),
        id_conflict_policy=(
            WorkflowIDConflictPolicy.USE_EXISTING if use_existing else WorkflowIDConflictPolicy.FAIL
        ),
    )


async def watch(handle: WorkflowHandle, interval_s: float = 0.5, out=sys.stderr) -> BatchInferenceOutput:
    """Show progress from the ``progress`` query until the workflow ends: a bar on a terminal,
    a plain line every few seconds otherwise (CI logs, pipes)."""
    from tqdm import tqdm

    result_task = asyncio.create_task(handle.result())
    tty = out.isatty()
    bar = tqdm(total=0, unit="rec", file=out, dynamic_ncols=True) if tty else None
    last_line = 0.0
    try:
        while not result_task.done():
            with contextlib.suppress(RPCError):
                p: Progress = await handle.query(c.PROGRESS_QUERY, result_type=Progress)
                done = p.succeeded + p.failed
                if bar is not None:
                    bar.total = p.total_records or bar.total
                    bar.n = done
                    bar.set_postfix(
                        status=p.status, failed=p.failed, shards=f"{p.shards_done}/{p.shards_total}"
                    )
                elif time.monotonic() - last_line >= 3:
                    last_line = time.monotonic()
                    pct = f" ({100 * done / p.total_records:.0f}%)" if p.total_records else ""
                    print(
                        f"progress: {done}/{p.total_records}{pct} records, {p.failed} failed, shards "
                        f"{p.shards_done}/{p.shards_total} ({p.shards_running} running), "
                        f"{p.records_per_second:.0f} rec/s [{p.serve_wait_line() or p.status}]",
                        file=out,
                        flush=True,
                    )
            await asyncio.wait({result_task}, timeout=interval_s)
        result = result_task.result()
        if bar is not None:
            bar.total, bar.n = result.total_records, result.succeeded + result.failed
        return result
    finally:
        if bar is not None:
            bar.close()
        if not result_task.done():
            result_task.cancel()


def print_summary(result: BatchInferenceOutput, wall_s: float | None = None) -> None:
    print(json.dumps(result.model_dump(mode="json", exclude_none=True), indent=2))
    if wall_s is not None:
        done = result.succeeded + result.failed
        print(
            f"\n{result.status}: {result.succeeded} succeeded, {result.failed} failed of "
            f"{result.total_records} records in {wall_s:.1f}s wall ({done / wall_s:.0f} records/s)"
        )
    if result.output_uri:
        print(f"results: {result.output_uri}/   errors: {result.errors_uri}/")


def describe_failure(err: WorkflowFailureError) -> str:
    """Why a batch failed, in one line (``cli_errors.failure_line``)."""
    return failure_line(err)


async def follow(handle: WorkflowHandle) -> BatchInferenceOutput | None:
    """Watch a batch to its end and print its summary; None, after saying why, if it failed."""
    started = time.monotonic()
    try:
        result = await watch(handle)
    except WorkflowFailureError as err:
        print(f"batch failed: {describe_failure(err)}", file=sys.stderr)
        return None
    print_summary(result, time.monotonic() - started)
    return result


# --- commands --------------------------------------------------------------------------------


async def cmd_submit(args: argparse.Namespace) -> int:
    batch = build_input(args)
    settings = TemporalSettings()
    client = await connect(settings)
    try:
        handle = await start_batch(
            client, batch, args.task_queue or settings.task_queue, args.id, args.id_conflict == "use-existing"
        )
    except WorkflowAlreadyStartedError:
        print(
            f"error: a batch with id {args.id!r} is already running; pass --id-conflict use-existing "
            "to wait for it instead",
            file=sys.stderr,
        )
        return 2
    return await started(handle, args.wait)


async def started(handle: WorkflowHandle, wait: bool, what: str = "") -> int:
    """Say a batch started; with ``wait``, follow it to its end (exit 1 if it failed)."""
    print(f"started workflow {handle.id}{what}", file=sys.stderr)
    if not wait:
        print(handle.id)
        return 0
    return 0 if await follow(handle) else 1


async def cmd_progress(args: argparse.Namespace) -> int:
    client = await connect()
    handle = client.get_workflow_handle(args.workflow_id, result_type=BatchInferenceOutput)
    with batch_named(args.workflow_id):
        if args.watch:
            await handle.describe()  # the watch below treats every RPC error as "not yet"
            return 0 if await follow(handle) else 1
        progress = await query_progress(handle)
    print(progress.model_dump_json(indent=2))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from services.worker.worker import main

    return main()


def _run_stopping_on_sigterm(main: Coroutine[Any, Any, int]) -> int:
    """``asyncio.run(main)`` where SIGTERM cancels ``main`` (so its ``finally`` stops what it
    started, as for Ctrl-C), and exits 143 (128 + SIGTERM) after."""

    async def runner() -> int:
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        assert task is not None

        def cancel() -> None:
            loop.add_signal_handler(signal.SIGTERM, lambda: None)  # a second one: already stopping
            task.cancel()

        loop.add_signal_handler(signal.SIGTERM, cancel)
        return await main

    try:
        return asyncio.run(runner())
    except asyncio.CancelledError:
        return 128 + signal.SIGTERM


def _wait_forever(what: str) -> None:
    print(f"{what} running; Ctrl-C to stop", file=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)


def cmd_temporal(args: argparse.Namespace) -> int:
    from services.local.ports import check_temporal_ports
    from services.local.temporal_dev import TemporalDevServer

    ui_port = args.port + c.TEMPORAL_UI_PORT_OFFSET
    check_temporal_ports(args.port, ui_port)
    server = TemporalDevServer(args.state_dir, port=args.port, ui_port=ui_port)
    try:
        server.start()
        print(
            f"Temporal dev server at {server.address}, UI http://127.0.0.1:{server.ui_port}", file=sys.stderr
        )
        _wait_forever("Temporal")
    finally:
        server.stop()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from services.local.ports import check_serve_ports
    from services.local.ray_serve import LocalRayServe, ensure_token

    token = ensure_token(args.state_dir / "serve-token")
    if args.free_ports:
        serve = LocalRayServe.on_free_ports(args.state_dir, token, high_throughput=args.high_throughput)
    else:
        serve = LocalRayServe(args.state_dir, token, high_throughput=args.high_throughput)
    check_serve_ports(serve.http_port, serve.gcs_port, serve.dashboard_port, serve.metrics_port)
    try:
        serve.start()
        print(
            f"Ray Serve at {serve.url} (dashboard {serve.dashboard}, metrics "
            f"http://127.0.0.1:{serve.metrics_port}/metrics); token file {token}\n"
            f"worker: {c.ENV_SERVE_TOKEN_FILE}={token} {c.ENV_SERVE_URL}={serve.url} "
            "batch-inference worker",
            file=sys.stderr,
        )
        _wait_forever("Serve")
    finally:
        serve.stop()
    return 0


def _start_prometheus(state: Path, settings: WorkerSettings, serve):
    """A local Prometheus scraping the worker and Ray with the alert rules, if installed."""
    from services.local.processes import free_port
    from services.local.prometheus import LocalPrometheus, prometheus_config

    if not LocalPrometheus.available():
        print("--prometheus: no 'prometheus' binary (apt-get install prometheus); skipped", file=sys.stderr)
        return None
    config = prometheus_config(
        [f"127.0.0.1:{settings.metrics_port}"], [f"127.0.0.1:{serve.metrics_port}"], scrape_interval="5s"
    )
    prometheus = LocalPrometheus(state / "prometheus", config, port=free_port()).start()
    print(
        f"Prometheus {prometheus.url} (scraping the worker and Ray every 5s; alert rules loaded: "
        f"{prometheus.url}/alerts)",
        file=sys.stderr,
    )
    return prometheus


async def _run_stack(args: argparse.Namespace) -> int:
    from services.local.paths import SAMPLE_DATASET
    from services.local.ports import check_serve_ports, check_temporal_ports
    from services.local.ray_serve import LocalRayServe, ensure_token
    from services.local.temporal_dev import TemporalDevServer
    from services.worker.worker import run_worker

    state: Path = args.state_dir
    token = ensure_token(state / "serve-token")
    if args.free_ports:
        temporal = TemporalDevServer.on_free_ports(state)
        serve = LocalRayServe.on_free_ports(state, token, high_throughput=args.high_throughput)
    else:
        temporal = TemporalDevServer(state)
        serve = LocalRayServe(state, token, high_throughput=args.high_throughput)
    check_temporal_ports(temporal.port, temporal.ui_port)
    check_serve_ports(serve.http_port, serve.gcs_port, serve.dashboard_port, serve.metrics_port)
    stop = asyncio.Event()
    worker_task: asyncio.Task | None = None
    prometheus = None
    try:
        t0 = time.monotonic()
        print(f"starting Temporal dev server ({state / 'temporal.db'}) ...", file=sys.stderr)
        await asyncio.to_thread(temporal.start)
        print("starting Ray Serve from charts/batch-inference/files/serve-config.yaml ...", file=sys.stderr)
        await asyncio.to_thread(serve.start)
        print(
            f"Temporal {temporal.address} (UI http://127.0.0.1:{temporal.ui_port}), "
            f"Serve {serve.url}, Ray dashboard {serve.dashboard}, "
            f"Ray metrics http://127.0.0.1:{serve.metrics_port}/metrics (ray_serve_*, ray_batch_inference_*) "
            f"[up in {time.monotonic() - t0:.1f}s]",
            file=sys.stderr,
        )
        os.environ[c.ENV_SERVE_TOKEN_FILE] = str(token)
        settings = WorkerSettings(address=temporal.address, serve_url=serve.url)
        # The stack's one worker: it also exports per-batch progress (no progress exporter here).
        settings.batch_progress_metrics = True
        if args.free_ports:
            from services.local.processes import free_port

            settings.metrics_port = free_port()
        worker_task = asyncio.create_task(run_worker(settings, stop, install_signals=False))
        if settings.metrics_port:
            print(
                f"worker metrics http://{settings.metrics_host}:{settings.metrics_port}/metrics "
                "(batch_inference_*, Temporal SDK temporal_*)",
                file=sys.stderr,
            )
        if args.prometheus:
            prometheus = _start_prometheus(state, settings, serve)
        client = await settings.connect()
        input_path = Path(args.input or SAMPLE_DATASET).resolve()
        output = (
            Path(args.output) if args.output else state / "output" / time.strftime("%Y%m%d-%H%M%S")
        ).resolve()
        batch = BatchInferenceInput(input_uri=str(input_path), output_uri=str(output), model=args.model)
        handle = await start_batch(client, batch, settings.task_queue)
        print(f"batch {handle.id}: {input_path} -> {output} (model {args.model})", file=sys.stderr)
        result = await follow(handle)
        if result is None:
            return 1
        return 0 if result.failed == 0 else 2
    finally:
        stop.set()
        if worker_task:
            with contextlib.suppress(Exception):
                await worker_task
        if prometheus is not None:
            print(f"stopping Prometheus (its data stays in {prometheus.state_dir})", file=sys.stderr)
            await asyncio.to_thread(prometheus.stop)
        print("stopping Ray Serve and Temporal ...", file=sys.stderr)
        await asyncio.to_thread(serve.stop)
        await asyncio.to_thread(temporal.stop)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="batch-inference", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    state_help = "folder for the dev server's database, tokens and Ray's files"

    high_throughput_help = (
        "Ray Serve's high-throughput mode (HAProxy ingress): faster, but Ray binds "
        "replica and HAProxy ports on all interfaces (docs/performance.md)"
    )
    free_ports_help = "free ports instead of the fixed ones (beside another local stack; printed at start)"
    run = sub.add_parser("run", help="start Temporal, Ray Serve and a worker; run a batch; stop all")
    run.add_argument("--state-dir", type=Path, default=Path(".state"), help=state_help)
    run.add_argument("--high-throughput", action="store_true", help=high_throughput_help)
    run.add_argument("--free-ports", action="store_true", help=free_ports_help)
    run.add_argument("--input", help="JSONL input (default: the bundled 10,000-record Iris sample)")
    run.add_argument("--output", help="output folder (default: <state-dir>/output/<timestamp>)")
    run.add_argument("--model", default="iris", help="model name in the Serve config (default: iris)")
    run.add_argument(
        "--prometheus",
        action="store_true",
        help="also start a local Prometheus (if installed) scraping the worker and Ray; print its URL",
    )

    t = sub.add_parser("temporal", help="run only the Temporal dev server")
    t.add_argument("--state-dir", type=Path, default=Path(".state"), help=state_help)
    t.add_argument("--port", type=int, default=7233)

    s = sub.add_parser("serve", help="run only the local Ray Serve (shared Serve config)")
    s.add_argument("--state-dir", type=Path, default=Path(".state"), help=state_help)
    s.add_argument("--high-throughput", action="store_true", help=high_throughput_help)
    s.add_argument("--free-ports", action="store_true", help=free_ports_help)

    sub.add_parser("worker", help="run a worker (configured by TEMPORAL_* and SERVE_* env vars)")

    sb = sub.add_parser("submit", help="start a batch (TEMPORAL_* env vars say where)")
    src = sb.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--input",
        action="append",
        help="input file, folder, glob (quoted) or prefix: local path or fsspec URL; repeat for several",
    )
    src.add_argument("--inline", help="JSON list of records, or @file.json")
    sb.add_argument("--output", help="output folder: local path or fsspec URL (with --input)")
    sb.add_argument("--model", help="model name (default: Serve's default model)")
    sb.add_argument("--max-error-ratio", type=float, default=0.0)
    sb.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="a data option (id_field, input_field, input_columns, keep_columns, column_types, input_format, "
        "output_format) or tuning (micro_batch_size, shard_size, ...); VALUE is JSON or plain text, "
        'e.g. output_format=parquet, input_columns=\'["f1","f2"]\'',
    )
    add_priority_flags(sb)
    sb.add_argument("--id", help="workflow id (default: batch-<random>)")
    sb.add_argument(
        "--id-conflict",
        choices=["fail", "use-existing"],
        default="fail",
        help="when a batch with this --id is running: fail, or wait for it (retry-safe Jobs)",
    )
    sb.add_argument("--task-queue", help=f"default: ${c.ENV_TEMPORAL_TASK_QUEUE} or {c.DEFAULT_TASK_QUEUE}")
    sb.add_argument("--wait", action="store_true", help="show progress and print the summary")

    lineage_cli.add_parsers(sub)

    pr = sub.add_parser("progress", help="show a batch's progress")
    pr.add_argument("workflow_id")
    pr.add_argument("--watch", action="store_true", help="follow until it ends")

    batches_cli.add_parsers(sub)

    schedule_cli.add_parser(sub)

    progress_exporter.add_parser(sub)

    sub.add_parser("token", help="print a new random Serve token")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        match args.command:
            case "run":
                return _run_stopping_on_sigterm(_run_stack(args))
            case "submit":
                return asyncio.run(cmd_submit(args))
            case "verify":
                return lineage_cli.cmd_verify(args)
            case "retry":
                return asyncio.run(lineage_cli.cmd_retry(args))
            case "resume":
                return asyncio.run(lineage_cli.cmd_resume(args))
            case "progress":
                return asyncio.run(cmd_progress(args))
            case "list":
                return asyncio.run(batches_cli.cmd_list(args))
            case "cancel":
                return asyncio.run(batches_cli.cmd_cancel(args))
            case "schedule":
                return asyncio.run(schedule_cli.run(args))
            case "progress-exporter":
                return asyncio.run(progress_exporter.run(args))
            case "worker":
                return cmd_worker(args)
            case "temporal":
                sigterm_as_ctrl_c()
                return cmd_temporal(args)
            case "serve":
                sigterm_as_ctrl_c()
                return cmd_serve(args)
            case "token":
                import secrets

                print(secrets.token_urlsafe(32))
                return 0
    except CommandError as exc:  # says what to do: no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"error: {describe_validation(exc)}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def entrypoint() -> None:
    """Console script: exit without interpreter finalization, which can race the Temporal
    client's native threads and abort a finished command ("PyGILState_Release")."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entrypoint()
