"""Stopping one local cluster: every marked process and what it started, nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from services.local.processes import stop_marked, with_descendants

# A marked parent whose child rewrites its own environment on start (as Ray's agents do when
# they rename themselves): only its parentage tells it belongs to the cluster.
TREE = """
import os, subprocess, sys, time
sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
child = subprocess.Popen(sleeper, env={"PATH": os.environ["PATH"]})
print(child.pid, flush=True)
time.sleep(60)
"""


def test_stop_marked_stops_the_marked_process_and_its_unmarked_children() -> None:
    marker = f"test-{os.getpid()}-{time.monotonic_ns()}"
    parent = subprocess.Popen(
        [sys.executable, "-c", TREE],
        env={**os.environ, "TEST_CLUSTER": marker},
        stdout=subprocess.PIPE,
        text=True,
    )
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        child = int(parent.stdout.readline())  # type: ignore[union-attr]
        assert set(with_descendants([parent.pid])) == {parent.pid, child}
        stop_marked("TEST_CLUSTER", marker, timeout_s=5)
        parent.wait(5)
        deadline = time.monotonic() + 5
        while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # reparented to init, which reaps it
        assert not Path(f"/proc/{child}").exists() or ") Z " in Path(f"/proc/{child}/stat").read_text()
        assert bystander.poll() is None, "a process outside the cluster is left alone"
    finally:
        for proc in (parent, bystander):
            proc.kill()
            proc.wait()
