"""The worker's ``/metrics`` HTTP endpoint: the project's metrics (``prometheus_client``'s default
registry, with Python process metrics) and, with a bridge, the Temporal SDK's, on one port.

Any path answers 200 once the process is up: the chart's startup, liveness and readiness probes
use it. The body is always the Prometheus text format (0.0.4), whatever the scraper accepts:
the SDK's counters keep their ``_total``-less names only in that format (see ``sdk_metrics``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, ThreadingWSGIServer

from services.worker.sdk_metrics import TemporalMetricsBridge


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scraped every few seconds: no access log


class MetricsServer:
    """Serves ``render()`` on ``host:port`` (port 0: a free one) from a background thread."""

    def __init__(self, host: str, port: int, bridge: TemporalMetricsBridge | None = None):
        self.bridge = bridge
        # prometheus_client's own threaded WSGI server (what its start_http_server runs).
        self._httpd = make_server(host, port, self._app, ThreadingWSGIServer, handler_class=_QuietHandler)
        self.host, self.port = host, self._httpd.server_port
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def render(self) -> bytes:
        body = generate_latest(REGISTRY)
        if self.bridge is not None:
            body += self.bridge.render().encode()
        return body

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        body = self.render()
        start_response(
            "200 OK", [("Content-Type", CONTENT_TYPE_PLAIN_0_0_4), ("Content-Length", str(len(body)))]
        )
        return [body]

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
