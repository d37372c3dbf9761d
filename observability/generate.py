"""Generate the Grafana dashboards and the Prometheus rules from services/metrics.py.

    .venv/bin/python observability/generate.py          # write them
    .venv/bin/python observability/generate.py --check  # exit 1 if a committed file is stale

Written into the Helm chart (``charts/batch-inference/files/observability/``, the only place
Helm's ``.Files.Get`` can read) and linked from ``observability/`` for plain Grafana/Prometheus
users: one copy of each file. Dashboards are built with Grafana's own ``grafana-foundation-sdk``
(Grafana 10+ JSON); every metric name comes from ``services/metrics.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from services import constants as c  # noqa: E402
from services import metrics as m  # noqa: E402

CHART_FILES = REPO_ROOT / "charts" / "batch-inference" / "files" / "observability"
DASHBOARDS_DIR = CHART_FILES / "dashboards"
RULES_FILE = CHART_FILES / "prometheus-rules.yaml"
JOBS_FILE = CHART_FILES / "jobs.yaml"  # Prometheus job names for the chart's monitors
RUNBOOKS = "observability/runbooks.md"  # repo-relative; the chart can prefix a base URL

RATE = "$__rate_interval"
DS = "${datasource}"


# --- panels, described as data first (the tests read these too) --------------------------------


@dataclass
class Query:
    expr: str
    legend: str = ""


@dataclass
class PanelSpec:
    title: str
    description: str
    unit: str
    queries: list[Query]
    kind: str = "timeseries"  # timeseries | stat | bargauge | table
    must_have_data: bool = False  # a real batch must make this panel non-empty (tested)
    width: int = 12
    height: int = 8
    stack: bool = False
    minimum: float | None = 0
    maximum: float | None = None


@dataclass
class DashboardSpec:
    uid: str
    title: str
    description: str
    file: str
    variables: list[tuple[str, str, str]] = field(default_factory=list)  # (name, label, query)
    panels: list[PanelSpec] = field(default_factory=list)


def q(expr: str, legend: str = "") -> Query:
    return Query(" ".join(expr.split()), legend)


def rate(name: str, selector: str) -> str:
    return f"rate({name}{{{selector}}}[{RATE}])"


def quantiles(bucket: str, selector: str, by: str = "", legend_prefix: str = "") -> list[Query]:
    group = f"le, {by}" if by else "le"
    return [
        q(
            f"histogram_quantile({p}, sum by ({group}) (rate({bucket}{{{selector}}}[{RATE}])))",
            f"{legend_prefix}p{int(p * 100)}" + (f" {{{{{by}}}}}" if by else ""),
        )
        for p in (0.5, 0.95, 0.99)
    ]


def batch_dashboard() -> DashboardSpec:
    model = f'{m.MODEL}=~"$model"'
    rec = m.RECORDS.prom
    failed = f'{m.OUTCOME}="{m.FAILED}"'
    per_batch = {
        s: f'max by ({m.WORKFLOW_ID}) ({m.BATCH_RECORDS.prom}{{{m.STATE}="{s}"}})'
        for s in m.BATCH_RECORD_STATES
    }
    done = f"({per_batch['succeeded']} + {per_batch['failed']})"
    return DashboardSpec(
        uid="batch-inference",
        title="Batch inference",
        description="Batches through Temporal workers and Ray Serve: throughput, errors, progress, "
        "Serve calls.",
        file="batch-inference.json",
        variables=[("model", "Model", f"label_values({rec}, {m.MODEL})")],
        panels=[
            PanelSpec(
                "Throughput",
                "Records committed per second by all workers, by outcome (succeeded/failed). "
                f"Source: {rec} (counted when a shard part is committed).",
                "suffix:rec/s",
                [q(f"sum by ({m.OUTCOME}) (rate({rec}{{{model}}}[{RATE}]))", f"{{{{{m.OUTCOME}}}}}")],
                must_have_data=True,
                stack=True,
            ),
            PanelSpec(
                "Errors by reason",
                "Failed records per second by stage (parse/duplicate/model) and reason. The records "
                "themselves, with line numbers, are in the batch's errors/ folder.",
                "suffix:rec/s",
                [
                    q(
                        f"sum by ({m.STAGE}, {m.REASON}) (rate({rec}{{{failed}, {model}}}[{RATE}]))",
                        f"{{{{{m.STAGE}}}}}: {{{{{m.REASON}}}}}",
                    )
                ],
                must_have_data=True,
                stack=True,
            ),
            PanelSpec(
                "Error ratio",
                "Failed records / all records committed, per model. A batch fails when its own ratio "
                "exceeds its max_error_ratio (default 0).",
                "percentunit",
                [
                    q(
                        f"sum by ({m.MODEL}) (rate({rec}{{{failed}, {model}}}[{RATE}])) / "
                        f"sum by ({m.MODEL}) (rate({rec}{{{model}}}[{RATE}]))",
                        f"{{{{{m.MODEL}}}}}",
                    )
                ],
                must_have_data=True,
            ),
            PanelSpec(
                "Batches running",
                "BatchInference workflows running on the workers' task queue (Temporal visibility).",
                "short",
                [q(f"max({m.BATCHES_RUNNING.prom})", "running")],
                kind="stat",
                width=6,
            ),
            PanelSpec(
                "Batches finished",
                "File batches that ended in the selected time range, by status (completed/failed/cancelled).",
                "short",
                [
                    q(
                        f"sum by ({m.STATUS}) (increase({m.BATCHES_FINISHED.prom}{{{model}}}[$__range]))",
                        f"{{{{{m.STATUS}}}}}",
                    )
                ],
                kind="stat",
                width=6,
                must_have_data=True,
            ),
            PanelSpec(
                "Progress per batch",
                "Records done (succeeded + failed) / total, per running batch (workflow id), from the "
                "workflow's progress query; it moves when a shard finishes.",
                "percentunit",
                [q(f"{done} / {per_batch['total']}", f"{{{{{m.WORKFLOW_ID}}}}}")],
                kind="bargauge",
                maximum=1,
            ),
            PanelSpec(
                "ETA per batch",
                "Seconds until each running batch finishes at its average rate so far: records left / "
                "records per second since it started.",
                "s",
                [
                    q(
                        f"({per_batch['total']} - {done}) / "
                        f"max by ({m.WORKFLOW_ID}) ({m.BATCH_RECORDS_PER_SECOND.prom} > 0)",
                        f"{{{{{m.WORKFLOW_ID}}}}}",
                    )
                ],
                kind="bargauge",
            ),
            PanelSpec(
                "Waiting for Serve",
                "Per running batch that waits for Serve: seconds since it found Serve unavailable "
                "(its shards gave up their in-activity retries). The batch checks Serve with backoff "
                "and resumes by itself when Serve answers; past tuning.max_serve_outage_s it fails. "
                f"Source: {m.BATCH_WAITING_FOR_SERVE.prom}.",
                "s",
                [
                    q(
                        f"max by ({m.WORKFLOW_ID}) ({m.BATCH_WAITING_FOR_SERVE.prom}) > 0",
                        f"{{{{{m.WORKFLOW_ID}}}}}",
                    )
                ],
            ),
            PanelSpec(
                "Serve call latency",
                "Latency of one HTTP request from a worker to Serve (p50/p95/p99), retries counted as "
                "separate requests.",
                "s",
                quantiles(m.SERVE_REQUEST_DURATION.bucket, model),
                must_have_data=True,
            ),
            PanelSpec(
                "Serve responses by status",
                "Requests per second from workers to Serve by HTTP status, or timeout / "
                "connection_error when no answer came.",
                "reqps",
                [
                    q(
                        f"sum by ({m.CODE}) (rate({m.SERVE_REQUESTS.prom}{{{model}}}[{RATE}]))",
                        f"{{{{{m.CODE}}}}}",
                    )
                ],
                must_have_data=True,
                stack=True,
            ),
            PanelSpec(
                "Retries",
                "Serve requests that failed in a retryable way (429/5xx/timeout/connection error: "
                "retried by the worker with backoff) and shard attempts that were retries (resumed "
                "from the last checkpoint).",
                "ops",
                [
                    q(
                        f"sum by ({m.CODE}) (rate({m.SERVE_REQUESTS.prom}"
                        f'{{{m.CODE}=~"{m.RETRYABLE_CODES_RE}", {model}}}[{RATE}]))',
                        "Serve {{code}}",
                    ),
                    q(f"sum(rate({m.SHARD_RETRIES.prom}{{{model}}}[{RATE}]))", "shard retries"),
                ],
            ),
            PanelSpec(
                "In flight",
                "Requests from workers waiting on Serve, and shard activities running, summed over workers.",
                "short",
                [
                    q(f"sum({m.SERVE_IN_FLIGHT.prom}{{{model}}})", "Serve requests in flight"),
                    q(f"sum({m.SHARDS_RUNNING.prom}{{{model}}})", "shards running"),
                ],
                must_have_data=True,
            ),
            PanelSpec(
                "Serve concurrency limit",
                "Each worker's limit on requests in flight to Serve (all its shards together): adaptive, "
                "it grows while Serve answers promptly and is cut on 429/503/504/timeouts (to what Serve "
                "held) or rising latency "
                "(SERVE_ADAPTIVE_CONCURRENCY; off: SERVE_MAX_CONNECTIONS). Far below the cap: Serve is "
                "pushing back; compare with Serve responses by status.",
                "short",
                [
                    q(f"sum({m.SERVE_CONCURRENCY_LIMIT.prom})", "limit, all workers"),
                    q(f"min({m.SERVE_CONCURRENCY_LIMIT.prom})", "lowest worker's limit"),
                    q(f"sum({m.SERVE_IN_FLIGHT.prom}{{{model}}})", "requests in flight"),
                ],
                must_have_data=True,
            ),
            PanelSpec(
                "Micro-batch size",
                "Average records per request sent to Serve (tuning.micro_batch_size; smaller at the "
                "end of a part and when records fail to parse).",
                "short",
                [
                    q(
                        f"sum(rate({m.MICRO_BATCH_SIZE.sum}{{{model}}}[{RATE}])) / "
                        f"sum(rate({m.MICRO_BATCH_SIZE.count}{{{model}}}[{RATE}]))",
                        "records per request",
                    )
                ],
                must_have_data=True,
            ),
            PanelSpec(
                "Scheduled runs",
                "Runs each schedule started, skipped (the previous run still going: overlap policy) and "
                "missed (later than its catch-up window) in the selected time range, as Temporal counts "
                f"them; the workers read them from each schedule ({m.SCHEDULE_RUNS.prom}).",
                "short",
                [
                    q(
                        f"max by ({m.SCHEDULE_ID}, {m.OUTCOME}) (delta({m.SCHEDULE_RUNS.prom}[$__range]))",
                        f"{{{{{m.SCHEDULE_ID}}}}} {{{{{m.OUTCOME}}}}}",
                    )
                ],
                kind="bargauge",
                must_have_data=True,
            ),
            PanelSpec(
                "Schedules",
                "Per schedule: 'last run failed' is 1 while its most recent finished run failed (alert "
                "BatchInferenceScheduledRunFailed) and 0 once a later run completes; 'paused' is 1 "
                "while no runs start.",
                "short",
                [
                    q(
                        f"max by ({m.SCHEDULE_ID}) ({m.SCHEDULE_LAST_RUN_FAILED.prom})",
                        f"{{{{{m.SCHEDULE_ID}}}}} last run failed",
                    ),
                    q(
                        f"max by ({m.SCHEDULE_ID}) ({m.SCHEDULE_PAUSED.prom})",
                        f"{{{{{m.SCHEDULE_ID}}}}} paused",
                    ),
                ],
                kind="stat",
                must_have_data=True,
            ),
            PanelSpec(
                "Retried records",
                "Failed records re-run by retries (batches started with retry_of) that finished in the "
                f"selected time range: '{m.RETRY_FIXED}' succeeded this time, '{m.RETRY_FAILED}' failed "
                f"again (see the retry's errors/ folder). Source: {m.RETRIED_RECORDS.prom}.",
                "short",
                [
                    q(
                        f"sum by ({m.OUTCOME}) (increase({m.RETRIED_RECORDS.prom}{{{model}}}[$__range]))",
                        f"{{{{{m.OUTCOME}}}}}",
                    )
                ],
                kind="stat",
                must_have_data=True,
            ),
            PanelSpec(
                "Resumed records",
                "Records not sent to Serve again in the selected time range because a batch started "
                "again on its folder, or a retried shard attempt, found them in final files or "
                f"checkpoints (counted when the batch ends). Source: {m.RESUMED_RECORDS.prom}.",
                "short",
                [
                    q(
                        f"sum by ({m.MODEL}) (increase({m.RESUMED_RECORDS.prom}{{{model}}}[$__range]))",
                        f"{{{{{m.MODEL}}}}}",
                    )
                ],
                kind="stat",
                must_have_data=True,
            ),
        ],
    )


def serve_dashboard() -> DashboardSpec:
    app = f'application="{c.SERVE_APP_NAME}", ray_io_cluster=~"$cluster"'
    return DashboardSpec(
        uid="batch-inference-serve",
        title="Batch inference: Serve",
        description="The Ray Serve application: requests, latency, replicas, queues, batching, errors.",
        file="batch-inference-serve.json",
        variables=[
            ("cluster", "Ray cluster", f"label_values({m.RAY_HTTP_REQUESTS.prom}, ray_io_cluster)"),
        ],
        panels=[
            PanelSpec(
                "Requests by status",
                "HTTP requests per second through the Serve proxy, by status code.",
                "reqps",
                [
                    q(
                        f"sum by (status_code) (rate({m.RAY_HTTP_REQUESTS.prom}{{{app}}}[{RATE}]))",
                        "{{status_code}}",
                    )
                ],
                must_have_data=True,
                stack=True,
            ),
            PanelSpec(
                "Request latency",
                "End-to-end HTTP latency at the Serve proxy (p50/p95/p99), from Ray's histogram buckets.",
                "ms",
                quantiles(m.RAY_HTTP_LATENCY.bucket, app),
                must_have_data=True,
            ),
            PanelSpec(
                "4xx/5xx responses",
                "Error responses per second by code: 401/403 bad or missing token, 404 unknown model, "
                "413/422 bad request, 503 Serve shedding load, 500 a bug.",
                "reqps",
                [
                    q(
                        f"sum by (error_code) (rate({m.RAY_HTTP_ERROR_REQUESTS.prom}{{{app}}}[{RATE}]))",
                        "{{error_code}}",
                    )
                ],
                must_have_data=True,
                stack=True,
            ),
            PanelSpec(
                "Healthy replicas",
                "Healthy replicas per deployment (Ingress and one per model).",
                "short",
                [
                    q(
                        f"sum by (deployment) ({m.RAY_REPLICA_HEALTHY.prom}{{{app}}})",
                        "{{deployment}}",
                    )
                ],
                must_have_data=True,
            ),
            PanelSpec(
                "Queue length",
                "Requests waiting for a replica at the handles, and requests waiting in the replicas' "
                "@serve.batch queues.",
                "short",
                [
                    q(
                        f"sum by (deployment) ({m.RAY_DEPLOYMENT_QUEUED.prom}{{{app}}})",
                        "handle queue {{deployment}}",
                    ),
                    q(
                        f"sum by (deployment) ({m.RAY_BATCH_QUEUE_LENGTH.prom}{{{app}}})",
                        "batch queue {{deployment}}",
                    ),
                ],
                must_have_data=True,
            ),
            PanelSpec(
                "Ongoing requests per replica",
                "Requests each deployment's replicas are processing now (compare with max_ongoing_requests).",
                "short",
                [
                    q(
                        f"sum by (deployment) ({m.RAY_REPLICA_PROCESSING.prom}{{{app}}})",
                        "{{deployment}}",
                    )
                ],
            ),
            PanelSpec(
                "Model batch size",
                "Records per model call (p50/p95: requests grouped by @serve.batch, flattened) and "
                "requests per @serve.batch call (p50).",
                "short",
                [
                    *quantiles(m.MODEL_BATCH_SIZE.bucket, app, "deployment", "records ")[:2],
                    q(
                        f"histogram_quantile(0.5, sum by (le, deployment) "
                        f"(rate({m.RAY_ACTUAL_BATCH_SIZE.bucket}{{{app}}}[{RATE}])))",
                        "requests p50 {{deployment}}",
                    ),
                ],
                must_have_data=True,
            ),
            PanelSpec(
                "Model latency per batch",
                "Time the model takes for one server-side batch (validation + predict), p50/p95/p99.",
                "s",
                quantiles(m.MODEL_BATCH_DURATION.bucket, app, "deployment"),
                must_have_data=True,
            ),
            PanelSpec(
                "Records through the models",
                "Records per second answered by each model deployment (predictions and per-record errors).",
                "suffix:rec/s",
                [
                    q(
                        f"sum by (deployment) (rate({m.MODEL_RECORDS.prom}{{{app}}}[{RATE}]))",
                        "{{deployment}}",
                    )
                ],
                must_have_data=True,
                stack=True,
            ),
            PanelSpec(
                "Per-record errors",
                "Records a model rejected per second, by deployment and reason (the request itself "
                "succeeds; the worker writes these to the errors file).",
                "suffix:rec/s",
                [
                    q(
                        f"sum by (deployment, {m.REASON}) ({rate(m.MODEL_RECORD_ERRORS.prom, app)})",
                        "{{deployment}}: {{reason}}",
                    )
                ],
                must_have_data=True,
            ),
            PanelSpec(
                "Auth failures",
                "Requests refused by the ingress's bearer-token check per second, by reason "
                "(missing_header/malformed_header -> 401, invalid_token -> 403).",
                "reqps",
                [
                    q(
                        f"sum by ({m.REASON}) (rate({m.AUTH_FAILURES.prom}{{{app}}}[{RATE}]))",
                        "{{reason}}",
                    )
                ],
                must_have_data=True,
            ),
            PanelSpec(
                "Deployment exceptions",
                "Exceptions raised by deployment code per second (a bug or an overloaded replica).",
                "reqps",
                [
                    q(
                        f"sum by (deployment) (rate({m.RAY_DEPLOYMENT_ERRORS.prom}{{{app}}}[{RATE}]))",
                        "{{deployment}}",
                    )
                ],
            ),
        ],
    )


def temporal_dashboard() -> DashboardSpec:
    ns = 'namespace=~"$namespace"'
    sel = f'{ns}, task_queue=~"$task_queue"'
    return DashboardSpec(
        uid="batch-inference-temporal",
        title="Batch inference: Temporal workers",
        description="The Temporal SDK's worker metrics (names and units as the SDK exports them).",
        file="batch-inference-temporal.json",
        variables=[
            ("namespace", "Namespace", f"label_values({m.TEMPORAL_NUM_POLLERS.prom}, namespace)"),
            ("task_queue", "Task queue", f"label_values({m.TEMPORAL_NUM_POLLERS.prom}, task_queue)"),
        ],
        panels=[
            PanelSpec(
                "Workflow task schedule-to-start",
                "Time workflow tasks wait for a worker (p50/p95/p99). High: too few workers or "
                "workflow task slots.",
                "ms",
                quantiles(m.TEMPORAL_WF_SCHEDULE_TO_START.bucket, sel),
                must_have_data=True,
            ),
            PanelSpec(
                "Activity schedule-to-start",
                "Time shard activities wait for a free worker slot (p50/p95/p99). High: add workers or "
                "raise maxConcurrentActivities.",
                "ms",
                quantiles(m.TEMPORAL_ACT_SCHEDULE_TO_START.bucket, sel),
                must_have_data=True,
            ),
            PanelSpec(
                "Task slots used",
                "Task slots in use, by worker type (WorkflowWorker/ActivityWorker/LocalActivityWorker).",
                "short",
                [
                    q(
                        f"sum by (worker_type) ({m.TEMPORAL_SLOTS_USED.prom}{{{sel}}})",
                        "{{worker_type}}",
                    )
                ],
                must_have_data=True,
            ),
            PanelSpec(
                "Task slots available",
                "Free task slots, by worker type. Zero activity slots for long: workers are saturated.",
                "short",
                [
                    q(
                        f"sum by (worker_type) ({m.TEMPORAL_SLOTS_AVAILABLE.prom}{{{sel}}})",
                        "{{worker_type}}",
                    )
                ],
                must_have_data=True,
            ),
            PanelSpec(
                "Failures",
                "Activity failures by type and reason (planning and the summary run as local "
                "activities), workflow task failures, and failed requests to the Temporal service, "
                "per second.",
                "ops",
                [
                    q(
                        f"sum by (activity_type, failure_reason) "
                        f"(rate({m.TEMPORAL_ACT_EXECUTION_FAILED.prom}{{{sel}}}[{RATE}]))",
                        "activity {{activity_type}}: {{failure_reason}}",
                    ),
                    q(
                        f"sum by (activity_type, failure_reason) "
                        f"(rate({m.TEMPORAL_LA_EXECUTION_FAILED.prom}{{{sel}}}[{RATE}]))",
                        "local activity {{activity_type}}: {{failure_reason}}",
                    ),
                    q(
                        f"sum by (failure_reason) "
                        f"(rate({m.TEMPORAL_WF_TASK_EXECUTION_FAILED.prom}{{{sel}}}[{RATE}]))",
                        "workflow task: {{failure_reason}}",
                    ),
                    q(
                        f"sum by (operation) ({rate(m.TEMPORAL_REQUEST_FAILURE.prom, ns)})",
                        "request {{operation}}",
                    ),
                ],
                must_have_data=True,
            ),
            PanelSpec(
                "Polls",
                "Task polls per second that got a task, and long polls that timed out empty (idle workers).",
                "ops",
                [
                    q(f"sum({rate(m.TEMPORAL_WF_POLL_SUCCEED.prom, sel)})", "workflow: got a task"),
                    q(f"sum(rate({m.TEMPORAL_WF_POLL_EMPTY.prom}{{{sel}}}[{RATE}]))", "workflow: empty"),
                    q(f"sum({rate(m.TEMPORAL_ACT_TASK_RECEIVED.prom, sel)})", "activity: got a task"),
                    q(f"sum(rate({m.TEMPORAL_ACT_POLL_NO_TASK.prom}{{{sel}}}[{RATE}]))", "activity: empty"),
                ],
                must_have_data=True,
            ),
            PanelSpec(
                "Pollers",
                "Active pollers by type.",
                "short",
                [q(f"sum by (poller_type) ({m.TEMPORAL_NUM_POLLERS.prom}{{{sel}}})", "{{poller_type}}")],
                must_have_data=True,
            ),
            PanelSpec(
                "Activity execution latency",
                "Time activities take to run (p95), by activity type: process_shard is one shard.",
                "ms",
                [
                    q(
                        f"histogram_quantile(0.95, sum by (le, activity_type) "
                        f"(rate({m.TEMPORAL_ACT_EXECUTION_LATENCY.bucket}{{{sel}}}[{RATE}])))",
                        "p95 {{activity_type}}",
                    )
                ],
                must_have_data=True,
            ),
            PanelSpec(
                "Workflow runs",
                "Workflow runs completed, failed and continued-as-new per second (a long batch "
                "continues as new every few hundred shards).",
                "ops",
                [
                    q(f"sum(rate({m.TEMPORAL_WF_COMPLETED.prom}{{{sel}}}[{RATE}]))", "completed"),
                    q(f"sum(rate({m.TEMPORAL_WF_FAILED.prom}{{{sel}}}[{RATE}]))", "failed"),
                    q(f"sum({rate(m.TEMPORAL_WF_CONTINUE_AS_NEW.prom, sel)})", "continued as new"),
                ],
                must_have_data=True,
            ),
            PanelSpec(
                "Sticky cache size",
                "Workflows cached per worker (saves history replays).",
                "short",
                [q(f"sum({m.TEMPORAL_STICKY_CACHE_SIZE.prom}{{{sel}}})", "cached workflows")],
            ),
        ],
    )


DASHBOARDS = (batch_dashboard, serve_dashboard, temporal_dashboard)


# --- Grafana JSON through grafana-foundation-sdk --------------------------------------------------


def build_dashboard(spec: DashboardSpec) -> dict[str, Any]:
    from grafana_foundation_sdk.builders import bargauge, dashboard, prometheus, stat, timeseries
    from grafana_foundation_sdk.builders import common as cb
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common
    from grafana_foundation_sdk.models import dashboard as dm

    ds = dm.DataSourceRef(type_val="prometheus", uid=DS)
    board = (
        dashboard.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(["batch-inference"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    )
    for name, label, query in spec.variables:
        board = board.with_variable(
            dashboard.QueryVariable(name)
            .label(label)
            .datasource(ds)
            .query(query)
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(dm.VariableOption(selected=True, text="All", value="$__all"))
        )
    x = y = row_h = 0
    for panel_id, p in enumerate(spec.panels, start=1):
        if x + p.width > 24:
            x, y, row_h = 0, y + row_h, 0
        builder: Any
        if p.kind == "stat":
            builder = stat.Panel().reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]))
        elif p.kind == "bargauge":
            builder = (
                bargauge.Panel()
                .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]))
                .orientation(common.VizOrientation.HORIZONTAL)
            )
        else:
            builder = timeseries.Panel().fill_opacity(10).line_width(1)
            if p.stack:
                builder = builder.stacking(cb.StackingConfig().mode(common.StackingMode.NORMAL))
        builder = (
            builder.id(panel_id)
            .title(p.title)
            .description(p.description)
            .unit(p.unit)
            .datasource(ds)
            .grid_pos(dm.GridPos(h=p.height, w=p.width, x=x, y=y))
        )
        if p.minimum is not None and p.kind != "stat":
            builder = builder.min(p.minimum)
        if p.maximum is not None:
            builder = builder.max(p.maximum)
        for ref, query in zip("ABCDEFGH", p.queries, strict=False):
            builder = builder.with_target(
                prometheus.Dataquery().expr(query.expr).legend_format(query.legend or "__auto").ref_id(ref)
            )
        board = board.with_panel(builder)
        x += p.width
        row_h = max(row_h, p.height)
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


# --- Prometheus rules ---------------------------------------------------------------------------


@dataclass
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str


def alerts() -> list[Alert]:
    rec = m.RECORDS.prom
    records = {s: f'max by ({m.WORKFLOW_ID}) ({m.BATCH_RECORDS.prom}{{{m.STATE}="{s}"}})' for s in ("total",)}
    worker_up = f'up{{job="{m.WORKER_JOB}"}}'
    serve_codes = m.SERVE_REQUESTS.prom
    ray_http = m.RAY_HTTP_REQUESTS.prom
    failed_batches = f'{m.BATCHES_FINISHED.prom}{{{m.STATUS}="{m.FAILED}"}}'
    return [
        Alert(
            "BatchInferenceBatchStalled",
            f"max by ({m.WORKFLOW_ID}) (changes({m.BATCH_RECORDS.prom}"
            f'{{{m.STATE}=~"{m.SUCCEEDED}|{m.FAILED}"}}[30m])) == 0 '
            f"and on ({m.WORKFLOW_ID}) max by ({m.WORKFLOW_ID}) ({m.BATCH_ELAPSED.prom}) > 1800 "
            f"and on ({m.WORKFLOW_ID}) {records['total']} > 0",
            "10m",
            "warning",
            "Batch {{ $labels.workflow_id }} has made no progress for 30 minutes",
            "No shard of batch {{ $labels.workflow_id }} finished in the last 30 minutes although "
            "the batch is running. Progress moves when a shard finishes; if shards are slow by "
            "design, raise this window.",
        ),
        Alert(
            "BatchInferenceNoRecordsProcessed",
            f"max({m.BATCHES_RUNNING.prom}) > 0 "
            f"and on () ((sum(increase({rec}[15m])) or on () vector(0)) == 0)",
            "5m",
            "critical",
            "Batches are running but no worker committed a record for 15 minutes",
            "Batches are running and no worker committed any record in 15 minutes: "
            "workers cannot reach Serve, Serve is down, or shards are stuck.",
        ),
        Alert(
            "BatchInferenceRecordErrorRatioHigh",
            f'sum by ({m.MODEL}) (rate({rec}{{{m.OUTCOME}="{m.FAILED}"}}[15m])) '
            f"/ sum by ({m.MODEL}) (rate({rec}[15m])) > 0.01",
            "5m",
            "warning",
            "More than 1% of {{ $labels.model }} records fail",
            "Over 1% of the records sent to model {{ $labels.model }} in "
            "the last 15 minutes failed (parse, duplicate or model errors). Batches whose "
            "max_error_ratio is lower will fail.",
        ),
        Alert(
            "BatchInferenceBatchFailed",
            # A worker's first failed batch creates the series at 1: "new since 15m" counts too.
            f"sum by ({m.MODEL}) (increase({failed_batches}[15m])) > 0 "
            f"or sum by ({m.MODEL}) ({failed_batches} unless {failed_batches} offset 15m) > 0",
            "0m",
            "warning",
            "A {{ $labels.model }} batch failed",
            "A batch for model {{ $labels.model }} ended as failed in the last 15 "
            "minutes (error budget exceeded, a shard out of retries, or bad input). The batch's "
            "_summary.json and the workflow's failure say why.",
        ),
        Alert(
            "BatchInferenceScheduledRunFailed",
            f"max by ({m.SCHEDULE_ID}) ({m.SCHEDULE_LAST_RUN_FAILED.prom}) == 1",
            "0m",
            "warning",
            "The last run of schedule {{ $labels.schedule_id }} failed",
            "The most recent finished run of schedule {{ $labels.schedule_id }} failed, timed out "
            "or was terminated (its input folder for that date missing, bad records over the "
            "budget, Serve refusing it, ...). It fires until a later run of the schedule completes.",
        ),
        Alert(
            "BatchInferenceServeErrorsHigh",
            f'sum by (application) (rate({ray_http}{{status_code=~"5.."}}[5m])) '
            f"/ sum by (application) (rate({ray_http}[5m])) > 0.05",
            "5m",
            "critical",
            "Serve answers more than 5% of requests with 5xx",
            "Over 5% of the HTTP requests to Serve application "
            "{{ $labels.application }} failed with 5xx (503: Serve shedding load or no replica; "
            "500: a bug) in the last 5 minutes.",
        ),
        Alert(
            "BatchInferenceServeUnavailableToWorkers",
            f'sum(rate({serve_codes}{{{m.CODE}=~"429|5..|{m.CODE_TIMEOUT}|{m.CODE_CONNECTION_ERROR}"}}[5m])) '
            f"/ sum(rate({serve_codes}[5m])) > 0.1",
            "5m",
            "warning",
            "Workers see Serve overloaded or unreachable on more than 10% of requests",
            "Over 10% of the workers' requests to Serve got 429/5xx, "
            "timed out or could not connect in the last 5 minutes. Workers retry with backoff, so "
            "batches slow down rather than fail; Serve is shedding load or down.",
        ),
        Alert(
            "BatchInferenceBatchWaitingForServe",
            f"max by ({m.WORKFLOW_ID}) ({m.BATCH_WAITING_FOR_SERVE.prom}) > 300",
            "1m",
            "warning",
            "Batch {{ $labels.workflow_id }} has been waiting for Serve for over 5 minutes",
            "Batch {{ $labels.workflow_id }} found Serve unavailable (down, redeploying, or "
            "unreachable from the workers) and waits: its shards resume by themselves from their "
            "checkpoints once Serve answers; the batch fails after tuning.max_serve_outage_s "
            "(default 4 hours).",
        ),
        Alert(
            "BatchInferenceWorkerMissing",
            f"absent({worker_up} == 1)",
            "5m",
            "critical",
            "No batch-inference worker is up",
            f"Prometheus has no worker target up in job {m.WORKER_JOB}: no worker polls the task "
            "queue, so batches do not progress.",
        ),
        Alert(
            "BatchInferenceWorkerDown",
            f"{worker_up} == 0",
            "5m",
            "warning",
            "Worker {{ $labels.instance }} cannot be scraped",
            "The worker at {{ $labels.instance }} has not answered /metrics for 5 minutes "
            "(crashed, stuck or overloaded); its shards resume elsewhere after their heartbeat "
            "timeout.",
        ),
        Alert(
            "BatchInferenceActivityScheduleToStartHigh",
            f"histogram_quantile(0.95, sum by (le, namespace, task_queue) "
            f"(rate({m.TEMPORAL_ACT_SCHEDULE_TO_START.bucket}[10m]))) > 30000",
            "10m",
            "warning",
            "Shards wait more than 30 s for a worker on {{ $labels.task_queue }}",
            "5% of activity tasks on task queue {{ $labels.task_queue }} waited more than "
            "30 s for a worker slot: workers are saturated. Add workers (or "
            "enable KEDA) or raise worker.maxConcurrentActivities.",
        ),
        Alert(
            "BatchInferenceWorkflowScheduleToStartHigh",
            f"histogram_quantile(0.95, sum by (le, namespace, task_queue) "
            f"(rate({m.TEMPORAL_WF_SCHEDULE_TO_START.bucket}[10m]))) > 5000",
            "10m",
            "warning",
            "Workflow tasks wait more than 5 s for a worker on {{ $labels.task_queue }}",
            "5% of workflow tasks on task queue {{ $labels.task_queue }} waited more than "
            "5 s: workers are missing or overloaded, so batches react late "
            "to finished shards.",
        ),
    ]


def rules() -> dict[str, Any]:
    out = []
    for a in alerts():
        out.append(
            {
                "alert": a.name,
                "expr": a.expr,
                "for": a.for_,
                "labels": {"severity": a.severity},
                "annotations": {
                    "summary": a.summary,
                    "description": a.description,
                    "runbook": f"{RUNBOOKS}#{a.name.lower()}",
                },
            }
        )
    return {"groups": [{"name": "batch-inference", "rules": out}]}


# --- files ------------------------------------------------------------------------------------

HEADER = (
    "# Generated by observability/generate.py from services/metrics.py: edit those, then run\n"
    "#   .venv/bin/python observability/generate.py\n"
    "# Plain Prometheus rules file (rule_files:); the chart wraps it in a PrometheusRule.\n"
)


def outputs() -> dict[Path, str]:
    files: dict[Path, str] = {}
    for make in DASHBOARDS:
        spec = make()
        files[DASHBOARDS_DIR / spec.file] = json.dumps(build_dashboard(spec), indent=2, sort_keys=True) + "\n"
    files[RULES_FILE] = HEADER + yaml.safe_dump(rules(), sort_keys=False, width=100, allow_unicode=True)
    files[JOBS_FILE] = (
        "# Generated by observability/generate.py: the Prometheus job names the alert rules select\n"
        "# on (services/metrics.py); the chart's ServiceMonitor and PodMonitor set them.\n"
        + yaml.safe_dump({"worker": m.WORKER_JOB, "ray": m.RAY_JOB, "progress": m.PROGRESS_JOB})
    )
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail if a generated file is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    if stale:
        print("stale (run observability/generate.py):", *[str(p.relative_to(REPO_ROOT)) for p in stale])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
