"""Run a worker: register the workflow and activities, stop gracefully on SIGTERM/SIGINT.

The SDK installs no signal handler and its graceful timeout defaults to 0; here SIGTERM stops
polling and gives running activities ``graceful_shutdown_s`` to finish (Kubernetes'
``terminationGracePeriodSeconds`` must be longer). Unfinished shards resume elsewhere from
their last heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import signal
import sys
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from services import constants as c
from services.errors import CommandError, PortInUse
from services.local.ports import next_free_port
from services.worker import expected_failures
from services.worker.activities import BatchActivities
from services.worker.config import WorkerSettings
from services.worker.malloc import arrow_on_system_allocator, limit_malloc_arenas
from services.worker.metrics_server import MetricsServer
from services.worker.probes import WorkerProbes
from services.worker.progress_attributes import ProgressAttributesCheck
from services.worker.schedule_metrics import SchedulePoller
from services.worker.sdk_metrics import TemporalMetricsBridge
from services.worker.serve_client import ServeClient, TokenSource
from services.worker.telemetry import SERVE_CONCURRENCY_LIMIT, BatchProgressPoller, record_serve_attempt
from services.worker.temporal_connection import check_connection, connect_until_up
from services.worker.workflows import BatchInferenceWorkflow

log = logging.getLogger("services.worker")


async def until_running(worker: Worker) -> None:
    """Inside ``async with worker``: return once the SDK worker runs. It starts in the
    background (a namespace check, then the pollers); a start that fails cancels this wait and
    raises from the ``async with``. The SDK has a flag for it, no event."""
    while not worker.is_running:  # noqa: ASYNC110
        await asyncio.sleep(0.005)


def eager_options(reservations: int) -> dict[str, Any]:
    """The SDK's settings for starting up to ``reservations`` activities straight from a
    workflow task's completion (the SDK takes 0 to mean a flag, not a count)."""
    if reservations == 0:
        return {"disable_eager_activity_execution": True}
    return {"max_eager_activity_reservations_per_workflow_task": reservations}


def start_metrics(
    settings: WorkerSettings, bridge: TemporalMetricsBridge, probes: WorkerProbes | None = None
) -> MetricsServer:
    """``/metrics`` and the probes on their port; a port taken (a second worker on one machine)
    says what to change."""
    try:
        return MetricsServer(settings.metrics_host, settings.metrics_port, bridge, probes).start()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        bridge.close()
        free = next_free_port(settings.metrics_port + 1, settings.metrics_host)
        example = f" (e.g. {c.ENV_WORKER_METRICS_PORT}={free})" if free else ""
        raise PortInUse(
            settings.metrics_port,
            f"the worker's /metrics on {settings.metrics_host}",
            f"another worker on this machine? Give this one another port with {c.ENV_WORKER_METRICS_PORT}"
            f"{example}, or {c.ENV_WORKER_METRICS_PORT}=0 to turn its /metrics off",
        ) from None


def versioning_options(settings: WorkerSettings) -> dict[str, Any]:
    """A versioned worker's deployment settings; none for an unversioned one (the SDK's default)."""
    deployment = settings.deployment_config()
    return {} if deployment is None else {"deployment_config": deployment}


def build_worker(client: Client, settings: WorkerSettings, serve: ServeClient) -> Worker:
    activities = BatchActivities(serve, ProgressAttributesCheck(client, settings.namespace))
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[BatchInferenceWorkflow],
        activities=[
            activities.plan_batch,
            activities.process_shard,
            activities.check_serve,
            activities.predict_inline,
            activities.write_summary,
        ],
        max_concurrent_activities=settings.max_concurrent_activities,
        graceful_shutdown_timeout=timedelta(seconds=settings.graceful_shutdown_s),
        # Heartbeats also deliver cancellation: send them often enough that a cancelled batch
        # stops within seconds rather than 80% of the heartbeat timeout.
        max_heartbeat_throttle_interval=timedelta(seconds=2),
        default_heartbeat_throttle_interval=timedelta(seconds=2),
        **eager_options(settings.eager_activities),
        **versioning_options(settings),
    )


