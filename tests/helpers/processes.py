"""Workers as real processes (``python -m services.worker``): start them, wait for them to poll,
signal them, and kill any left running."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from services import constants as c
from services.local.paths import REPO_ROOT
from services.local.processes import wait_for_port


@dataclass
class WorkerProcess:
    """``python -m services.worker`` as its own process (its own session: signals reach only it)."""

    proc: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def polling(self, timeout_s: float = 60) -> WorkerProcess:
        """Wait until the worker polls its task queue."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if c.WORKER_POLLING_LOG in self.text():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            await asyncio.sleep(0.1)
        raise TimeoutError(f"worker not polling after {timeout_s}s:\n{self.text()[-3000:]}")

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    async def exited(self, timeout_s: float) -> int:
        """Wait for the process to exit; its exit code."""
        return await asyncio.to_thread(self.proc.wait, timeout_s)


class WorkerProcesses:
    """``spawn(temporal_address, task_queue, serve_url, token_file, **env)``: a worker process with
    its log in ``log_dir``; ``kill_leftovers()`` kills any still running (they are ours)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[WorkerProcess] = []

    def spawn(
        self, temporal_address: str, task_queue: str, serve_url: str, token_file: Path, **env: str
    ) -> WorkerProcess:
        log = self.log_dir / f"worker-{len(self.started)}.log"
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "SERVE_", "WORKER_"))
        }
        environ.update(
            {
                c.ENV_TEMPORAL_ADDRESS: temporal_address,
                c.ENV_TEMPORAL_TASK_QUEUE: task_queue,
                c.ENV_SERVE_URL: serve_url,
                c.ENV_SERVE_TOKEN_FILE: str(token_file),
                c.ENV_WORKER_METRICS_PORT: "0",
                c.ENV_WORKER_GRACEFUL_SHUTDOWN_S: "10",
                "PYTHONUNBUFFERED": "1",
                **env,
            }
        )
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.worker"],
                cwd=REPO_ROOT,
                env=environ,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = WorkerProcess(proc, log)
        self.started.append(worker)
        return worker

    def kill_leftovers(self) -> None:
        for worker in self.started:
            if worker.proc.poll() is None:
                worker.signal(signal.SIGKILL)
                worker.proc.wait(10)


@contextlib.contextmanager
def serving_process(
    cmd: list[str], env: dict[str, str], log: Path, port: int, stop_timeout_s: float
) -> Iterator[subprocess.Popen]:
    """``cmd`` running with its output in ``log``, yielded once it listens on ``port``; at the
    end SIGTERM, as Kubernetes stops a pod, and SIGKILL if it has not exited within
    ``stop_timeout_s``."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 60, proc)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(stop_timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
