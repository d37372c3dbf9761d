"""The worker's ``/metrics``: the project's metrics and the Temporal SDK's, on one HTTP port.

- Project metrics: ``prometheus_client`` objects built from the definitions in
  ``services/metrics.py`` (names, labels, buckets defined there once).
- Temporal SDK metrics: the SDK records into a ``MetricBuffer`` (``Runtime(telemetry=...)``);
  ``TemporalMetricsBridge`` drains it every second and renders the families exactly as the SDK's
  own Prometheus exporter (``PrometheusConfig``) would: same names (``temporal_`` prefix, counters
  without ``_total``), milliseconds, the SDK's default buckets per metric, ``service_name`` label.
  Temporal's SDK dashboards therefore work unchanged; a test compares both side by side.
- ``BatchProgressPoller``: per-batch progress (records, shards, rate) of the BatchInference
  workflows running on the worker's task queue, from Temporal visibility and the ``progress``
  query: facts only the workflow knows, exported without putting metrics in workflow code.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from temporalio import activity
from temporalio.client import Client
from temporalio.runtime import (
    BUFFERED_METRIC_KIND_COUNTER,
    BUFFERED_METRIC_KIND_HISTOGRAM,
    MetricBuffer,
    Runtime,
    TelemetryConfig,
)

from services import constants as c
from services import json_codec
from services import metrics as m

log = logging.getLogger(__name__)


# --- project metrics (prometheus_client, default registry) ------------------------------------


def _build(metric: m.Metric) -> MetricWrapperBase:
    assert metric.source == "worker", metric
    if metric.kind == "counter":
        # prometheus_client appends "_total" itself: give it the bare name.
        return Counter(metric.name, metric.help, metric.labels)
    if metric.kind == "gauge":
        return Gauge(metric.name, metric.help, metric.labels)
    return Histogram(metric.name, metric.help, metric.labels, buckets=metric.buckets)


RECORDS = _build(m.RECORDS)
SERVE_REQUESTS = _build(m.SERVE_REQUESTS)
SERVE_REQUEST_DURATION = _build(m.SERVE_REQUEST_DURATION)
MICRO_BATCH_SIZE = _build(m.MICRO_BATCH_SIZE)
SERVE_IN_FLIGHT = _build(m.SERVE_IN_FLIGHT)
SHARDS_RUNNING = _build(m.SHARDS_RUNNING)
SHARD_ATTEMPTS = _build(m.SHARD_ATTEMPTS)
SHARD_RETRIES = _build(m.SHARD_RETRIES)
BATCHES_FINISHED = _build(m.BATCHES_FINISHED)
BATCHES_RUNNING = _build(m.BATCHES_RUNNING)
BATCH_RECORDS = _build(m.BATCH_RECORDS)
BATCH_SHARDS = _build(m.BATCH_SHARDS)
BATCH_RECORDS_PER_SECOND = _build(m.BATCH_RECORDS_PER_SECOND)
BATCH_ELAPSED = _build(m.BATCH_ELAPSED)


_initialised: set[str] = set()


def init_model(label: str) -> None:
    """Create a model's record and batch-outcome series at 0, so the first failure is an
    increase Prometheus can see (a labelled counter appears only when first used)."""
    if label in _initialised:
        return
    _initialised.add(label)
    RECORDS.labels(label, m.SUCCEEDED, "", "")
    for stage, table in ((m.STAGE_PARSE, m.PARSE_REASONS), (m.STAGE_MODEL, m.MODEL_REASONS)):
        for reason in table.values():
            RECORDS.labels(label, m.FAILED, stage, reason)
    for status in (m.SUCCEEDED_BATCH, m.FAILED, m.CANCELLED_BATCH):
        BATCHES_FINISHED.labels(label, status)


def record_serve_attempt(outcome: str, seconds: float, model: str | None) -> None:
    """``ServeClient``'s ``on_attempt`` hook: one HTTP attempt ended with ``outcome``."""
    label = m.model_label(model)
    SERVE_REQUESTS.labels(label, outcome).inc()
    SERVE_REQUEST_DURATION.labels(label).observe(seconds)


