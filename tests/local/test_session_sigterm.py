"""The test session itself on SIGTERM (a CI runner's cancel, ``timeout``): its session fixtures'
teardown stops the servers they started, as on Ctrl-C, instead of leaving them running.

A child pytest session with this suite's ``conftest`` as a plugin runs one test that holds the
session's Temporal dev server open; it is sent SIGTERM and the server must be gone after.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.local.paths import REPO_ROOT
from services.local.processes import alive

pytestmark = pytest.mark.integration

HOLDING = """
import time

def test_hold(temporal_server):
    print(f"temporal pid {temporal_server.proc.pid}", flush=True)
    time.sleep(600)
"""


def test_sigterm_to_the_test_session_stops_the_servers_it_started(tmp_path: Path):
    (tmp_path / "test_hold.py").write_text(HOLDING)
    log_path = tmp_path / "session.log"
    with log_path.open("w") as log:
        session = subprocess.Popen(
            [
                sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
                "-s", "-q", "--rootdir", str(tmp_path), "--basetemp", str(tmp_path / "basetemp"),
                str(tmp_path / "test_hold.py"),
            ],
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (found := re.search(r"temporal pid (\d+)", log_path.read_text())):
            assert session.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the child session's Temporal server did not start"
            time.sleep(0.2)
        server = int(found.group(1))
        assert alive(server)
        session.send_signal(signal.SIGTERM)
        session.wait(120)
        assert "KeyboardInterrupt" in log_path.read_text(), "SIGTERM ended the session as Ctrl-C does"
        assert not alive(server), "the session's teardown stopped its Temporal dev server"
    finally:
        # Whatever is left of the child session's process group (on a failure above), the group
        # outliving its leader included.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(session.pid, signal.SIGKILL)
        session.wait()
