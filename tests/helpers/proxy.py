"""HTTP servers in a thread of the test process: a counting pass-through proxy in front of Serve
(what the workers really sent), and the uvicorn runner it shares with the other test proxies."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from services.local.processes import LOOPBACK, free_port


class ThreadedServer:
    """An ASGI app served by uvicorn on a loopback port, in a daemon thread of this process: it
    stops with the process whatever ends it, and ``stop()`` (or leaving the ``with``) ends it
    sooner."""

    def __init__(self, app: Any, port: int, name: str = "server") -> None:
        import uvicorn

        self.name, self.port = name, port
        config = uvicorn.Config(app, host=LOOPBACK, port=port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve()), daemon=True)

    def start(self, timeout_s: float = 20) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive():  # e.g. the port was taken meanwhile
                raise RuntimeError(f"{self.name} on port {self.port} exited on start")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} did not start within {timeout_s:.0f}s")
            time.sleep(0.05)
        return self

    def stop(self, timeout_s: float = 15) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
        return f"http://{LOOPBACK}:{self.port}"

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
        self._server = ThreadedServer(self._app(), self.port, "counting proxy").start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()