async def run_worker(
    settings: WorkerSettings, stop: asyncio.Event | None = None, install_signals: bool = True
) -> None:
    limit_malloc_arenas()  # before the threads that would get arenas of their own start
    arrow_on_system_allocator()
    expected_failures.install()
    tokens = TokenSource.from_env()
    if not tokens.configured():
        log.warning(
            "no Serve token configured (SERVE_AUTH_TOKEN / SERVE_AUTH_TOKEN_FILE): Serve will answer 401"
        )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    metrics: MetricsServer | None = None
    probes: WorkerProbes | None = None
    runtime = None
    if settings.metrics_port:
        # One port for the project's metrics and the Temporal SDK's (bridged from a MetricBuffer),
        # and the probes, which answer before Temporal does (not ready until it does).
        bridge = TemporalMetricsBridge()
        runtime = bridge.create_runtime()
        probes = WorkerProbes(loop)
        metrics = start_metrics(settings, bridge, probes)
        log.info("metrics on %s, probes %s", metrics.url, " ".join(metrics.probe_routes))
    signals = (signal.SIGTERM, signal.SIGINT) if install_signals else ()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        # Temporal away (starting with the release, restarting): wait for it, unready.
        client = await connect_until_up(settings, runtime, stop, probes)
        if client is not None:
            await _work(client, settings, tokens, stop, probes)
    finally:
        if metrics:
            metrics.stop()
        for sig in signals:
            loop.remove_signal_handler(sig)
    log.info("worker stopped")


async def _work(
    client: Client,
    settings: WorkerSettings,
    tokens: TokenSource,
    stop: asyncio.Event,
    probes: WorkerProbes | None,
) -> None:
    """Run the SDK worker until ``stop``, with what lives as long as it: the Serve client, the
    progress pollers of ``/metrics`` and the connection checks of the probes."""
    serve = ServeClient(
        settings.serve_url,
        tokens,
        timeout_s=settings.serve_timeout_s,
        max_connections=settings.serve_max_connections,
        on_attempt=record_serve_attempt,
        limiter=settings.limiter(SERVE_CONCURRENCY_LIMIT.set),
        wire=settings.serve_wire,
    )
    background: list[Awaitable[None]] = []
    if probes is not None:
        background.append(check_connection(client, settings.namespace, probes))
        if settings.batch_metrics_interval_s:
            interval = settings.batch_metrics_interval_s
            if settings.batch_progress_metrics:
                background.append(BatchProgressPoller(client, settings.task_queue, interval).run())
            background.append(SchedulePoller(client, settings.task_queue, interval).run())
    worker = build_worker(client, settings, serve)
    # Everything built so far lives as long as the worker: out of the collector's way, a full
    # collection no longer rescans it while records churn.
    gc.freeze()
    tasks = asyncio.gather(*background)
    try:
        async with worker:
            # Say "polling" only once it is, so whoever waits for this line (a test, the
            # benchmark, a person) does not submit work to a worker still starting.
            await until_running(worker)
            if probes is not None:
                probes.serving(worker)
            log.info(
                f"{c.WORKER_POLLING_LOG} %r on %s (namespace %s), Serve at %s%s",
                settings.task_queue,
                settings.address,
                settings.namespace,
                settings.serve_url,
                f", version {settings.build_id} of {settings.deployment_name}" if settings.build_id else "",
            )
            await stop.wait()
            if probes is not None:
                probes.stopping()
            log.info(
                "shutting down: letting running activities finish (up to %.0fs)",
                settings.graceful_shutdown_s,
            )
    finally:
        tasks.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tasks
        await serve.aclose()


def main() -> int:
    # force: `batch-inference worker` configured logging for its own commands (WARNING) first.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    # httpx logs every request at INFO: thousands of lines a second at full speed.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        asyncio.run(run_worker(WorkerSettings()))
    except CommandError as exc:  # e.g. its port taken: the reason and what to change, no trace
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
