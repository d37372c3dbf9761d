"""The worker process's own settings (not its activities: see test_shard_activity)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion

from services import constants as c
from services.local.paths import REPO_ROOT
from services.worker.config import WorkerSettings
from services.worker.contracts import Tuning
from services.worker.malloc import arrow_on_system_allocator, limit_malloc_arenas, release_free_memory
from services.worker.worker import eager_options, versioning_options


def test_one_malloc_arena_unless_the_environment_chooses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False  # glibc applies the user's value itself
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert limit_malloc_arenas() is (platform.libc_ver()[0] == "glibc")


def test_free_heap_memory_goes_back_to_the_os():
    if platform.libc_ver()[0] != "glibc":
        assert release_free_memory() is False
        return
    # Many mid-sized buffers, every other one kept: the freed half lies scattered in the heap,
    # below the kept ones, where only malloc_trim can hand it back.
    buffers = [bytearray(100_000) for _ in range(400)]
    del buffers[::2]
    assert release_free_memory() is True


def test_arrow_allocates_from_the_heap_the_worker_trims_unless_the_environment_chooses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = pa.default_memory_pool()
    try:
        monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
        assert arrow_on_system_allocator() is False  # Arrow applies the user's choice itself
        monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL")
        pa.set_memory_pool(pa.mimalloc_memory_pool())
        assert arrow_on_system_allocator() is True
        assert pa.default_memory_pool().backend_name == "system"
        assert pa.array([1.0, 2.0]).buffers()[1].size > 0  # allocations work from the new pool
    finally:
        pa.set_memory_pool(before)


# A fresh process reads a Parquet file and writes Arrow IPC, as a shard does, and prints Arrow's
# pool and how many bytes Arrow's bundled allocator (mimalloc) ever held.
_ARROW_IN_A_FRESH_PROCESS = """
import sys
from services.worker import malloc
if sys.argv[1] == "before-import":
    malloc.arrow_pool_before_import()
import pyarrow as pa, pyarrow.parquet as pq
malloc.arrow_on_system_allocator()
for batch in pq.ParquetFile(sys.argv[2]).iter_batches(batch_size=16_384):
    out = pa.BufferOutputStream()
    with pa.ipc.new_stream(out, batch.schema) as writer:
        writer.write_batch(batch)
print(pa.default_memory_pool().backend_name, pa.mimalloc_memory_pool().max_memory())
"""


def _fresh_python(code: str, *args: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != c.ENV_ARROW_DEFAULT_MEMORY_POOL}
    run = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout.split()


def test_arrow_c_plus_plus_allocates_from_the_heap_only_if_chosen_before_pyarrow_loads(
    tmp_path: Path,
) -> None:
    if "mimalloc" not in pa.supported_memory_backends():
        pytest.skip("this pyarrow has no bundled mimalloc to compare with")
    path = tmp_path / "in.parquet"
    pq.write_table(
        pa.table({"id": [f"r-{i}" for i in range(200_000)], "x": [float(i) for i in range(200_000)]}), path
    )
    # Chosen after the import, only pyarrow's Python calls take the heap: Parquet decoding and
    # IPC writing still go to mimalloc (the worker's peak RSS grew by what it kept).
    pool, bundled = _fresh_python(_ARROW_IN_A_FRESH_PROCESS, "after-import", str(path))
    assert (pool, int(bundled) > 0) == ("system", True)
    pool, bundled = _fresh_python(_ARROW_IN_A_FRESH_PROCESS, "before-import", str(path))
    assert (pool, int(bundled)) == ("system", 0)


def test_the_worker_entry_point_chooses_arrows_pool_before_pyarrow_loads() -> None:
    # ``python -m services.worker`` with its worker module replaced by one that reports Arrow's
    # C++ default pool (an environment variable Arrow reads when it loads) and exits.
    code = textwrap.dedent("""
        import runpy, sys, types
        fake = types.ModuleType("services.worker.worker")
        def main():
            import pyarrow as pa
            print(pa.default_memory_pool().backend_name)
            return 0
        fake.main = main
        sys.modules["services.worker.worker"] = fake
        runpy.run_module("services.worker", run_name="__main__")
    """)
    assert _fresh_python(code) == ["system"]


def test_a_worker_takes_a_whole_first_wave_eagerly_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert WorkerSettings().eager_activities == Tuning().max_concurrent_shards == 4
    assert eager_options(4) == {"max_eager_activity_reservations_per_workflow_task": 4}
    monkeypatch.setenv(c.ENV_WORKER_EAGER_ACTIVITIES, "0")
    assert WorkerSettings().eager_activities == 0
    # The SDK refuses 0 reservations: "none" is its own flag.
    assert eager_options(0) == {"disable_eager_activity_execution": True}
    monkeypatch.setenv(c.ENV_WORKER_EAGER_ACTIVITIES, "-1")
    with pytest.raises(ValueError, match=c.ENV_WORKER_EAGER_ACTIVITIES):
        WorkerSettings()


def test_a_worker_is_unversioned_unless_both_deployment_and_build_are_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert versioning_options(WorkerSettings()) == {}
    monkeypatch.setenv(c.ENV_TEMPORAL_DEPLOYMENT_NAME, "batch-inference-worker")
    with pytest.raises(ValueError, match=c.ENV_TEMPORAL_BUILD_ID):
        WorkerSettings()
    monkeypatch.setenv(c.ENV_TEMPORAL_BUILD_ID, "1.4.2")
    deployment = versioning_options(WorkerSettings())["deployment_config"]
    assert deployment.version == WorkerDeploymentVersion("batch-inference-worker", "1.4.2")
    assert deployment.use_worker_versioning
    # Pinned: a run never meets new workflow code mid-history.
    assert deployment.default_versioning_behavior == VersioningBehavior.PINNED


def test_a_deployment_name_with_a_dot_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # "<deployment>.<build id>" is the SDK's form of a version: the first dot splits them.
    monkeypatch.setenv(c.ENV_TEMPORAL_DEPLOYMENT_NAME, "batch.inference")
    monkeypatch.setenv(c.ENV_TEMPORAL_BUILD_ID, "v1")
    with pytest.raises(ValueError, match=c.ENV_TEMPORAL_DEPLOYMENT_NAME):
        WorkerSettings()


def test_the_serve_wire_is_auto_or_json_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    assert WorkerSettings().serve_wire == "auto"
    monkeypatch.setenv(c.ENV_SERVE_WIRE, " JSON ")
    assert WorkerSettings().serve_wire == "json"
    monkeypatch.setenv(c.ENV_SERVE_WIRE, "")  # set to nothing: the default
    assert WorkerSettings().serve_wire == "auto"
    monkeypatch.setenv(c.ENV_SERVE_WIRE, "arrow")
    with pytest.raises(ValueError, match=rf"{c.ENV_SERVE_WIRE}\n.*'auto' or 'json'") as err:
        WorkerSettings()
    assert "arrow" not in str(err.value)  # hide_input_in_errors: what it was given is not echoed
