"""A real local Ray Serve on loopback: ``ray start`` + ``serve deploy`` of the same Serve config
the Helm chart renders, so local runs serve exactly what the cluster does.

Ray keeps running after its driver exits unless told to stop, so ``stop()`` stops this
cluster's processes (and no other cluster's).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from services import constants as c
from services.local.paths import REPO_ROOT
from services.local.processes import LOOPBACK, free_port, stop_marked, venv_bin

SERVE_CONFIG = REPO_ROOT / "charts" / "batch-inference" / "files" / "serve-config.yaml"

CLUSTER_MARKER = "BATCH_INFERENCE_LOCAL_RAY"
# How long a stopping cluster gets after SIGTERM before SIGKILL. Ray's processes wait on each
# other as they stop (the GCS server and its monitor last, 12-15 s here, as `ray stop`'s own 16 s
# grace allows); a local cluster keeps nothing they would save, so it gets a short one.
STOP_GRACE_S = 3.0
# How long start and deploy wait for the apps to be RUNNING. Generous: DEPLOY_FAILED ends the wait
# at once, so only a slow start waits this long, and on a busy shared host replicas take minutes.
READY_TIMEOUT_S = 600.0
# A local cluster shares the machine's CPUs with everything else on it. Under load Serve's proxy
# misses Ray's 5 s ready check (and 10 s health check): the controller kills and restarts it,
# and a `serve deploy` under way fails with the killed actor. More time for both checks.
PROXY_CHECKS_ENV = {
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
    "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30",
}


def ensure_token(path: Path) -> Path:
    """A random Serve token in ``path`` (mode 0600), created once and reused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or not path.read_text().strip():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    return path


def load_serve_config(
    path: Path = SERVE_CONFIG, host: str = LOOPBACK, port: int = c.SERVE_HTTP_PORT
) -> dict[str, Any]:
    """The shared Serve config, bound to loopback for local runs, checked by Ray's own schema."""
    config = yaml.safe_load(path.read_text())
    config.setdefault("http_options", {}).update(host=host, port=port)
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(config)
    return config


