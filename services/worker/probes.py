"""What the worker's probes answer (``metrics_server`` serves them on the metrics port):

- readiness (``/readyz``): the SDK worker is running (it started: Core's namespace check passed
  and its pollers run; it is not stopping and has not shut down, which a fatal poll error
  causes), and the last check of its Temporal connection (``temporal_connection``: a
  DescribeNamespace of the namespace it polls, on the client its pollers use) succeeded, within
  the last ``stale_after_s``. Before the first connection it says why it is not connected.
- liveness (``/livez``): the worker's event loop runs a trivial callback within
  ``loop_timeout_s``, whatever Temporal does: a Temporal outage makes pods unready, it never
  gets them restarted.
- startup (``/startupz``): ready at least once since the process started.

The event loop writes this state; the HTTP thread reads it.
"""

from __future__ import annotations

import asyncio
import threading
import time

from pydantic import BaseModel
from temporalio.worker import Worker

STALE_AFTER_S = 15.0  # three missed connection checks (one every 5 s)
LOOP_TIMEOUT_S = 3.0  # under the chart's probe timeout (5 s)


class ProbeAnswer(BaseModel):
    """A probe's JSON body; the status code is 200 when ``ok``, else 503."""

    ok: bool
    detail: str


class WorkerProbes:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        stale_after_s: float = STALE_AFTER_S,
        loop_timeout_s: float = LOOP_TIMEOUT_S,
    ):
        self._loop = loop
        self._stale_after_s, self._loop_timeout_s = stale_after_s, loop_timeout_s
        self._worker: Worker | None = None
        self._stopping = False
        self._waiting = "not connected to Temporal yet"  # why there is no worker yet
        self._problem: str | None = None  # the last connection check's, None if it succeeded
        self._checked_at: float | None = None  # monotonic time of the last successful check
        self._ready_once = False

    # --- written from the event loop -----------------------------------------------------------

    def waiting(self, why: str) -> None:
        """Not serving yet, and why (not connected, or connected and starting)."""
        self._waiting = why

    def serving(self, worker: Worker) -> None:
        """The SDK worker is built; readiness follows its state and the connection checks."""
        self._worker = worker

    def connection_checked(self, problem: str | None) -> None:
        """The outcome of a connection check: None when Temporal answered."""
        self._problem = problem
        if problem is None:
            self._checked_at = time.monotonic()

    def stopping(self) -> None:
        """SIGTERM: no longer ready while running activities finish."""
        self._stopping = True

    # --- read from the HTTP thread -------------------------------------------------------------

    def readiness(self) -> ProbeAnswer:
        worker, checked_at = self._worker, self._checked_at
        if self._stopping:
            return ProbeAnswer(ok=False, detail="stopping: running activities are finishing")
        if worker is None:
            return ProbeAnswer(ok=False, detail=self._waiting)
        if not worker.is_running:
            state = "has shut down" if worker.is_shutdown else "is starting"
            return ProbeAnswer(ok=False, detail=f"the SDK worker {state}")
        if self._problem is not None:
            return ProbeAnswer(ok=False, detail=self._problem)
        if checked_at is None:
            return ProbeAnswer(ok=False, detail="the Temporal connection has not been checked yet")
        age = time.monotonic() - checked_at
        if age > self._stale_after_s:
            detail = f"no successful check of the Temporal connection for {age:.0f}s"
            return ProbeAnswer(ok=False, detail=detail)
        self._ready_once = True
        return ProbeAnswer(
            ok=True, detail=f"polling task queue {worker.task_queue!r}; Temporal answered {age:.1f}s ago"
        )

    def startup(self) -> ProbeAnswer:
        if self._ready_once:
            return ProbeAnswer(ok=True, detail="started: ready at least once")
        ready = self.readiness()
        return ProbeAnswer(ok=ready.ok, detail=ready.detail if ready.ok else f"not started: {ready.detail}")

    def liveness(self) -> ProbeAnswer:
        answered = threading.Event()
        try:
            self._loop.call_soon_threadsafe(answered.set)
        except RuntimeError:  # the loop is closed
            return ProbeAnswer(ok=False, detail="the event loop is closed")
        if not answered.wait(self._loop_timeout_s):
            return ProbeAnswer(
                ok=False, detail=f"the event loop did not answer within {self._loop_timeout_s:g}s"
            )
        return ProbeAnswer(ok=True, detail="the event loop answers")
