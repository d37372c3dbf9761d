"""The project CLI run as a user runs it: a subprocess, its exit code and output. Async, so an
in-process worker on the test's event loop keeps working meanwhile."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass

from services import constants as c
from services.local.paths import REPO_ROOT


@dataclass
class CliRun:
    code: int
    out: str
    err: str


async def run_cli(*args: str, temporal_address: str, task_queue: str, timeout_s: float = 120) -> CliRun:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")},
        c.ENV_TEMPORAL_ADDRESS: temporal_address,
        c.ENV_TEMPORAL_TASK_QUEUE: task_queue,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", *args, cwd=REPO_ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return CliRun(proc.returncode or 0, out.decode(), err.decode())
