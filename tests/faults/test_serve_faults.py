"""Ray Serve failing under a running batch: overloaded (503), then stopped and brought back.

Both run on the fault tests' private local Ray Serve (``tests/faults/conftest.py``; stopping the
session's Serve would break other tests), with an in-process worker whose Serve client reports
every HTTP attempt through its ``on_attempt`` hook.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from services import constants as c
from services import metrics as m
from services.errors import Failure
from services.local.processes import free_port
from services.local.ray_serve import LocalRayServe, ensure_token
from services.worker.contracts import Progress
from services.worker.serve_client import RetrySettings, ServeClient, TokenSource
from services.worker.telemetry import BatchProgressPoller
from tests.helpers.batches import assert_exactly_once, echo_batch, execute_batch, start_batch
from tests.helpers.private_serve import crash
from tests.helpers.proxy import CountingProxy
from tests.helpers.workers import Attempts, outage_batch, start_until_a_quarter_done, worker_on

pytestmark = [pytest.mark.faults, pytest.mark.integration]


async def test_overloaded_serve_answers_503_and_the_batch_completes_without_errors(
    client, private_serve: LocalRayServe, tmp_path: Path
):
    retry_after = 2
    await asyncio.to_thread(private_serve.deploy, private_serve.overloaded_config("echo", 2, 2, retry_after))
    try:
        total = 3_000
        records, output, batch = echo_batch(
            tmp_path,
            total,
            "o",
            shard_size=1_000,
            checkpoint_every=250,
            micro_batch_size=8,
            max_in_flight=8,
            max_concurrent_shards=3,
        )
        attempts = Attempts()
        started = time.monotonic()
        with CountingProxy(private_serve.url) as proxy:
            async with worker_on(client, proxy.url, private_serve.token_file, attempts) as queue:
                result = await execute_batch(client, queue, batch, "overload")
        took = time.monotonic() - started
        statuses = Counter(status for _, _, status, _ in proxy.log)
        # Gaps between a 503 and the next attempt of the same micro-batch.
        last_503: dict[str, float] = {}
        gaps = []
        for t, digest, status, _ in sorted(proxy.log):
            if digest in last_503:
                gaps.append(t - last_503.pop(digest))
            if status == 503:
                last_503[digest] = t
        print(
            f"\noverloaded batch: {dict(statuses)} in {took:.1f}s ({len(proxy.log) / took:.1f} requests/s); "
            f"{proxy.records - total} records re-sent; shortest wait after a 503: {min(gaps):.2f}s"
        )
        assert statuses[503] > 0, "Serve pushed back"
        assert set(statuses) <= {200, 503}
        assert {ra for _, _, status, ra in proxy.log if status == 503} == {str(retry_after)}
        assert gaps and min(gaps) >= retry_after - 0.05, "the client waited as long as Retry-After said"
        assert_exactly_once(output, [r["id"] for r in records], result)
        assert result.failed == 0
    finally:
        await asyncio.to_thread(private_serve.deploy)  # back to the shared config


async def test_serve_killed_mid_batch_then_back_no_retry_storm(
    client, private_serve: LocalRayServe, tmp_path: Path
):
    records, output, batch = outage_batch(tmp_path, "d")
    senders = batch.tuning.max_in_flight * batch.tuning.max_concurrent_shards
    attempts = Attempts()
    async with worker_on(client, private_serve.url, private_serve.token_file, attempts) as queue:
        workflow_id = f"serve-down-{uuid.uuid4().hex[:8]}"
        handle = await start_until_a_quarter_done(client, batch, queue, attempts, workflow_id)
        stopping = time.monotonic()
        await asyncio.to_thread(crash, private_serve)
        stopped = time.monotonic()
        await asyncio.sleep(5)  # down
        restarting = time.monotonic()
        await asyncio.to_thread(private_serve.start)
        back = time.monotonic()
        result = await handle.result()
    failures = [(t, o) for t, o in attempts.log if stopping <= t and o != "200"]
    first_failure = failures[0][0]
    first_success = min(t for t, o in attempts.log if t > first_failure and o == "200")
    down_s = first_success - first_failure
    during = attempts.count(since=first_failure, until=first_success)
    per_second = Counter(int(t - first_failure) for t, _ in failures if t < first_success)
    print(
        f"\nServe killed in {stopped - stopping:.1f}s, down 5s, start took {back - restarting:.1f}s; "
        f"first failed attempt to first success {down_s:.1f}s: {during} attempts "
        f"({during / down_s:.2f}/s; busiest second {max(per_second.values())}) from {senders} senders; "
        f"outcomes {dict(Counter(o for _, o in failures))}"
    )
    assert_exactly_once(output, [r["id"] for r in records], result)
    assert during / down_s <= senders / 2, "backoff: a few attempts per second, not a retry storm"
    assert max(per_second.values()) <= 3 * senders


async def test_a_route_missing_while_serve_deploys_is_retried_but_an_unknown_model_is_not():
    """Ray Serve's proxy answers a plain-text 404 while the application is still deploying (seen
    in the test above after a restart); the application's own 404 (unknown model) is JSON."""
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path.startswith("/models/gpt9"):
            return httpx.Response(404, json={"detail": "unknown model 'gpt9'; available: echo, iris"})
        if len(calls) < 3:
            return httpx.Response(
                404, text="Path '/models/echo/inference' not found. Ping http://.../-/routes"
            )
        return httpx.Response(200, json={"predictions": [1], "errors": [None]})

    serve = ServeClient(
        "http://serve.test",
        TokenSource("t"),
        retry=RetrySettings(max_attempts=4, initial_s=0.01, max_s=0.02),
        transport=httpx.MockTransport(handler),
    )
    assert await serve.predict("echo", ServeClient.encode([1]), 1) == ([1], [None])
    assert len(calls) == 3
    with pytest.raises(ApplicationError) as err:
        await serve.predict("gpt9", ServeClient.encode([1]), 1)
    assert err.value.non_retryable and "unknown model 'gpt9'" in str(err.value)
    assert len(calls) == 4