class LocalRayServe:
    """``ray start --head`` on loopback, then ``serve deploy`` of the shared Serve config.

    Replicas read the valid tokens from ``SERVE_AUTH_TOKENS_FILE`` in their environment, as in the
    cluster (where a Secret sets it); the token never enters the Serve config.
    """

    def __init__(
        self,
        state_dir: Path,
        token_file: Path,
        config_path: Path = SERVE_CONFIG,
        http_port: int = c.SERVE_HTTP_PORT,
        gcs_port: int = 6390,
        dashboard_port: int = 8265,
        metrics_port: int = c.RAY_METRICS_PORT,
        num_cpus: int | None = None,
        high_throughput: bool = False,
    ):
        self.state_dir = Path(state_dir).resolve()
        self.token_file = Path(token_file)
        self.config_path = config_path
        self.http_port, self.gcs_port = http_port, gcs_port
        self.dashboard_port, self.metrics_port = dashboard_port, metrics_port
        self.num_cpus = num_cpus
        self.high_throughput = high_throughput
        self._haproxy_ports: dict[str, int] = {}  # picked once, when high_throughput is on
        self.marker = secrets.token_hex(8)
        self.started = False
        self.deployed: dict[str, Any] | None = None  # the Serve config last deployed

    @classmethod
    def on_free_ports(cls, state_dir: Path, token_file: Path, **kwargs: Any) -> LocalRayServe:
        """A cluster that collides with no other local one (tests, benchmarks, `make run`)."""
        ports = {name: free_port() for name in ("http_port", "gcs_port", "dashboard_port", "metrics_port")}
        return cls(state_dir, token_file, **ports, **kwargs)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def gcs_address(self) -> str:
        return f"{LOOPBACK}:{self.gcs_port}"

    def auth_env(self) -> dict[str, str]:
        """What a Ray driver (e.g. Ray Data) needs to join this cluster's token auth."""
        return {k: v for k, v in self.env().items() if k.startswith("RAY_AUTH")}

    @property
    def dashboard(self) -> str:
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    def ray_temp_dir(self) -> Path:
        """Ray's session files; short, since Ray's Unix socket paths must stay under 108 bytes."""
        preferred = self.state_dir / "ray"
        if len(str(preferred)) <= 40:
            return preferred
        digest = hashlib.sha1(str(self.state_dir).encode()).hexdigest()[:10]
        return Path(tempfile.gettempdir()) / f"bi-ray-{digest}"

    def env(self) -> dict[str, str]:
        ray_token = self.state_dir / "ray-auth-token"
        if not ray_token.exists():
            ensure_token(ray_token)
        env = dict(os.environ)
        env.update(
            {
                c.ENV_SERVE_TOKENS_FILE: str(self.token_file),
                # Ray's own control plane (dashboard, jobs, serve deploy) keeps its token auth.
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(ray_token),
                "RAY_USAGE_STATS_ENABLED": "0",
                # Marks every process of this cluster, so stop() stops these and no others.
                CLUSTER_MARKER: self.marker,
                **PROXY_CHECKS_ENV,
            }
        )
        env.pop(c.ENV_SERVE_TOKENS, None)
        if self.high_throughput:
            env.update(self.high_throughput_env())
        return env

    def haproxy_dir(self) -> Path:
        """HAProxy's files: Ray adds a 56-character node id below it and the admin socket's
        path must stay under 108 bytes, so a short directory of its own."""
        return Path(tempfile.gettempdir()) / f"bi-haproxy-{self.marker[:8]}"

    def high_throughput_env(self) -> dict[str, str]:
        """Ray Serve's high-throughput mode, with this cluster's own HAProxy files and ports.

        Ray binds the replicas' direct-ingress ports and HAProxy's stats and metrics ports on
        all interfaces in this mode (Serve's own port stays on loopback); every route but
        health still needs the bearer token."""
        haproxy = self.haproxy_dir()
        haproxy.mkdir(parents=True, exist_ok=True)
        if not self._haproxy_ports:
            # HAProxy's own ports and the replicas' direct-ingress ports: Ray's defaults are
            # fixed (8404, 9101, 8500, 9500, 30000+, 40000+), so two local clusters would collide.
            self._haproxy_ports = {
                name: free_port()
                for name in (
                    "RAY_SERVE_HAPROXY_STATS_PORT",
                    "RAY_SERVE_HAPROXY_METRICS_PORT",
                    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
                    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
                    "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT",
                    "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT",
                )
            }
        ports = {k: str(v) for k, v in self._haproxy_ports.items()}
        for kind in ("HTTP", "GRPC"):  # a few ports per kind: replicas restarting need new ones
            low = self._haproxy_ports[f"RAY_SERVE_DIRECT_INGRESS_MIN_{kind}_PORT"]
            ports[f"RAY_SERVE_DIRECT_INGRESS_MAX_{kind}_PORT"] = str(low + 16)
        return {
            **c.SERVE_HIGH_THROUGHPUT_ENV,
            **ports,
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(haproxy / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(haproxy / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(haproxy),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(haproxy / "server-state"),
        }

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(args), env=self.env(), capture_output=True, text=True, timeout=timeout, check=False
        )

    def start(self, timeout_s: float = READY_TIMEOUT_S, attempt: int = 1) -> LocalRayServe:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            venv_bin("ray"), "start", "--head", "--node-ip-address", LOOPBACK,
            "--port", str(self.gcs_port), "--dashboard-host", LOOPBACK,
            "--dashboard-port", str(self.dashboard_port),
            "--metrics-export-port", str(self.metrics_port),
            "--temp-dir", str(self.ray_temp_dir()), "--disable-usage-stats",
        ]  # fmt: skip
        # Every listening port explicit and free, so two local clusters never collide.
        for flag in (
            "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port",
            "--runtime-env-agent-port",
            "--ray-client-server-port",
            "--object-manager-port",
            "--node-manager-port",
        ):
            cmd += [flag, str(free_port())]
        if self.num_cpus:
            cmd += ["--num-cpus", str(self.num_cpus)]
        result = self._run(*cmd)
        if attempt < 3 and result.returncode != 0 and "used by other" in result.stdout + result.stderr:
            # A port picked free a moment ago was taken meanwhile: clean up, retry once with new ones.
            stop_marked(CLUSTER_MARKER, self.marker, timeout_s=STOP_GRACE_S)
            return self.start(timeout_s, attempt + 1)
        if result.returncode != 0:
            raise RuntimeError(f"ray start failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        self.started = True
        self.deploy(timeout_s=timeout_s)
        return self

    def serve_config(self) -> dict[str, Any]:
        """The shared Serve config (the chart's), on this stack's loopback port: what ``deploy``
        deploys by default."""
        return load_serve_config(self.config_path, port=self.http_port)

    def overloaded_config(self, model: str, ongoing: int, queued: int, retry_after_s: int) -> dict[str, Any]:
        """The shared Serve config with ``model`` holding only ``ongoing`` + ``queued`` requests;
        past that it answers 503 with ``Retry-After`` (Ray's ``backpressure_config``): how the
        fault tests and the bench overload Serve."""
        config = self.serve_config()
        for deployment in config["applications"][0]["deployments"]:
            if deployment["name"] == model:
                deployment["max_ongoing_requests"] = ongoing
                deployment["max_queued_requests"] = queued
                deployment["backpressure_config"] = {"status_code": 503, "retry_after_s": retry_after_s}
        return config

    def deploy(self, config: dict[str, Any] | None = None, timeout_s: float = READY_TIMEOUT_S) -> None:
        """``serve deploy`` a config (default: the shared one, on loopback) and wait for RUNNING."""
        config = config or self.serve_config()
        path = self.state_dir / "serve-config.local.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        result = self._run(venv_bin("serve"), "deploy", str(path), "-a", self.dashboard)
        if result.returncode != 0:
            raise RuntimeError(f"serve deploy failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        self.deployed = config
        self.wait_running([app["name"] for app in config["applications"]], timeout_s)

    def status(self) -> dict[str, Any]:
        result = self._run(venv_bin("serve"), "status", "-a", self.dashboard, timeout=60)
        return yaml.safe_load(result.stdout) or {} if result.returncode == 0 else {}

    def wait_running(self, apps: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if not self.started:  # stopped meanwhile (a Ctrl-C or SIGTERM unwind): nothing to wait for
                raise RuntimeError("Ray Serve was stopped while starting")
            last = self.status().get("applications") or {}
            states = {name: (last.get(name) or {}).get("status") for name in apps}
            if all(s == "RUNNING" for s in states.values()):
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(self.url + c.HEALTH_ROUTE, timeout=5).status_code == 200:
                        return
            if any(s == "DEPLOY_FAILED" for s in states.values()):
                raise RuntimeError(f"Serve deployment failed: {yaml.safe_dump(last)}")
            time.sleep(1)
        raise TimeoutError(f"Serve apps {apps} not RUNNING within {timeout_s:.0f}s: {last}")

    def stop(self) -> None:
        # The cluster is ours alone: stopping its processes stops Serve too (no `serve shutdown`).
        # Also when start() was interrupted (Ctrl-C, SIGTERM) in `ray start`: what it had
        # started carries the marker.
        stop_marked(CLUSTER_MARKER, self.marker, timeout_s=STOP_GRACE_S)
        shutil.rmtree(self.haproxy_dir(), ignore_errors=True)
        self.started = False
