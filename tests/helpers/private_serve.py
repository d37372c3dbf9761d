"""A local Ray Serve of the fault tests' own, which they overload, crash, restart and redeploy
(doing that to the session's Serve would break other tests). One cluster serves every fault
module: ``ready`` brings it back to the shared config before each test, so a cluster start
(~30 s here) is paid once."""

from __future__ import annotations

import contextlib
import os
import signal
import time

from services.local.processes import alive, marked_pids
from services.local.ray_serve import CLUSTER_MARKER, LocalRayServe


def ready(stack: LocalRayServe) -> LocalRayServe:
    """Running, with the shared config deployed: started again after a ``crash``, redeployed
    after a test left another config (a test that changes it puts it back itself where it can,
    since a redeploy of new code replaces every replica)."""
    if not stack.started:
        stack.start()
    elif stack.deployed != stack.serve_config():
        stack.deploy()
    return stack


def crash(stack: LocalRayServe) -> None:
    """SIGKILL every process of this private Ray cluster at once (Serve dies without a
    goodbye; faster than a graceful stop, which waits for stragglers)."""
    pids = marked_pids(CLUSTER_MARKER, stack.marker)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if alive(p)]
        time.sleep(0.1)
    stack.started = False
