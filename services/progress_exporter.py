"""``batch-inference progress-exporter``: the one process that exports per-batch progress.

Every ``--interval`` seconds it makes ONE visibility list call for the running batches and
exports their gauges from the progress each batch published in its search attributes
(``services/worker/progress_attributes.py``); workers no longer each list and query every batch.
Configured like a worker by the TEMPORAL_* environment (address, namespace, TLS, API key).
Its ``/metrics`` holds only the per-batch gauges and the count of running batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from services import constants as c

log = logging.getLogger(__name__)


class _Gauges(Collector):
    """The worker's gauges this process sets (telemetry.BatchProgressPoller), served alone."""

    def collect(self) -> Iterator[Metric]:
        from services.worker import telemetry as t

        for gauge in (
            t.BATCHES_RUNNING,
            t.BATCH_RECORDS,
            t.BATCH_SHARDS,
            t.BATCH_RECORDS_PER_SECOND,
            t.BATCH_ELAPSED,
            t.BATCH_WAITING_FOR_SERVE,
        ):
            yield from gauge.collect()


def registry() -> CollectorRegistry:
    """The exporter's /metrics: the per-batch gauges only (no worker metrics at zero)."""
    r = CollectorRegistry(auto_describe=False)
    r.register(_Gauges())
    return r


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "progress-exporter",
        help="export every running batch's progress gauges from one visibility call (run one of it)",
        description=__doc__,
    )
    p.add_argument(
        "--task-queue",
        help=f"only batches of this task queue (default: ${c.ENV_TEMPORAL_TASK_QUEUE}, or all with --all)",
    )
    p.add_argument("--all", action="store_true", help="batches of every task queue of the namespace")
    p.add_argument("--interval", type=float, default=15.0, help="seconds between list calls (default: 15)")
    p.add_argument("--host", default="0.0.0.0", help="/metrics address (default: 0.0.0.0)")
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"/metrics port (default: ${c.ENV_PROGRESS_EXPORTER_PORT} or "
        f"{c.PROGRESS_EXPORTER_METRICS_PORT})",
    )
    p.add_argument(
        "--no-query-fallback",
        action="store_true",
        help="never query a batch that published no progress (default: query those, from here only)",
    )
    p.add_argument(
        "--register-search-attributes",
        action="store_true",
        help="first add the progress search attributes the namespace lacks (needs operator rights)",
    )


async def run(args: Any) -> int:
    import os

    from services.worker import progress_attributes, telemetry
    from services.worker.config import TemporalSettings
    from services.worker.metrics_server import MetricsServer

    logging.getLogger().setLevel(logging.INFO)
    settings = TemporalSettings()
    client = await settings.connect()
    if args.register_search_attributes:
        added = await progress_attributes.register(client, settings.namespace)
        log.info("search attributes added to %s: %s", settings.namespace, added or "none (all there)")
    elif lacking := await _lacking(client, settings.namespace):
        log.warning(
            "namespace %s lacks %s: batches publish no progress and are queried one by one instead "
            "(README 'Progress at scale')",
            settings.namespace,
            ", ".join(lacking),
        )
    queue = None if args.all else (args.task_queue or settings.task_queue)
    port = args.port if args.port is not None else int(os.environ.get(c.ENV_PROGRESS_EXPORTER_PORT, 0) or 0)
    server = MetricsServer(args.host, port or c.PROGRESS_EXPORTER_METRICS_PORT, registry=registry()).start()
    poller = telemetry.BatchProgressPoller(
        client, queue, interval_s=args.interval, query_fallback=not args.no_query_fallback
    )
    log.info(
        "exporting the progress of running batches (%s) on %s every %.0fs",
        f"task queue {queue}" if queue else "all task queues",
        server.url,
        args.interval,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(poller.run())
    try:
        await stop.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        server.stop()
    return 0


async def _lacking(client: Any, namespace: str) -> dict[str, str]:
    from services.worker import progress_attributes

    try:
        return await progress_attributes.missing(client, namespace)
    except Exception as exc:  # no rights to list them: say so, export all the same
        log.warning("cannot list the search attributes of %s: %s", namespace, exc)
        return {}
