"""A real Prometheus scraping a real worker process and the session's real Ray Serve while a real
batch runs; then EVERY query of EVERY dashboard panel and every alert expression is evaluated
through Prometheus's HTTP API. All must parse and evaluate; the throughput, latency and error
panels (``must_have_data`` in observability/generate.py) must return series; every metric a
dashboard or rule reads must have been exported, bar a few that need a fault to appear."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client, ScheduleActionExecutionStartWorkflow, WorkflowFailureError

from services import constants as c
from services import metrics as m
from services.local.processes import free_port
from services.local.prometheus import LocalPrometheus, prometheus_config
from services.local.ray_serve import LocalRayServe
from services.local.temporal_dev import TemporalDevServer
from services.worker.contracts import BatchInferenceInput, Tuning
from tests.helpers.batches import execute_batch, start_batch
from tests.helpers.processes import serving_process
from tests.helpers.promql import metric_names, must_have_panels, panel_queries, rules
from tests.helpers.records import corrupt_parquet_page, iris_records, write_jsonl

pytestmark = pytest.mark.integration

# Exported only when something goes wrong or waits long: the unit tests prove the code exports
# them (worker registry, SDK binary, Ray source); this run does not provoke them.
EVENT_ONLY = {
    m.SHARD_RETRIES.prom: "a shard attempt after a crash or timeout",
    m.TEMPORAL_WF_POLL_EMPTY.prom: "a workflow long poll that times out (~70 s idle)",
    m.TEMPORAL_ACT_POLL_NO_TASK.prom: "an activity long poll that times out (~70 s idle)",
    m.TEMPORAL_WF_TASK_EXECUTION_FAILED.prom: "a workflow task that raises (a bug)",
    m.TEMPORAL_REQUEST_FAILURE.prom: "a failed call to the Temporal service",
    m.TEMPORAL_WF_CONTINUE_AS_NEW.prom: "a batch long enough to continue as new",
    m.RAY_DEPLOYMENT_ERRORS.prom: "an exception in deployment code",
}
NAMES_RE = "batch_inference_.*|ray_batch_inference_.*|temporal_.*|ray_serve_.*|up"


class Prom:
    def __init__(self, url: str):
        self.url = url

    def query(self, expr: str) -> dict:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=30)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        return body["data"]

    def series(self, expr: str) -> list[dict]:
        return self.query(expr)["result"]

    def wait(self, expr: str, timeout_s: float) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if result := self.series(expr):
                return result
            time.sleep(1)
        raise AssertionError(f"no data for {expr} within {timeout_s:.0f}s")


@pytest.fixture(scope="module")
def worker(
    temporal_server: TemporalDevServer, serve_stack: LocalRayServe, serve_token_file: Path, tmp_path_factory
):
    """``python -m services.worker`` as in the image, metrics on a free loopback port."""
    port, queue = free_port(), f"obs-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ)
    env.update(
        {
            c.ENV_TEMPORAL_ADDRESS: temporal_server.address,
            c.ENV_TEMPORAL_TASK_QUEUE: queue,
            c.ENV_SERVE_URL: serve_stack.url,
            c.ENV_SERVE_TOKEN_FILE: str(serve_token_file),
            c.ENV_WORKER_METRICS_HOST: "127.0.0.1",
            c.ENV_WORKER_METRICS_PORT: str(port),
            c.ENV_WORKER_BATCH_METRICS_INTERVAL_S: "1",
        }
    )
    env.pop(c.ENV_SERVE_TOKEN, None)
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with serving_process([sys.executable, "-m", "services.worker"], env, log, port, stop_timeout_s=40):
        yield queue, port


@pytest.fixture(scope="module")
def exporter(temporal_server: TemporalDevServer, worker, tmp_path_factory):
    """``batch-inference progress-exporter`` as in the chart: the one source of the per-batch
    gauges (the worker exports none), from the progress batches publish."""
    queue, _ = worker
    port = free_port()
    env = dict(os.environ)
    env[c.ENV_TEMPORAL_ADDRESS] = temporal_server.address
    log = tmp_path_factory.mktemp("exporter") / "exporter.log"
    cmd = [sys.executable, "-m", "services.cli", "progress-exporter", "--task-queue", queue]
    cmd += ["--interval", "1", "--host", "127.0.0.1", "--port", str(port), "--no-query-fallback"]
    with serving_process(cmd, env, log, port, stop_timeout_s=20):
        yield port


@pytest.fixture(scope="module")
def prom(worker, exporter, serve_stack: LocalRayServe, tmp_path_factory) -> Prom:
    if not shutil.which("prometheus"):
        if os.environ.get("CI"):
            pytest.fail("prometheus missing: .ci/run installs Debian's prometheus package")
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    _, port = worker
    config = prometheus_config(
        [f"127.0.0.1:{port}"],
        [f"127.0.0.1:{serve_stack.metrics_port}"],
        scrape_interval="1s",
        progress_targets=[f"127.0.0.1:{exporter}"],
    )
    server = LocalPrometheus(tmp_path_factory.mktemp("prometheus"), config, port=free_port()).start()
    try:
        p = Prom(server.url)
        p.wait(f'up{{job="{m.WORKER_JOB}"}} == 1', 60)
        p.wait(f'up{{job="{m.RAY_JOB}"}} == 1', 60)
        p.wait(f'up{{job="{m.PROGRESS_JOB}"}} == 1', 60)
        yield p
    finally:
        server.stop()


def _input(path: Path) -> Path:
    """6,000 iris records with bad ones of each kind: parse errors and model rejections."""
    records: list = iris_records(6000, prefix="obs")
    for i in range(0, 6000, 500):
        records[i] = '{"id": "broken", '  # malformed JSON
        records[i + 1] = {"id": f"bad-{i}", "features": "not four numbers"}  # the model rejects it
    records.append({"features": [1, 2, 3, 4]})  # no id
    return write_jsonl(path, records)


async def test_every_dashboard_query_and_alert_on_a_real_prometheus(
    prom: Prom, worker, client: Client, serve_stack: LocalRayServe, tmp_path: Path
) -> None:
    queue, _ = worker
    batch = BatchInferenceInput(
        input_uri=str(_input(tmp_path / "in.jsonl")),
        output_uri=str(tmp_path / "out"),
        model="iris",
        max_error_ratio=0.5,
        tuning=Tuning(
            micro_batch_size=16,
            max_in_flight=2,
            max_concurrent_shards=2,
            shard_size=1000,
            checkpoint_every=200,
            # The batch runs for seconds: it publishes every change, as the exporter polls (1 s).
            progress_every_s=0,
        ),
    )
    handle = await start_batch(client, queue, batch, "obs")
    # Per-batch progress is exported while the batch runs: by the exporter only (no query: it
    # runs with --no-query-fallback), from the progress the batch published.
    progress = await asyncio.to_thread(
        prom.wait, f'{m.BATCH_RECORDS.prom}{{{m.WORKFLOW_ID}="{handle.id}", {m.STATE}="total"}} == 6001', 60
    )
    assert float(progress[0]["value"][1]) == 6001
    assert {s["metric"]["job"] for s in progress} == {m.PROGRESS_JOB}
    running = await asyncio.to_thread(
        prom.wait, f'{m.BATCHES_RUNNING.prom}{{job="{m.PROGRESS_JOB}"}} >= 1', 30
    )
    assert float(running[0]["value"][1]) >= 1
    # Once a shard is done, every dashboard panel reading a per-batch gauge has data.
    await asyncio.to_thread(
        prom.wait, f'{m.BATCH_SHARDS.prom}{{{m.WORKFLOW_ID}="{handle.id}", {m.STATE}="done"}} >= 1', 90
    )
    per_batch = {
        x.prom for x in (m.BATCH_RECORDS, m.BATCH_SHARDS, m.BATCH_RECORDS_PER_SECOND, m.BATCH_ELAPSED)
    }
    panels = [q for q in panel_queries() if per_batch & set(metric_names(q.evaluable))]
    assert panels, "no dashboard panel reads the per-batch gauges"
    for query in panels:
        await asyncio.to_thread(prom.wait, query.evaluable, 30)
    result = await handle.result()
    assert result.status == "completed" and result.failed == 25 and result.succeeded == 5976
    # The same batch started again on its folder resumes every shard from its final files, and a
    # retry re-runs its 25 failed records (all fail again with iris): the resumed and retried
    # counters get real increments, not only their zero series.
    resumed = await execute_batch(client, queue, batch, "obs-resume")
    assert resumed.status == "completed" and resumed.resumed_records == 6001
    retried = await execute_batch(
        client,
        queue,
        BatchInferenceInput(retry_of=batch.output_uri, model="iris", max_error_ratio=1.0),
        "obs-retry",
    )
    assert retried.status == "completed" and (retried.succeeded, retried.failed) == (0, 25)
    # Batches that fail in planning (input not found: a local activity) and in a shard (a
    # Parquet data page that does not decode: the plan reads only footers and ids), and a request
    # without a token: failures of both kinds and 401s.
    failing = [
        BatchInferenceInput(input_uri=str(tmp_path / "missing.jsonl"), output_uri=str(tmp_path / "out2")),
        BatchInferenceInput(
            input_uri=str(corrupt_parquet_page(tmp_path / "corrupt.parquet")),
            output_uri=str(tmp_path / "out3"), model="iris", input_columns=["features"],
        ),
    ]  # fmt: skip
    for bad in failing:
        with pytest.raises(WorkflowFailureError):
            await client.execute_workflow(
                c.WORKFLOW_NAME, bad, id=f"obs-fail-{uuid.uuid4().hex[:8]}", task_queue=queue
            )
    denied = await asyncio.to_thread(
        httpx.post, f"{serve_stack.url}/models/iris/inference", json={"inputs": []}
    )
    assert denied.status_code == 401
    # A schedule whose run fails (no input folder for its date): the schedule panels and
    # BatchInferenceScheduledRunFailed get data from the worker's reading of the schedule.
    schedule_id = await _failed_scheduled_run(client, queue, tmp_path)
    try:
        await asyncio.to_thread(_check_everything, prom, tmp_path)
        firing = await asyncio.to_thread(
            prom.wait, 'ALERTS{alertname="BatchInferenceScheduledRunFailed", alertstate="firing"}', 30
        )
        assert {a["metric"][m.SCHEDULE_ID] for a in firing} == {schedule_id}
    finally:
        await client.get_schedule_handle(schedule_id).delete()


async def _failed_scheduled_run(client: Client, queue: str, tmp_path: Path) -> str:
    from services import schedules

    config = schedules.checked(
        {
            "id": f"obs-{uuid.uuid4().hex[:8]}",
            "cron": "0 0 1 1 *",  # runs only when triggered here
            "input": f"{tmp_path}/events/{{date}}/",
            "output": f"{tmp_path}/scheduled/{{date}}",
            "taskQueue": queue,
        }
    )
    await schedules.create_or_update(client, config, update=False)
    handle = client.get_schedule_handle(config.id)
    await handle.trigger()
    for _ in range(100):
        if recent := (await handle.describe()).info.recent_actions:
            break
        await asyncio.sleep(0.1)
    run = recent[0].action
    assert isinstance(run, ScheduleActionExecutionStartWorkflow)
    with pytest.raises(WorkflowFailureError):  # InputNotFound
        await client.get_workflow_handle(run.workflow_id).result()
    return config.id


def _check_everything(prom: Prom, tmp_path: Path) -> None:
    # Ray reports custom metrics every few seconds: wait until the slowest ones are in.
    prom.wait(f"{m.AUTH_FAILURES.prom}", 90)
    prom.wait(f'{m.RAY_HTTP_ERROR_REQUESTS.prom}{{error_code="401"}}', 60)
    prom.wait(f'{m.BATCHES_FINISHED.prom}{{{m.STATUS}="completed"}} > 0', 30)
    prom.wait(f"{m.SCHEDULE_LAST_RUN_FAILED.prom} == 1", 30)  # the workers read schedules every 1 s here
    prom.wait(f'sum({m.RETRIED_RECORDS.prom}{{{m.OUTCOME}="{m.RETRY_FAILED}"}}) == 25', 30)
    prom.wait(f"sum({m.RESUMED_RECORDS.prom}) >= 6001", 30)
    time.sleep(3)

    must = must_have_panels()
    assert len(must) >= 25
    empty_required, evaluated = [], 0
    by_panel: dict[tuple[str, str], int] = {}
    for query in panel_queries(must):
        result = prom.series(query.evaluable)  # parses and evaluates, or fails here
        evaluated += 1
        by_panel[(query.dashboard, query.panel)] = by_panel.get((query.dashboard, query.panel), 0) + len(
            result
        )
    for panel in must:
        if not by_panel.get(panel):
            empty_required.append(panel)
    assert not empty_required, f"panels without data after a real batch: {empty_required}"
    assert evaluated >= 40

    # Values, not just series: records flowed, latency was measured, errors were counted.
    throughput = prom.series(f"sum(increase({m.RECORDS.prom}[10m]))")
    assert float(throughput[0]["value"][1]) > 1000
    assert prom.series(
        f"histogram_quantile(0.5, sum by (le) (rate({m.SERVE_REQUEST_DURATION.bucket}[10m]))) > 0"
    )
    reasons = {s["metric"][m.REASON] for s in prom.series(f'{m.RECORDS.prom}{{{m.OUTCOME}="failed"}} > 0')}
    assert reasons == {"malformed_json", "invalid_input", "missing_id"}
    fixed = prom.series(f'sum({m.RETRIED_RECORDS.prom}{{{m.OUTCOME}="{m.RETRY_FIXED}"}})')
    assert float(fixed[0]["value"][1]) == 0  # the series is there at 0: nothing the retry could fix

    # Every alert expression evaluates, and Prometheus's rule manager evaluated each without error.
    for rule in rules():
        prom.query(rule["expr"])
    loaded = [r for g in httpx.get(f"{prom.url}/api/v1/rules").json()["data"]["groups"] for r in g["rules"]]
    assert {r["name"] for r in loaded} == {r["alert"] for r in rules()}
    assert all(r["health"] == "ok" for r in loaded), [(r["name"], r.get("lastError")) for r in loaded]

    # Every metric a dashboard or rule reads was exported by this run (or needs a fault to be).
    used = {n for q in panel_queries() for n in metric_names(q.evaluable)}
    used |= {n for r in rules() for n in metric_names(r["expr"])}
    seen = {
        s["metric"]["__name__"]
        for s in prom.series(f'group by (__name__) (last_over_time({{__name__=~"{NAMES_RE}"}}[15m]))')
    }
    missing = used - seen - set(EVENT_ONLY)
    assert not missing, f"read by dashboards/rules but exported by nothing in a real run: {sorted(missing)}"

    # One real sample per defined metric, for the record (docs/observability.md lists them).
    samples = {}
    for metric in m.ALL_METRICS:
        name = metric.count if metric.kind == "histogram" else metric.prom
        found = prom.series(f"topk(1, last_over_time({name}[15m]))")
        if found:
            labels = {
                k: v
                for k, v in found[0]["metric"].items()
                if k in (*metric.labels, "le", "deployment", "code")
            }
            samples[metric.prom] = {"series": name, "labels": labels, "value": found[0]["value"][1]}
    out = Path(os.environ.get("OBS_SAMPLES_FILE", tmp_path / "samples.json"))
    out.write_text(json.dumps(samples, indent=1, sort_keys=True))
    print(f"\nmetric samples ({len(samples)} of {len(m.ALL_METRICS)} defined): {out}")
