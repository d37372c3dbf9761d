"""The worker process's own settings (not its activities: see test_shard_activity)."""

from __future__ import annotations

import platform

import pytest

from services.worker.worker import limit_malloc_arenas


def test_one_malloc_arena_unless_the_environment_chooses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False  # glibc applies the user's value itself
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert limit_malloc_arenas() is (platform.libc_ver()[0] == "glibc")
