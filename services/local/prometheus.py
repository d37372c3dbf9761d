"""A local Prometheus scraping the local stack with the chart's alert rules loaded, so the rules
and dashboard queries meet real metrics without a cluster (``run --prometheus``, the tests)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from services.local.paths import REPO_ROOT
from services.local.processes import LOOPBACK, terminate

PROMETHEUS_RULES = (
    REPO_ROOT / "charts" / "batch-inference" / "files" / "observability" / "prometheus-rules.yaml"
)


def prometheus_config(
    worker_targets: list[str],
    ray_targets: list[str],
    rule_files: list[Path] | None = None,
    scrape_interval: str = "5s",
    progress_targets: list[str] | None = None,
) -> dict[str, Any]:
    """A plain Prometheus config scraping workers, Ray and, if given, the progress exporter
    (job names the alert rules expect)."""
    from services.metrics import PROGRESS_JOB, RAY_JOB, WORKER_JOB

    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(p) for p in (rule_files if rule_files is not None else [PROMETHEUS_RULES])],
        "scrape_configs": [
            {"job_name": WORKER_JOB, "static_configs": [{"targets": worker_targets}]},
            {"job_name": RAY_JOB, "static_configs": [{"targets": ray_targets}]},
        ],
    }
    if progress_targets:
        config["scrape_configs"].append(
            {"job_name": PROGRESS_JOB, "static_configs": [{"targets": progress_targets}]}
        )
    return config


class LocalPrometheus:
    """Debian's ``prometheus`` binary (where installed) on loopback, scraping the local stack
    with the project's alert rules loaded. Data lives in ``state_dir``; ``stop()`` stops it."""

    def __init__(self, state_dir: Path, config: dict[str, Any], port: int = 9090, binary: str | None = None):
        self.state_dir = Path(state_dir).resolve()
        self.config, self.port = config, port
        self.binary = binary or shutil.which("prometheus")
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("prometheus") is not None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout_s: float = 30) -> LocalPrometheus:
        if not self.binary:
            raise FileNotFoundError("'prometheus' not found (Debian/Ubuntu: apt-get install prometheus)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config = self.state_dir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config, sort_keys=False))
        cmd = [
            self.binary, f"--config.file={config}", f"--storage.tsdb.path={self.state_dir / 'data'}",
            f"--web.listen-address={LOOPBACK}:{self.port}", "--log.level=warn",
        ]  # fmt: skip
        log = open(self.state_dir / "prometheus.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited with {self.proc.returncode}: see {self.state_dir / 'prometheus.log'}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/-/ready", timeout=2).status_code == 200:
                    return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"prometheus not ready within {timeout_s:.0f}s")

    def stop(self) -> None:
        terminate(self.proc)
