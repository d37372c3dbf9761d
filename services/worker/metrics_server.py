"""The worker's HTTP port: ``/metrics`` with the project's metrics (``prometheus_client``'s
default registry, with Python process metrics) and, with a bridge, the Temporal SDK's; and, with
``WorkerProbes``, the probes ``/readyz``, ``/livez`` and ``/startupz`` (200 or 503 with a JSON
body saying why; what each checks: ``probes``). Any other path is 404. Routes: ``constants``.

``/metrics`` is always the Prometheus text format (0.0.4), whatever the scraper accepts: the
SDK's counters keep their ``_total``-less names only in that format (see ``sdk_metrics``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, ThreadingWSGIServer

from services import constants as c
from services.worker.probes import ProbeAnswer, WorkerProbes
from services.worker.sdk_metrics import TemporalMetricsBridge

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scraped every few seconds: no access log


class MetricsServer:
    """Serves ``render()`` and the probes on ``host:port`` (port 0: a free one) from a background
    thread."""

    def __init__(
        self,
        host: str,
        port: int,
        bridge: TemporalMetricsBridge | None = None,
        probes: WorkerProbes | None = None,
        registry: CollectorRegistry = REGISTRY,
    ):
        self.bridge, self.registry = bridge, registry
        self._probes: dict[str, Callable[[], ProbeAnswer]] = {}
        if probes is not None:
            self._probes = {
                c.WORKER_READY_ROUTE: probes.readiness,
                c.WORKER_LIVE_ROUTE: probes.liveness,
                c.WORKER_STARTUP_ROUTE: probes.startup,
            }
        # prometheus_client's own threaded WSGI server (what its start_http_server runs).
        self._httpd = make_server(host, port, self._app, ThreadingWSGIServer, handler_class=_QuietHandler)
        self.host, self.port = host, self._httpd.server_port
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{c.WORKER_METRICS_ROUTE}"

    @property
    def probe_routes(self) -> list[str]:
        return list(self._probes)

    def render(self) -> bytes:
        body = generate_latest(self.registry)
        if self.bridge is not None:
            body += self.bridge.render().encode()
        return body

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == c.WORKER_METRICS_ROUTE:
            return _reply(start_response, "200 OK", CONTENT_TYPE_PLAIN_0_0_4, self.render())
        if probe := self._probes.get(path):
            answer = probe()
            status = "200 OK" if answer.ok else "503 Service Unavailable"
            return _reply(start_response, status, JSON, answer.model_dump_json().encode() + b"\n")
        routes = ", ".join([c.WORKER_METRICS_ROUTE, *self.probe_routes])
        return _reply(start_response, "404 Not Found", TEXT, f"not found; routes: {routes}\n".encode())

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()  # waits for serve_forever to return: only once it runs
            self._thread.join(timeout=5)
        self._httpd.server_close()
        if self.bridge is not None:
            self.bridge.close()


def _reply(start_response: Callable[..., Any], status: str, content_type: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]
