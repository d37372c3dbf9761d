"""Worker crashes and shutdowns: SIGKILL at random points, SIGTERM with a graceful timeout.

Workers are real processes (``python -m services.worker``) against the session's Temporal dev
server and Ray Serve; a counting proxy in front of Serve counts every record really sent.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid

import pytest

from services import constants as c
from tests.helpers.batches import assert_exactly_once, echo_batch, start_batch
from tests.helpers.proxy import CountingProxy
from tests.helpers.waiting import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def committed_in_running_shards(output) -> int:
    """Records in committed parts of shards without final files: what a restart from zero
    would send again."""
    total = 0
    for part_dir in (output / c.PARTS_DIR).glob("shard-*"):
        if (output / f"{part_dir.name}.jsonl").exists():
            continue
        for part in [*part_dir.glob("part-*.out.jsonl"), *part_dir.glob("part-*.err.jsonl")]:
            total += sum(1 for _ in part.open("rb"))
    return total


async def test_sigkill_the_worker_at_random_points(
    client, temporal_server, serve_stack, serve_token_file, spawn_worker, tmp_path
):
    total = 10_000
    records, output, batch = echo_batch(
        tmp_path,
        total,
        "e",
        shard_size=2_000,
        checkpoint_every=100,
        micro_batch_size=8,
        max_in_flight=1,
        max_concurrent_shards=2,
        heartbeat_timeout_s=3,
    )
    queue = f"kill-{uuid.uuid4().hex[:8]}"
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    kills = sorted(rng.uniform(lo, hi) for lo, hi in ((0.1, 0.3), (0.35, 0.55), (0.6, 0.8)))
    from_zero_extra = 0
    with CountingProxy(serve_stack.url) as proxy:

        def start_worker():
            return spawn_worker(temporal_server.address, queue, proxy.url, serve_token_file).polling()

        worker = await start_worker()
        handle = await start_batch(client, queue, batch, "kill")
        for fraction in kills:
            await wait_until(lambda f=fraction: proxy.records >= f * total, 300, f"{fraction:.0%} sent")
            # Random point inside a part, too: up to one part's worth of time later.
            await asyncio.sleep(rng.uniform(0, 0.3))
            worker.signal(signal.SIGKILL)
            await worker.exited(30)
            from_zero_extra += committed_in_running_shards(output)
            worker = await start_worker()
        kill_done = time.monotonic()
        result = await handle.result()
        print(f"\nlast kill -> done {time.monotonic() - kill_done:.1f}s; batch {result.duration_s}s")
    resent = proxy.records - total
    from_zero = resent + from_zero_extra
    print(
        f"\nSIGKILL x{len(kills)} at {[f'{k:.0%}' for k in kills]} (seed {seed}): {proxy.records} records "
        f"sent for {total}; re-sent {resent} (resumed_records={result.resumed_records}); a restart "
        f"from zero would have re-sent at least {from_zero}"
    )
    assert_exactly_once(output, [r["id"] for r in records], result)
    assert result.resumed_records > 0, "retried shards resumed from their checkpoints"
    assert resent < from_zero / 2, "resuming re-sends far fewer records than starting over"


def running_shards(output) -> set[str]:
    """Shards with committed parts and no final files yet."""
    return {
        d.name
        for d in (output / c.PARTS_DIR).glob("shard-*")
        if list(d.glob("part-*.ckpt.jsonl")) and not (output / f"{d.name}.jsonl").exists()
    }


@pytest.mark.parametrize(
    ("graceful_s", "shard_size", "drains"),
    [(90, 600, True), (2, 1_500, False)],
    ids=["running-shards-finish", "timeout-hands-over"],
)
async def test_sigterm_shuts_down_within_the_graceful_timeout(
    client,
    temporal_server,
    serve_stack,
    serve_token_file,
    spawn_worker,
    tmp_path,
    graceful_s,
    shard_size,
    drains,
):
    """SIGTERM: the worker stops polling and gives running shards ``graceful_s`` to finish. A shard
    that finishes in time is committed by this worker; one that does not is cancelled at the
    deadline and resumed by another worker from its checkpoint. Either way nothing is lost."""
    total = 4 * shard_size
    records, output, batch = echo_batch(
        tmp_path,
        total,
        "t",
        shard_size=shard_size,
        checkpoint_every=100,
        micro_batch_size=4,
        max_in_flight=1,
        max_concurrent_shards=2,
        heartbeat_timeout_s=5,
    )
    queue = f"term-{uuid.uuid4().hex[:8]}"
    env = {c.ENV_WORKER_GRACEFUL_SHUTDOWN_S: str(graceful_s)}
    worker = await spawn_worker(
        temporal_server.address, queue, serve_stack.url, serve_token_file, **env
    ).polling()
    handle = await start_batch(client, queue, batch, "term")
    await wait_until(lambda: len(running_shards(output)) == 2, 300, "two shards with committed parts")
    running = running_shards(output)
    sent = time.monotonic()
    worker.signal(signal.SIGTERM)
    code = await worker.exited(graceful_s + 15)
    took = time.monotonic() - sent
    print(f"\nSIGTERM with {graceful_s}s graceful timeout: exited {code} after {took:.1f}s")
    assert code == 0, worker.text()[-2000:]
    assert "shutting down" in worker.text()
    finished = {name for name in running if (output / f"{name}.jsonl").exists()}
    if drains:
        assert finished == running, "running shards finished before the worker exited"
        assert took < graceful_s
    else:
        assert not finished, "shards longer than the timeout were cancelled, not finished"
        assert graceful_s <= took < graceful_s + 15
    await spawn_worker(temporal_server.address, queue, serve_stack.url, serve_token_file).polling()
    result = await handle.result()
    assert_exactly_once(output, [r["id"] for r in records], result)
    if drains:
        assert result.resumed_records == 0
    else:
        assert result.resumed_records > 0, "the handed-over shards resumed from their checkpoints"