def record_committed(model: str | None, succeeded: int, errors: Iterable[tuple[str, str]]) -> None:
    """A committed part: ``succeeded`` records and (stage, message) per failed record."""
    label = m.model_label(model)
    init_model(label)
    if succeeded:
        RECORDS.labels(label, m.SUCCEEDED, "", "").inc(succeeded)
    counts: dict[tuple[str, str], int] = {}
    for stage, message in errors:
        key = (stage, m.failure_reason(stage, message))
        counts[key] = counts.get(key, 0) + 1
    for (stage, reason), n in counts.items():
        RECORDS.labels(label, m.FAILED, stage, reason).inc(n)


def record_part(model: str | None, succeeded: int, errors: bytes) -> None:
    """A committed part: how many results, and its errors (JSON Lines with ``stage`` and
    ``reason``)."""
    failures = []
    for line in errors.splitlines():
        try:
            error = json_codec.loads(line)
            failures.append((str(error.get("stage", "")), str(error.get("reason", ""))))
        except (ValueError, AttributeError):
            failures.append(("", ""))
    record_committed(model, succeeded, failures)


async def serve_predict(
    serve: Any, model: str | None, body: bytes, count: int
) -> tuple[list[Any], list[Any]]:
    """``serve.predict`` with the micro-batch size and in-flight gauge recorded."""
    label = m.model_label(model)
    MICRO_BATCH_SIZE.labels(label).observe(count)
    with SERVE_IN_FLIGHT.labels(label).track_inprogress():
        return await serve.predict(model, body, count)


def record_batch_finished(summary: dict[str, Any]) -> None:
    BATCHES_FINISHED.labels(m.model_label(summary.get("model")), str(summary.get("status"))).inc()


