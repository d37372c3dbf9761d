"""The worker process's own settings (not its activities: see test_shard_activity)."""

from __future__ import annotations

import platform

import pyarrow as pa
import pytest
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion

from services import constants as c
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
