"""Static checks of the Dockerfiles (no Docker engine needed): hadolint, build context."""

from __future__ import annotations

import subprocess

import pytest

from services.local.processes import venv_bin
from tests.helpers.docker import RAY_STANDIN_DOCKERFILE, REPO_ROOT

DOCKERFILES = [
    REPO_ROOT / "Dockerfile.worker",
    REPO_ROOT / "Dockerfile.serve",
    RAY_STANDIN_DOCKERFILE,
]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile) -> None:
    result = subprocess.run(
        [venv_bin("hadolint"), str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_build_context_leaves_out_local_state() -> None:
    ignored = {line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".state", "tests", ".git"} <= ignored
    for needed in ("pyproject.toml", "README.md", "services"):
        assert needed not in ignored


def test_worker_image_has_no_build_tools_in_its_final_stage() -> None:
    text = (REPO_ROOT / "Dockerfile.worker").read_text()
    final = text[text.rindex("\nFROM ") :]
    assert "COPY --from=build /opt/venv /opt/venv" in final
    for tool in ("apt-get", "gcc", "build-essential", "pip install"):
        assert tool not in final