def shard_activity(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Wraps the shard activity: shards running, retries, and how each attempt ended."""

    @functools.wraps(fn)
    async def wrapper(self: Any, input: Any) -> Any:
        label = m.model_label(getattr(input, "model", None))
        init_model(label)
        if activity.info().attempt > 1:
            SHARD_RETRIES.labels(label).inc()
        outcome = m.SHARD_FAILED
        try:
            with SHARDS_RUNNING.labels(label).track_inprogress():
                result = await fn(self, input)
            outcome = m.SHARD_SUCCEEDED
            return result
        except asyncio.CancelledError:
            outcome = m.SHARD_CANCELLED
            raise
        finally:
            SHARD_ATTEMPTS.labels(label, outcome).inc()

    return wrapper


# --- Temporal SDK metrics bridge ---------------------------------------------------------------

# The SDK's default histogram buckets (milliseconds) per metric, as its Prometheus exporter uses
# them (sdk-core telemetry/metrics.rs `default_buckets_for`); every other histogram gets DEFAULT.
_WF_E2E_MS = (100, 500, 1000, 1500, 2000, 5000, 10_000, 30_000, 60_000, 120_000, 300_000, 600_000)
_WF_E2E_MS += (1_800_000, 3_600_000, 30_600_000, 86_400_000)
_WF_TASK_MS = (1, 10, 20, 50, 100, 200, 500, 1000)
_SCHED_TO_START_MS = (100, 500, 1000, 5000, 10_000, 100_000, 1_000_000)
TEMPORAL_BUCKETS_MS: dict[str, tuple[float, ...]] = {
    "workflow_endtoend_latency": _WF_E2E_MS,
    "workflow_task_execution_latency": _WF_TASK_MS,
    "workflow_task_replay_latency": _WF_TASK_MS,
    "activity_execution_latency": (50, 100, 500, 1000, 5000, 10_000, 60_000),
    "workflow_task_schedule_to_start_latency": _SCHED_TO_START_MS,
    "activity_schedule_to_start_latency": _SCHED_TO_START_MS,
}
TEMPORAL_DEFAULT_BUCKETS_MS = (50, 100, 500, 1000, 2500, 10_000)
TEMPORAL_PREFIX = "temporal_"


def temporal_buckets(name: str) -> tuple[float, ...]:
    return TEMPORAL_BUCKETS_MS.get(name.removeprefix(TEMPORAL_PREFIX), TEMPORAL_DEFAULT_BUCKETS_MS)


def _num(value: float) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _label_value(value: Any) -> str:
    if isinstance(value, bool):
        value = "true" if value else "false"
    return str(value).replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(pairs: tuple[tuple[str, str], ...], extra: str = "") -> str:
    parts = [f'{k}="{v}"' for k, v in pairs]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Family:
    def __init__(self, name: str, kind: int, help: str):
        self.name, self.kind, self.help = name, kind, help
        self.values: dict[tuple[tuple[str, str], ...], Any] = {}
        self.buckets = temporal_buckets(name) if kind == BUFFERED_METRIC_KIND_HISTOGRAM else ()

    def update(self, labels: tuple[tuple[str, str], ...], value: float) -> None:
        if self.kind == BUFFERED_METRIC_KIND_COUNTER:
            self.values[labels] = self.values.get(labels, 0) + value
        elif self.kind == BUFFERED_METRIC_KIND_HISTOGRAM:
            state = self.values.get(labels)
            if state is None:
                state = self.values[labels] = [[0] * len(self.buckets), 0, 0]
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    state[0][i] += 1
            state[1] += value
            state[2] += 1
        else:
            self.values[labels] = value

    def render(self) -> list[str]:
        kind = {BUFFERED_METRIC_KIND_COUNTER: "counter", BUFFERED_METRIC_KIND_HISTOGRAM: "histogram"}.get(
            self.kind, "gauge"
        )
        help_text = self.help.replace("\\", r"\\").replace("\n", r"\n")
        out = [f"# HELP {self.name} {help_text}", f"# TYPE {self.name} {kind}"]
        for labels, value in sorted(self.values.items()):
            if self.kind != BUFFERED_METRIC_KIND_HISTOGRAM:
                out.append(f"{self.name}{_labels(labels)} {_num(value)}")
                continue
            counts, total, n = value
            for bound, count in zip(self.buckets, counts, strict=True):
                le = 'le="' + _num(bound) + '"'
                out.append(f"{self.name}_bucket{_labels(labels, le)} {count}")
            inf = 'le="+Inf"'
            out.append(f"{self.name}_bucket{_labels(labels, inf)} {n}")
            out.append(f"{self.name}_sum{_labels(labels)} {_num(total)}")
            out.append(f"{self.name}_count{_labels(labels)} {n}")
        return out


class TemporalMetricsBridge:
    """Receives the SDK's metric updates from a ``MetricBuffer`` and renders them for Prometheus."""

    def __init__(self, buffer_size: int = 200_000, drain_interval_s: float = 1.0):
        self.buffer = MetricBuffer(buffer_size)
        self._families: dict[str, _Family] = {}
        self._lock = threading.Lock()
        self._interval = drain_interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runtime: Runtime | None = None

    def create_runtime(self) -> Runtime:
        """A Temporal runtime whose metrics go to this bridge; connect clients with it."""
        if self.runtime is None:
            self.runtime = Runtime(telemetry=TelemetryConfig(metrics=self.buffer))
            self._thread = threading.Thread(target=self._drain_loop, name="temporal-metrics", daemon=True)
            self._thread.start()
        return self.runtime

    def _drain_loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.drain()
            except Exception:  # never let metrics kill the worker
                log.exception("draining Temporal SDK metrics failed")

    def drain(self) -> None:
        if self.runtime is None:
            return
        with self._lock:
            for update in self.buffer.retrieve_updates():
                metric = update.metric
                family = self._families.get(metric.name)
                if family is None:
                    family = self._families[metric.name] = _Family(
                        metric.name, metric.kind, metric.description or metric.name
                    )
                labels = tuple(sorted((k, _label_value(v)) for k, v in update.attributes.items()))
                family.update(labels, update.value)

    def render(self) -> str:
        self.drain()
        with self._lock:
            lines = [line for name in sorted(self._families) for line in self._families[name].render()]
        return "\n".join(lines) + "\n" if lines else ""

    def close(self) -> None:
        self._stop.set()


# --- the HTTP endpoint ---------------------------------------------------------------------------

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsServer:
    """``GET /metrics`` (any path answers, as the chart's probes expect): the project's metrics,
    Python process metrics and, with a bridge, the Temporal SDK's."""

    def __init__(self, host: str, port: int, bridge: TemporalMetricsBridge | None = None):
        self.bridge = bridge
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = server.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds: no access log

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.host, self.port = host, self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def render(self) -> str:
        text = generate_latest(REGISTRY).decode()
        if self.bridge is not None:
            text += self.bridge.render()
        return text

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self.bridge is not None:
            self.bridge.close()


# --- per-batch progress from Temporal ----------------------------------------------------------


class BatchProgressPoller:
    """Every ``interval_s``: count the running BatchInference workflows on ``task_queue`` and ask
    each for its ``progress``; export them as gauges (series of finished batches are removed)."""

    def __init__(
        self, client: Client, task_queue: str, interval_s: float = 15.0, query_timeout_s: float = 5.0
    ):
        self.client, self.task_queue = client, task_queue
        self.interval_s, self.query_timeout_s = interval_s, query_timeout_s
        self._known: set[str] = set()

    @property
    def visibility_query(self) -> str:
        return (
            f"WorkflowType = '{c.WORKFLOW_NAME}' AND ExecutionStatus = 'Running' "
            f"AND TaskQueue = '{self.task_queue}'"
        )

    async def run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Temporal unreachable for a moment: keep the last values
                log.warning("batch progress poll failed: %s", exc)
            await asyncio.sleep(self.interval_s)

    async def poll_once(self) -> None:
        from services.worker.models import Progress

        ids = [wf.id async for wf in self.client.list_workflows(self.visibility_query, limit=1000)]
        BATCHES_RUNNING.set(len(ids))
        seen: set[str] = set()
        for workflow_id in ids:
            handle = self.client.get_workflow_handle(workflow_id)
            try:
                async with asyncio.timeout(self.query_timeout_s):
                    p = await handle.query(c.PROGRESS_QUERY, result_type=Progress)
            except Exception as exc:
                log.debug("progress query of %s failed: %s", workflow_id, exc)
                if workflow_id in self._known:
                    seen.add(workflow_id)  # keep its last values
                continue
            seen.add(workflow_id)
            for state, value in zip(
                m.BATCH_RECORD_STATES, (p.total_records, p.succeeded, p.failed), strict=True
            ):
                BATCH_RECORDS.labels(workflow_id, state).set(value)
            for state, value in zip(
                m.BATCH_SHARD_STATES, (p.shards_total, p.shards_done, p.shards_running), strict=True
            ):
                BATCH_SHARDS.labels(workflow_id, state).set(value)
            BATCH_RECORDS_PER_SECOND.labels(workflow_id).set(p.records_per_second)
            BATCH_ELAPSED.labels(workflow_id).set(p.elapsed_s)
        for gone in self._known - seen:
            self._forget(gone)
        self._known = seen

    @staticmethod
    def _forget(workflow_id: str) -> None:
        for metric, states in ((BATCH_RECORDS, m.BATCH_RECORD_STATES), (BATCH_SHARDS, m.BATCH_SHARD_STATES)):
            for state in states:
                with contextlib.suppress(KeyError):
                    metric.remove(workflow_id, state)
        for metric in (BATCH_RECORDS_PER_SECOND, BATCH_ELAPSED):
            with contextlib.suppress(KeyError):
                metric.remove(workflow_id)
