"""A real Docker engine for the container tests (tests/containers), from ../shared/containers
(host network only).

``dockerd-start.sh`` starts a private dockerd (installing Debian's docker.io if missing);
``base-image.sh`` builds a local python:3.11-slim stand-in (no registry pulls are possible).
rayproject/ray:<ver>-py311 has no stand-in there: ``ray-standin.Dockerfile`` builds one FROM the
Python stand-in with the same pinned Ray and the same user, tagged with the public name, so
Dockerfile.serve builds unchanged. Images are cached by tag between runs; the project images are
rebuilt every session (Docker's layer cache makes that a few seconds when nothing changed).

``Preparation`` does all of that in a background thread from the start of the session: on a fresh
machine it is minutes of downloading and unpacking packages, which the other tests need not wait
for. It runs at the lowest CPU and I/O priority (``nice``, ``ionice``), since the tests beside it
measure time; a dockerd it starts keeps that priority, and so do the builds it runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import tomllib
from concurrent.futures import Future
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# The Ray stand-in's Dockerfile and build context: the container tests' own folder.
CONTAINERS_DIR = REPO_ROOT / "tests" / "containers"
RAY_STANDIN_DOCKERFILE = CONTAINERS_DIR / "ray-standin.Dockerfile"
PYTHON_BASE = "python:3.11-slim"
WORKER_IMAGE = "batch-inference-worker:test"
SERVE_IMAGE = "batch-inference-serve:test"


def ray_version() -> str:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    (pin,) = [d for d in project["optional-dependencies"]["serve"] if d.startswith("ray[")]
    return pin.split("==")[1]


def ray_base_image() -> str:
    match = re.search(r"^ARG BASE_IMAGE=(\S+)$", (REPO_ROOT / "Dockerfile.serve").read_text(), re.M)
    assert match, "Dockerfile.serve has no BASE_IMAGE default"
    return match.group(1)


def shared_containers_dir() -> Path | None:
    env = os.environ.get("BATCH_INFERENCE_CONTAINERS_DIR")
    candidates = [Path(env)] if env else []
    candidates += [REPO_ROOT.parent / "shared" / "containers", Path("/work/shared/containers")]
    return next((p for p in candidates if (p / "dockerd-start.sh").is_file()), None)


class DockerUnavailable(Exception):
    pass


_running: set[subprocess.Popen] = set()
# What runs beside the other tests yields to them.
LOW_PRIORITY = ["nice", "-n", "19", *(["ionice", "-c", "3"] if shutil.which("ionice") else [])]


def run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``subprocess.run`` with the output captured, in a process group of its own that
    ``stop_running`` can stop (a build or an apt install outlives its Python caller otherwise)."""
    with subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        _running.add(proc)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except BaseException:
            _stop(proc)
            raise
        finally:
            _running.discard(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def stop_running() -> None:
    """Stop every command ``run`` still has going (the session is ending, or was interrupted)."""
    for proc in list(_running):
        _stop(proc)


class Docker:
    def __init__(self, scripts: Path, env: dict[str, str]):
        self.scripts = scripts
        self.env = env
        self.bin = (
            "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker") or "docker"
        )

    @classmethod
    def start(cls) -> Docker:
        """Start (or reuse) the private engine; DockerUnavailable says why it cannot."""
        scripts = shared_containers_dir()
        if scripts is None:
            raise DockerUnavailable(
                "no dockerd-start.sh (../shared/containers) to start a Docker engine with"
            )
        if os.geteuid() != 0:
            raise DockerUnavailable("starting a private dockerd needs root")
        try:
            result = run([*LOW_PRIORITY, "bash", str(scripts / "dockerd-start.sh")], timeout=900)
        except subprocess.TimeoutExpired:
            raise DockerUnavailable("dockerd-start.sh did not finish within 15 minutes") from None
        if result.returncode != 0:
            raise DockerUnavailable(f"dockerd-start.sh failed: {(result.stderr or result.stdout)[-800:]}")
        env = dict(os.environ, DOCKER_BUILDKIT="0")  # the legacy builder never pulls base images
        for key, value in re.findall(r"(DOCKER_[A-Z_]+)=(\S+)", result.stdout):
            env[key] = value
        if "DOCKER_HOST" not in env:
            raise DockerUnavailable(f"dockerd-start.sh printed no DOCKER_HOST: {result.stdout[-300:]}")
        return cls(scripts, env)

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        result = run([self.bin, *args], timeout, self.env)
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args[:3])} ... failed ({result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def has_image(self, tag: str) -> bool:
        return self("image", "inspect", tag, check=False).returncode == 0

    def build(self, dockerfile: Path, tag: str, context: Path, **build_args: str) -> float:
        """``docker build --network host`` (no bridge here); returns seconds taken."""
        started = time.monotonic()
        args = ["build", "--network", "host", "-f", str(dockerfile), "-t", tag]
        for key, value in build_args.items():
            args += ["--build-arg", f"{key}={value}"]
        self(*args, str(context), timeout=1800)
        return time.monotonic() - started

    def ensure_bases(self) -> dict[str, float]:
        """The Python stand-in and the Ray stand-in, built once and cached by tag."""
        timings: dict[str, float] = {}
        if not self.has_image(PYTHON_BASE):
            started = time.monotonic()
            result = run(
                [*LOW_PRIORITY, "bash", str(self.scripts / "base-image.sh"), PYTHON_BASE], 1800, self.env
            )
            assert result.returncode == 0, f"base-image.sh failed:\n{result.stderr[-3000:]}"
            timings[PYTHON_BASE] = time.monotonic() - started
        ray_image = ray_base_image()
        assert ray_image == f"rayproject/ray:{ray_version()}-py311"
        if not self.has_image(ray_image):
            timings[ray_image] = self.build(
                RAY_STANDIN_DOCKERFILE,
                ray_image,
                CONTAINERS_DIR,
                RAY_VERSION=ray_version(),
                PYTHON_IMAGE=PYTHON_BASE,
            )
        return timings

    def exit_code(self, name: str) -> int | None:
        state = self("inspect", "-f", "{{.State.Running}} {{.State.ExitCode}}", name).stdout.split()
        return None if state[0] == "true" else int(state[1])

    def logs(self, name: str) -> str:
        result = self("logs", "--tail", "80", name, check=False)
        return result.stdout + result.stderr

    def remove(self, name: str) -> None:
        self("rm", "-f", name, check=False, timeout=120)


class Preparation:
    """The engine, the base images and the two project images, made one after the other in a
    background thread; each fixture waits only for what it needs. ``stop`` stops what is still
    running when the session ends first."""

    def __init__(self) -> None:
        self.engine: Future[tuple[Docker, dict[str, float]]] = Future()
        self.images: dict[str, Future[float]] = {WORKER_IMAGE: Future(), SERVE_IMAGE: Future()}
        self._thread = threading.Thread(target=self._prepare, name="docker-preparation", daemon=True)
        self._thread.start()

    def _prepare(self) -> None:
        futures = [self.engine, *self.images.values()]
        try:
            engine = Docker.start()
            self.engine.set_result((engine, engine.ensure_bases()))
            dockerfiles = {WORKER_IMAGE: "Dockerfile.worker", SERVE_IMAGE: "Dockerfile.serve"}
            for tag, image in self.images.items():
                image.set_result(engine.build(REPO_ROOT / dockerfiles[tag], tag, REPO_ROOT))
        except BaseException as exc:  # said by every fixture that waits for what is not done
            for future in futures:
                if not future.done():
                    future.set_exception(exc)

    def stop(self) -> None:
        stop_running()
        self._thread.join(30)
