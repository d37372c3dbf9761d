"""Fault-injection helpers: workers as real processes, a counting proxy in front of Serve, and
the exactly-once check every fault test ends with.

Faults that break a server (stop Serve, restart Temporal) run against private servers started
by the test module itself, never against the shared session servers other tests use.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from services import constants as c
from services.local.stack import REPO_ROOT, free_port
from services.worker.config import WorkerSettings
from services.worker.models import BatchInferenceInput, BatchInferenceOutput, Tuning
from services.worker.serve_client import ServeClient, TokenSource
from services.worker.worker import build_worker
from tests.conftest import read_outputs, write_jsonl


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


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """``spawn_worker(temporal_address, task_queue, serve_url, token_file, **env)``: a worker process
    with its log in ``tmp_path``; any left running at the end is killed (they are ours)."""
    started: list[WorkerProcess] = []

    def spawn(
        temporal_address: str, task_queue: str, serve_url: str, token_file: Path, **env: str
    ) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
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
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        if worker.proc.poll() is None:
            worker.signal(signal.SIGKILL)
            worker.proc.wait(10)


@dataclass
class CountingProxy:
    """A pass-through HTTP proxy in front of Serve counting the records of every inference
    request it receives: what the workers really sent, including requests whose answer a killed
    worker never read."""

    upstream: str
    port: int = field(default_factory=free_port)
    records: int = 0
    requests: int = 0
    # (monotonic time, body digest, status, Retry-After) per inference request: a retry sends
    # the same body, so the gaps between attempts of one micro-batch can be measured.
    log: list[tuple[float, str, int, str | None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _app(self):
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        client: dict[str, httpx.AsyncClient] = {}

        async def forward(request: Request) -> Response:
            if "c" not in client:
                client["c"] = httpx.AsyncClient(base_url=self.upstream, timeout=120)
            body = await request.body()
            if request.method == "POST":
                with contextlib.suppress(ValueError, AttributeError):
                    n = len(json.loads(body).get("inputs", []))
                    with self._lock:
                        self.records += n
                        self.requests += 1
            passed = ("authorization", "content-type")
            headers = {k: v for k, v in request.headers.items() if k.lower() in passed}
            sent = time.monotonic()
            upstream = await client["c"].request(
                request.method, request.url.path, content=body, headers=headers
            )
            if request.method == "POST":
                digest = hashlib.sha1(body).hexdigest()
                with self._lock:
                    self.log.append((sent, digest, upstream.status_code, upstream.headers.get("retry-after")))
            keep = {k: v for k, v in upstream.headers.items() if k.lower() in ("content-type", "retry-after")}
            return Response(upstream.content, upstream.status_code, headers=keep)

        return Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])

    def __enter__(self) -> CountingProxy:
        import uvicorn

        config = uvicorn.Config(self._app(), host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve()), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("counting proxy did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(15)


def echo_records(n: int, prefix: str = "e") -> list[dict]:
    return [{"id": f"{prefix}{i}", "input": {"n": i}} for i in range(n)]


def echo_batch(
    tmp_path: Path, total: int, prefix: str = "e", **tuning
) -> tuple[list[dict], Path, BatchInferenceInput]:
    """``total`` echo records in ``tmp_path/in.jsonl`` and a batch writing to ``tmp_path/out``:
    (records, output folder, batch input)."""
    records = echo_records(total, prefix)
    source = write_jsonl(tmp_path / "in.jsonl", records)
    output = tmp_path / "out"
    batch = BatchInferenceInput(
        input_uri=str(source), output_uri=str(output), model="echo", tuning=Tuning(**tuning)
    )
    return records, output, batch


def assert_exactly_once(output: Path, ids: list, result: BatchInferenceOutput | None = None) -> None:
    """Every input id exactly once across ``shard-*.jsonl`` and ``errors/``, and the summary
    (and the workflow result) counting what the files hold."""
    results, errors = read_outputs(output)
    seen = Counter(r["id"] for r in results) + Counter(e["id"] for e in errors)
    repeated = {k: v for k, v in seen.items() if v > 1}
    assert not repeated, f"ids written more than once: {list(repeated.items())[:10]}"
    missing = set(ids) - set(seen)
    assert not missing, f"{len(missing)} ids missing, e.g. {sorted(missing, key=str)[:10]}"
    assert set(seen) == set(ids)
    summary = json.loads((output / c.SUMMARY_FILE).read_text())
    assert summary["status"] == "completed"
    assert (summary["total_records"], summary["succeeded"], summary["failed"]) == (
        len(ids),
        len(results),
        len(errors),
    )
    if result is not None:
        counts = (result.total_records, result.succeeded, result.failed)
        assert counts == (len(ids), len(results), len(errors))
    assert not (output / c.PARTS_DIR).exists(), "a completed batch leaves no parts behind"


async def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(every)


class Attempts:
    """Every HTTP attempt of the worker's Serve client: (monotonic time, outcome)."""

    def __init__(self) -> None:
        self.log: list[tuple[float, str]] = []

    def __call__(self, outcome: str, seconds: float, *_: object) -> None:
        self.log.append((time.monotonic(), outcome))

    def count(self, outcome: str | None = None, since: float = 0.0, until: float = float("inf")) -> int:
        return sum(1 for t, o in self.log if since <= t < until and (outcome is None or o == outcome))


@contextlib.asynccontextmanager
async def worker_on(client, serve_url: str, token_file: Path, attempts: Attempts) -> AsyncIterator[str]:
    """An in-process worker (the same ``build_worker`` as the real one) on a fresh task queue."""
    queue = f"serve-fault-{uuid.uuid4().hex[:8]}"
    serve = ServeClient(serve_url, TokenSource(token_file=str(token_file)), on_attempt=attempts)
    worker = build_worker(client, WorkerSettings(task_queue=queue, serve_url=serve_url), serve)
    try:
        async with worker:
            yield queue
    finally:
        await serve.aclose()
