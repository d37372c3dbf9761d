"""The stack a bench script runs against: a Temporal dev server and a local Ray Serve (the
shared Serve config, auth on) on free loopback ports, stopped on exit, error, Ctrl-C and (with
``stop_on_sigterm``) SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from services.local.processes import free_port
from services.local.ray_serve import LocalRayServe, ensure_token
from services.local.temporal_dev import TemporalDevServer


@contextlib.asynccontextmanager
async def local_stack(work: Path) -> AsyncIterator[tuple[TemporalDevServer, LocalRayServe]]:
    temporal = TemporalDevServer(work / "temporal", port=free_port(), ui_port=free_port())
    serve = LocalRayServe(
        work / "ray", ensure_token(work / "serve-token"), http_port=free_port(), gcs_port=free_port(),
        dashboard_port=free_port(), metrics_port=free_port(),
    )  # fmt: skip
    try:
        await asyncio.to_thread(temporal.start)
        await asyncio.to_thread(serve.start)
        yield temporal, serve
    finally:
        # Plain calls, not threads: in a Ctrl-C or SIGTERM unwind the loop cancels what its
        # tasks await, and a stop cut short left a Temporal server and a Ray cluster running.
        try:
            serve.stop()
        finally:
            temporal.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def stop_on_sigterm() -> None:
    """SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so ``local_stack`` stops what it started."""
    signal.signal(signal.SIGTERM, _interrupt)
