"""A real Docker engine for the container tests (tests/containers), from ../shared/containers
(host network only).

``dockerd-start.sh`` starts a private dockerd (installing Debian's docker.io if missing);
``base-image.sh`` builds a local python:3.11-slim stand-in (no registry pulls are possible).
rayproject/ray:<ver>-py311 has no stand-in there: ``ray-standin.Dockerfile`` builds one FROM the
Python stand-in with the same pinned Ray and the same user, tagged with the public name, so
Dockerfile.serve builds unchanged. Images are cached by tag between runs; the project images are
rebuilt every session (Docker's layer cache makes that a few seconds when nothing changed).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import tomllib
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
            result = subprocess.run(
                ["bash", str(scripts / "dockerd-start.sh")], capture_output=True, text=True, timeout=900
            )
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
        result = subprocess.run(
            [self.bin, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
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
            result = subprocess.run(
                ["bash", str(self.scripts / "base-image.sh"), PYTHON_BASE],
                env=self.env, capture_output=True, text=True, timeout=1800,
            )  # fmt: skip
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
