"""Is a local port free, and which one is: so a server that cannot listen says which port is taken
and what to change, before it starts (a child server that dies on a taken port is easy to miss)."""

from __future__ import annotations

import contextlib
import socket

from services.constants import ENV_TEMPORAL_ADDRESS, TEMPORAL_UI_PORT_OFFSET
from services.errors import PortInUse
from services.local.processes import LOOPBACK


def port_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether ``host:port`` can be listened on now. ``SO_REUSEADDR`` as servers set it, so a
    port in TIME_WAIT after a server stopped counts as free."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):
            s.bind((host, port))
            return True
    return False


def next_free_port(
    start: int, host: str = LOOPBACK, span: int = 100, also: tuple[int, ...] = ()
) -> int | None:
    """The first port from ``start`` on that is free, with ``port + offset`` free for each offset
    in ``also`` (a server's companion ports); None if none within ``span``."""
    for port in range(start, min(start + span, 65536 - max(also, default=0))):
        if all(port_free(port + offset, host) for offset in (0, *also)):
            return port
    return None


def check_free(ports: list[tuple[int, str]], fix: str, host: str = LOOPBACK) -> None:
    """Raise ``PortInUse`` naming the first taken port of ``ports`` (port, what it is for)."""
    for port, what in ports:
        if not port_free(port, host):
            raise PortInUse(port, what, fix)


def check_temporal_ports(port: int, ui_port: int) -> None:
    """Before ``temporal server start-dev``: a taken port would only show in its log, while
    the port answering (the other server) looked like this one starting."""
    free = next_free_port(port + 1, also=(ui_port - port,))
    flag = f"--port {free}" if free else "--port <another port>"
    check_free(
        [(port, "Temporal's gRPC"), (ui_port, "Temporal's web UI")],
        f"is a Temporal dev server already running? Use that one, or start this one with {flag} "
        f"(its UI takes port+{TEMPORAL_UI_PORT_OFFSET}) and point {ENV_TEMPORAL_ADDRESS} at it",
    )


def check_serve_ports(http_port: int, gcs_port: int, dashboard_port: int, metrics_port: int) -> None:
    """Before ``ray start``: the local Serve's ports are fixed (the worker's default SERVE_URL)."""
    check_free(
        [
            (http_port, "Ray Serve's HTTP"),
            (gcs_port, "Ray's GCS"),
            (dashboard_port, "Ray's dashboard"),
            (metrics_port, "Ray's metrics"),
        ],
        "is `batch-inference serve` (or another Ray) already running? Use that one, or stop it first "
        "(Ctrl-C in its terminal)",
    )
