"""The adaptive in-flight limit against a real, overloaded local Ray Serve: the echo deployment
holds 2 + 2 requests (``max_queued_requests``), the batch's fixed limits allow 24 in flight.

The same batch runs twice on the private Serve of ``test_serve_faults``: with the fixed limits
only (what every worker did before issue 20) and with the adaptive limit. Refusals are counted
from the worker's own record of its HTTP attempts (its Serve client's ``on_attempt`` hook, which
feeds ``batch_inference_serve_requests``). Behaviour, not speed: the bench measures records/s.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from services import constants as c
from services.local.ray_serve import LocalRayServe
from services.worker.concurrency import AdaptiveLimiter, LimitSettings
from services.worker.contracts import BatchInferenceOutput
from tests.helpers.batches import assert_exactly_once, echo_batch
from tests.helpers.workers import Attempts, worker_on

pytestmark = [pytest.mark.faults, pytest.mark.integration]

TOTAL = 4_000
TUNING = dict(
    shard_size=1_000, checkpoint_every=250, micro_batch_size=8, max_in_flight=8, max_concurrent_shards=3
)


async def _run(
    client, serve: LocalRayServe, folder: Path, limiter: AdaptiveLimiter | None
) -> tuple[Attempts, float]:
    records, output, batch = echo_batch(folder, TOTAL, "a", **TUNING)
    attempts = Attempts()
    async with worker_on(client, serve.url, serve.token_file, attempts, limiter=limiter) as queue:
        result = await client.execute_workflow(
            c.WORKFLOW_NAME, batch, id=f"adaptive-{uuid.uuid4().hex[:8]}", task_queue=queue,
            result_type=BatchInferenceOutput,
        )  # fmt: skip
    assert_exactly_once(output, [r["id"] for r in records], result)
    assert result.failed == 0
    refused = attempts.count("503") + attempts.count("429")
    return attempts, refused / len(attempts.log)


async def test_adaptive_limit_keeps_refusals_a_small_fraction_under_overload(
    client,
    private_serve: LocalRayServe,
    tmp_path: Path,
):
    overloaded = private_serve.overloaded_config("echo", 2, 2, retry_after_s=1)
    await asyncio.to_thread(private_serve.deploy, overloaded)
    try:
        fixed, fixed_share = await _run(client, private_serve, tmp_path / "fixed", None)
        limits: list[int] = []
        # The worker's cap on all its shards: the 24 the batch's fixed limits allow.
        limiter = AdaptiveLimiter(LimitSettings(max_limit=24), on_limit=limits.append)
        adaptive, adaptive_share = await _run(client, private_serve, tmp_path / "adaptive", limiter)
    finally:
        await asyncio.to_thread(private_serve.deploy)  # back to the shared config
    print(
        f"\nrefused: fixed {fixed.count('503')} of {len(fixed.log)} ({fixed_share:.1%}), adaptive "
        f"{adaptive.count('503')} of {len(adaptive.log)} ({adaptive_share:.1%}); limits {limits[:40]}"
    )
    assert fixed.count("503") > 0, "the overload is real: the fixed limits run into it"
    assert set(o for _, o in adaptive.log) <= {"200", "503"}
    assert adaptive_share < 0.05, "the adaptive limit keeps refusals a small fraction of requests"
    assert adaptive_share < fixed_share / 2
    assert min(limits) < 8, "Serve's pushback cut the limit below where it started"
