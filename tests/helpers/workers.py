"""In-process workers (the same ``build_worker`` as the real one) whose Serve client logs every
HTTP attempt."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from services.worker.concurrency import Limiter
from services.worker.config import WorkerSettings
from services.worker.serve_client import RetrySettings, ServeClient, TokenSource
from services.worker.worker import build_worker


class Attempts:
    """Every HTTP attempt of the worker's Serve client: (monotonic time, outcome)."""

    def __init__(self) -> None:
        self.log: list[tuple[float, str]] = []

    def __call__(self, outcome: str, seconds: float, *_: object) -> None:
        self.log.append((time.monotonic(), outcome))

    def count(self, outcome: str | None = None, since: float = 0.0, until: float = float("inf")) -> int:
        return sum(1 for t, o in self.log if since <= t < until and (outcome is None or o == outcome))


@contextlib.asynccontextmanager
async def worker_on(
    client,
    serve_url: str,
    token_file: Path,
    attempts: Attempts,
    retry: RetrySettings | None = None,
    *,
    limiter: Limiter | None = None,
) -> AsyncIterator[str]:
    """An in-process worker (the same ``build_worker`` as the real one) on a fresh task queue;
    ``retry``: its Serve client's in-activity retries (default: the worker's); ``limiter``: its
    in-flight limit (default: none beyond the fixed ones)."""
    queue = f"serve-fault-{uuid.uuid4().hex[:8]}"
    serve = ServeClient(
        serve_url, TokenSource(token_file=str(token_file)), on_attempt=attempts, retry=retry, limiter=limiter
    )
    worker = build_worker(client, WorkerSettings(task_queue=queue, serve_url=serve_url), serve)
    try:
        async with worker:
            yield queue
    finally:
        await serve.aclose()
