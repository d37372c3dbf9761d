"""The Serve application redeployed with a changed config under a running batch: what KubeRay
does in place on the running cluster for any change to the RayService's serveConfigV2 (every
upgradeStrategy type), reproduced on local Ray with ``serve deploy``.

The fault tests' private local Ray Serve (``tests/faults/conftest.py``; redeploying the
session's would disturb other tests), an in-process worker whose Serve client reports every HTTP
attempt, and a baseline batch of the same size on the same cluster to say what the upgrade cost.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from services.local.ray_serve import LocalRayServe
from tests.helpers.batches import assert_exactly_once, echo_batch, start_batch
from tests.helpers.waiting import wait_until
from tests.helpers.workers import Attempts, worker_on

# Two full batches and a redeploy: the slowest test, and several times slower on a busy host.
pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(1800)]

TOTAL = 24_000
MICRO_BATCH = 8
TUNING = dict(
    shard_size=4_000,
    checkpoint_every=200,
    micro_batch_size=MICRO_BATCH,
    max_in_flight=4,
    max_concurrent_shards=2,
    heartbeat_timeout_s=10,
)


def new_version(stack: LocalRayServe) -> dict:
    """The shared config as a new release would change it: the application's args (what
    ``serve.applicationArgs`` sets; Serve hashes import_path, runtime_env and args into every
    deployment's code version, so all replicas are replaced, as for a new model version) and
    echo's batching (``user_config``, applied by ``reconfigure``)."""
    config = copy.deepcopy(stack.serve_config())
    app = config["applications"][0]
    app["args"]["max_records_per_request"] = 1000
    (echo,) = [d for d in app["deployments"] if d["name"] == "echo"]
    echo["user_config"]["max_batch_size"] = 32
    return config


def running_replicas(stack: LocalRayServe) -> dict[str, set[str]]:
    """Deployment -> ids of its RUNNING replicas, from the dashboard's Serve API (which keeps
    Ray's token auth, as ``serve deploy`` does)."""
    token = (stack.state_dir / "ray-auth-token").read_text().strip()
    reply = httpx.get(
        f"{stack.dashboard}/api/serve/applications/", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    reply.raise_for_status()
    app = reply.json()["applications"]["batch-inference"]
    return {
        name: {r["replica_id"] for r in deployment["replicas"] if r["state"] == "RUNNING"}
        for name, deployment in app["deployments"].items()
    }


def longest_gap(times: list[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


async def run_batch(client, stack: LocalRayServe, tmp_path: Path, prefix: str, during=None):
    """A file batch of TOTAL echo records; ``during(attempts)`` runs beside it."""
    records, output, batch = echo_batch(tmp_path, TOTAL, prefix, **TUNING)
    attempts = Attempts()
    started = time.monotonic()
    async with worker_on(client, stack.url, stack.token_file, attempts) as queue:
        handle = await start_batch(client, queue, batch, prefix)
        side = await during(attempts) if during else None
        result = await handle.result()
    took = time.monotonic() - started
    assert_exactly_once(output, [r["id"] for r in records], result)
    assert result.failed == 0
    return attempts, took, result, side


async def test_batch_completes_exactly_once_while_serve_is_redeployed_with_a_new_version(
    client, private_serve: LocalRayServe, tmp_path: Path
):
    base_attempts, base_took, _, _ = await run_batch(client, private_serve, tmp_path / "base", "up-base")
    base_ok = [t for t, o in base_attempts.log if o == "200"]

    async def redeploy(attempts: Attempts) -> tuple[float, float, dict, dict]:
        await wait_until(
            lambda: attempts.count("200") * MICRO_BATCH >= 0.2 * TOTAL, 300, "a fifth of the batch"
        )
        before = await asyncio.to_thread(running_replicas, private_serve)
        start = time.monotonic()
        # `serve deploy` returns at once; deploy() then waits for the app to be RUNNING again.
        await asyncio.to_thread(private_serve.deploy, new_version(private_serve))
        done = time.monotonic()
        after = await asyncio.to_thread(running_replicas, private_serve)
        return start, done, before, after

    # Not put back here: a later test's ``private_serve`` redeploys the shared config if it needs it.
    attempts, took, result, side = await run_batch(
        client, private_serve, tmp_path / "upgrade", "up-new", during=redeploy
    )
    start, done, before, after = side
    ok = [t for t, o in attempts.log if o == "200"]
    retried = [(t, o) for t, o in attempts.log if o != "200"]
    in_rollout = [t for t in ok if start <= t <= done]
    print(
        f"\nredeploy with a new version took {done - start:.1f}s; batch {took:.1f}s vs {base_took:.1f}s "
        f"without (+{took - base_took:.1f}s); {len(retried)} of {len(attempts.log)} requests retried "
        f"({dict(Counter(o for _, o in retried))}); {len(in_rollout)} answered during the rollout; "
        f"longest wait between answers {longest_gap(ok):.2f}s (baseline {longest_gap(base_ok):.2f}s); "
        f"shards {result.shards}, resumed records {result.resumed_records}"
    )
    for deployment, replicas in before.items():
        assert replicas and after[deployment], f"{deployment} has running replicas before and after"
        assert not replicas & after[deployment], f"every {deployment} replica was replaced"
    assert [t for t in ok if t > done], "the batch was still running when the new version was up"
    # Retries are allowed (and counted above), giving up is not: exactly once was checked.
    assert len(retried) <= len(attempts.log) // 10