# Today's retry budget, shortened: 3 in-activity attempts (about a second) and 2 activity
# attempts per shard; an outage longer than that failed the batch before issue 20.
SHORT_RETRIES = RetrySettings(max_attempts=3, initial_s=0.2, max_s=0.5)
SHORT_OUTAGE_TUNING = dict(shard_max_attempts=2, serve_wait_initial_s=1, serve_wait_max_s=4)


async def _progress(handle) -> Progress:
    return await handle.query(c.PROGRESS_QUERY, result_type=Progress)


async def test_serve_down_past_the_retry_budget_pauses_the_batch_which_resumes_when_serve_is_back(
    client, private_serve: LocalRayServe, tmp_path: Path
):
    records, output, batch = outage_batch(tmp_path, "p", **SHORT_OUTAGE_TUNING)
    attempts = Attempts()
    workflow_id = f"serve-outage-{uuid.uuid4().hex[:8]}"
    async with worker_on(
        client, private_serve.url, private_serve.token_file, attempts, SHORT_RETRIES
    ) as queue:
        handle = await start_until_a_quarter_done(client, batch, queue, attempts, workflow_id)
        crashed = time.monotonic()
        await asyncio.to_thread(crash, private_serve)
        # Waiting, not failing: the progress query says since when and how many attempts.
        deadline = time.monotonic() + 60
        while (p := await _progress(handle)).status != "waiting_for_serve":
            assert time.monotonic() < deadline, f"the batch never waited for Serve: {p}"
            await asyncio.sleep(0.2)
        assert p.waiting_for_serve_since is not None and p.serve_attempts >= 1
        # Down well past the shortened retry budget (about 4 s): 25 s.
        await asyncio.sleep(max(0.0, 25 - (time.monotonic() - crashed)))
        during = await _progress(handle)
        assert during.status == "waiting_for_serve", during
        assert during.waiting_for_serve_since == p.waiting_for_serve_since, "one outage, one start"
        assert during.serve_attempts > batch.tuning.shard_max_attempts, "more attempts than a shard's budget"
        assert "waiting for Serve since" in (during.serve_wait_line() or "")
        # And the worker's metric says so (the exporter that queries the running batches).
        poller = BatchProgressPoller(client, queue)
        await poller.poll_once()
        waited = REGISTRY.get_sample_value(m.BATCH_WAITING_FOR_SERVE.prom, {m.WORKFLOW_ID: workflow_id})
        assert waited is not None and waited >= 15, waited
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        restarting = time.monotonic()
        await asyncio.to_thread(private_serve.start)
        back = time.monotonic()
        result = await handle.result()
        await poller.poll_once()  # the finished batch's series are removed
    first_failure = min(t for t, o in attempts.log if t >= crashed and o != "200")
    first_success = min(t for t, o in attempts.log if t > first_failure and o == "200")
    print(
        f"\nServe down {first_success - first_failure:.1f}s (its start took {back - restarting:.1f}s); "
        f"progress during: {during.serve_wait_line()}; {result.resumed_records} records resumed from "
        "checkpoints"
    )
    assert_exactly_once(output, [r["id"] for r in records], result)
    assert result.failed == 0
    assert REGISTRY.get_sample_value(m.BATCH_WAITING_FOR_SERVE.prom, {m.WORKFLOW_ID: workflow_id}) is None


async def test_serve_down_past_max_serve_outage_fails_the_batch_saying_so(client, tmp_path: Path):
    """Nothing listens at the worker's Serve URL for the whole batch: past max_serve_outage_s it
    fails with ServeOutageTooLong, naming how long Serve was down and what to check."""
    _, output, batch = echo_batch(
        tmp_path,
        400,
        "x",
        shard_size=200,
        max_concurrent_shards=2,
        max_serve_outage_s=12,
        **SHORT_OUTAGE_TUNING,
    )
    nowhere = f"http://127.0.0.1:{free_port()}"
    token_file = tmp_path / "serve-token"
    ensure_token(token_file)
    async with worker_on(client, nowhere, token_file, Attempts(), SHORT_RETRIES) as queue:
        handle = await start_batch(client, queue, batch, "serve-gone")
        with pytest.raises(WorkflowFailureError) as err:
            await handle.result()
    cause = err.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == Failure.SERVE_OUTAGE_TOO_LONG
    message = str(cause)
    assert re.search(
        r"Serve was unavailable for \d+s \(since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, \d+ attempts", message
    )
    assert f"cannot reach Serve at {nowhere}" in message and "max_serve_outage_s=12" in message
    assert "SERVE_URL" in message and "batch-inference resume" in message
    summary = json.loads((output / c.SUMMARY_FILE).read_text())
    assert summary["status"] == "failed"
