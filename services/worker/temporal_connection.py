"""The worker's connection to Temporal, for its probes: connect until Temporal answers (the
process waits, unready, rather than exiting into a crash loop while Temporal starts or is away),
then check the connection every few seconds.

The check is a DescribeNamespace of the namespace the worker polls, on the client its pollers
use: what the SDK itself asks when a worker starts, so it needs the same reachability, TLS,
credentials and namespace as polling does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.runtime import Runtime

from services.worker.config import TemporalSettings
from services.worker.probes import WorkerProbes

CHECK_EVERY_S = 5.0
CHECK_TIMEOUT_S = 3.0
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 10.0

log = logging.getLogger(__name__)


async def connect_until_up(
    settings: TemporalSettings, runtime: Runtime | None, stop: asyncio.Event, probes: WorkerProbes | None
) -> Client | None:
    """A connected client, retrying with backoff while Temporal cannot be reached (each failure
    logged and given to readiness); None if ``stop`` is set first."""
    delay, attempt = RETRY_FIRST_S, 0
    while True:
        attempt += 1
        try:
            client = await settings.connect(runtime=runtime)
            if probes is not None:
                probes.waiting(f"connected to Temporal at {settings.address}; the SDK worker is starting")
            return client
        except RuntimeError as exc:  # the SDK's "Failed client connect: ..."
            why = (
                f"cannot connect to Temporal at {settings.address} (namespace {settings.namespace}), "
                f"attempt {attempt}: {str(exc).splitlines()[0]}"
            )
        log.warning("%s; retrying in %.1fs", why, delay)
        if probes is not None:
            probes.waiting(why)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return None
        delay = min(delay * 2, RETRY_MAX_S)


async def check_connection(client: Client, namespace: str, probes: WorkerProbes) -> None:
    """Check forever (until cancelled), every ``CHECK_EVERY_S``."""
    request = DescribeNamespaceRequest(namespace=namespace)
    target = client.service_client.config.target_host
    while True:
        try:
            await client.workflow_service.describe_namespace(
                request, timeout=timedelta(seconds=CHECK_TIMEOUT_S)
            )
            probes.connection_checked(None)
        except Exception as exc:  # unreachable, timed out, refused: not ready, whatever the reason
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            probes.connection_checked(f"Temporal at {target} ({namespace}) did not answer: {reason}")
        await asyncio.sleep(CHECK_EVERY_S)
