"""`batch-inference temporal`, `serve` and `run` stop everything they started on SIGTERM, as on
Ctrl-C: each is started as a user would (the console script, in its own session, with SIGINT
ignored as `cmd &` from a script leaves it), sent SIGTERM once up, and then no process it
started is left.

Their processes are found by a tag in the environment the command starts with (every child
inherits it; Ray's renamed agents hide their environment, so they are found as children of the
tagged ones), snapshotted while the command runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from services import constants as c
from services.local.ports import next_free_port
from services.local.processes import free_port, marked_pids, with_descendants
from tests.helpers.records import echo_records, write_jsonl

pytestmark = pytest.mark.integration

TAG = "BATCH_INFERENCE_SIGTERM_TEST"
CLI = Path(sys.executable).parent / "batch-inference"


class Command:
    """A CLI command in its own session, its stderr collected line by line."""

    def __init__(self, *args: str, tmp: Path):
        self.tag = uuid.uuid4().hex
        env = {
            **os.environ,
            TAG: self.tag,
            c.ENV_WORKER_METRICS_PORT: "0",
            "PYTHONUNBUFFERED": "1",
        }
        self.proc = subprocess.Popen(
            [str(CLI), *args],
            cwd=tmp,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as `cmd &` does
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())

    def wait_for(self, prefix: str, timeout_s: float) -> None:
        """Until a line of its stderr starts with ``prefix``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(line.startswith(prefix) for line in self.lines):
                return
            assert self.proc.poll() is None, "exited early:\n" + "\n".join(self.lines[-30:])
            time.sleep(0.2)
        raise TimeoutError(f"no {prefix!r} within {timeout_s:.0f}s:\n" + "\n".join(self.lines[-30:]))

    def processes(self) -> set[int]:
        return set(with_descendants([*marked_pids(TAG, self.tag), self.proc.pid]))

    def sigterm_and_check_nothing_left(self, timeout_s: float = 90) -> None:
        started = self.processes() - {self.proc.pid}
        assert started, "the command started no process of its own?"
        assert self.proc.poll() is None, "it must still be running when SIGTERM arrives"
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout_s)
        assert code in (0, 130, 128 + signal.SIGTERM), "\n".join(self.lines[-30:])
        deadline = time.monotonic() + 20
        while (left := _alive(started | self.processes())) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, f"left running after SIGTERM: {_describe(left)}"


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if ") Z " not in stat:
            alive.add(pid)
    return alive


def _describe(pids: set[int]) -> list[str]:
    out = []
    for pid in sorted(pids):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            out.append(f"{pid}: {cmdline[:120]!r}")
        except OSError:
            pass
    return out


def temporal_port() -> int:
    """A free port whose web UI port (port + the offset) is free too."""
    port = next_free_port(free_port(), also=(c.TEMPORAL_UI_PORT_OFFSET,))
    assert port is not None, "no free port pair near a free port"
    return port


def test_temporal_stops_its_dev_server_on_sigterm(tmp_path):
    cmd = Command(
        "temporal", "--state-dir", str(tmp_path / "state"), "--port", str(temporal_port()), tmp=tmp_path
    )
    try:
        cmd.wait_for("Temporal running; Ctrl-C to stop", 60)
        cmd.sigterm_and_check_nothing_left()
    finally:
        _kill_left(cmd)


def test_serve_stops_the_whole_local_ray_cluster_on_sigterm(tmp_path):
    cmd = Command("serve", "--state-dir", str(tmp_path / "state"), "--free-ports", tmp=tmp_path)
    try:
        cmd.wait_for("Serve running; Ctrl-C to stop", 300)
        cmd.sigterm_and_check_nothing_left()
    finally:
        _kill_left(cmd)


def test_run_stops_temporal_ray_and_its_worker_on_sigterm(tmp_path):
    """SIGTERM while the batch runs: a large enough input that it is still running."""
    source = write_jsonl(tmp_path / "in.jsonl", echo_records(400_000))
    args = ["run", "--state-dir", str(tmp_path / "state"), "--free-ports", "--input", str(source)]
    cmd = Command(*args, "--model", "echo", "--output", str(tmp_path / "out"), tmp=tmp_path)
    try:
        cmd.wait_for("batch ", 300)
        cmd.sigterm_and_check_nothing_left()
        assert any("stopping Ray Serve and Temporal" in line for line in cmd.lines)
    finally:
        _kill_left(cmd)


def _kill_left(cmd: Command) -> None:
    """After a failure: nothing of the test's own stays behind (only its tagged processes)."""
    if cmd.proc.poll() is None:
        cmd.proc.kill()
        cmd.proc.wait()
    for pid in _alive(with_descendants(marked_pids(TAG, cmd.tag))):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
