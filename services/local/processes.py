"""Child-process helpers shared by the local servers (loopback only).

Each local server's ``stop()`` stops what its ``start()`` started and nothing else on the
machine: these start from the venv, wait for ports, and find and stop exactly those processes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"


def venv_bin(name: str) -> str:
    """A console script next to this interpreter (the venv), else on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"'{name}' not found: install the project with the 'local'/'serve' extras")
    return found


def marked_pids(name: str, value: str) -> list[int]:
    """Processes whose environment holds ``name=value`` (Linux /proc)."""
    needle = f"{name}={value}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
    return pids


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process (Linux /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                # the command name may hold spaces and parentheses: the fields follow its last ")"
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return parents


def with_descendants(pids: list[int]) -> list[int]:
    """``pids`` and every process below them. Ray renames its agent processes, which hides
    their environment (and so the marker) from /proc: they are found as children instead."""
    parents = _parents()
    found, frontier = set(pids), set(pids)
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return sorted(found)


def stop_marked(name: str, value: str, timeout_s: float = 15) -> None:
    """SIGTERM every process of one local Ray cluster (those holding the marker and what they
    started), SIGKILL what is left after the timeout.

    ``ray stop`` would stop every Ray cluster on the machine, not just ours."""
    known: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        # again before SIGKILL: a dying cluster may have started processes meanwhile
        known = with_descendants(marked_pids(name, value) + known)
        pids = [p for p in known if alive(p)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if alive(p)]
            time.sleep(0.2)
        if not pids:
            return


def alive(pid: int) -> bool:
    """The process exists and has not exited (a zombie waiting for its parent has)."""
    with contextlib.suppress(OSError):
        return ") Z " not in Path(f"/proc/{pid}/stat").read_text()
    return False


def terminate(proc: subprocess.Popen | None, timeout_s: float = 15) -> None:
    """SIGTERM a child server, SIGKILL it if it is still there after ``timeout_s``."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"port {port} did not open within {timeout_s:.0f}s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def sigterm_as_ctrl_c() -> None:
    """SIGTERM (``kill``, a supervisor, a container stop, a CI runner's cancel) stops a local
    server command or a test session as Ctrl-C does, stopping what it started: Python turns only
    SIGINT into KeyboardInterrupt, and a command started with ``&`` ignores SIGINT. Once
    stopping, a second SIGTERM is ignored so it cannot cut the stopping short."""

    def interrupt(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
