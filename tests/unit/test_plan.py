"""Shard bounds."""

from __future__ import annotations

import random

import pytest

from services.worker import plan


@pytest.mark.parametrize(
    ("total", "shard_size", "window", "sizes"),
    [
        (100_000, 10_000, 4, [8334] * 4 + [8333] * 8),
        (10_000, 10_000, 4, [2500] * 4),
        (1_000_000, 10_000, 4, [10_000] * 100),
        (10, 4, 4, [3, 3, 2, 2]),
        (3, 10, 4, [1, 1, 1]),
        (25, 10, 1, [9, 8, 8]),
    ],
)
def test_shard_sizes_are_equal_and_fill_the_window(total, shard_size, window, sizes):
    assert plan.shard_sizes(total, shard_size, window) == sizes


@pytest.mark.parametrize("seed", range(5))
def test_shard_sizes_cover_every_record_within_the_limit(seed):
    rng = random.Random(seed)
    for _ in range(2000):
        total, window = rng.randint(1, 10**6), rng.randint(1, 20)
        shard_size = rng.randint(1, total + 5)
        sizes = plan.shard_sizes(total, shard_size, window)
        assert sum(sizes) == total and 1 <= min(sizes) and max(sizes) - min(sizes) <= 1
        assert max(sizes) <= shard_size and len(sizes) >= -(-total // shard_size)
        assert len(sizes) % window == 0 or len(sizes) == total  # fills the window when it can
