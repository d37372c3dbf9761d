"""The worker's /metrics against a real Temporal dev server: the bridged SDK metrics match what
the SDK's own Prometheus exporter (``PrometheusConfig``) exports for the same work, family by
family (names, types, label names, histogram buckets), so Temporal's SDK dashboards work."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import defaultdict

import httpx
import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from services import metrics as m
from services.local.processes import free_port
from services.local.temporal_dev import TemporalDevServer
from services.worker.config import WorkerSettings
from services.worker.metrics_server import MetricsServer
from services.worker.sdk_metrics import TemporalMetricsBridge
from services.worker.serve_client import RetrySettings, ServeClient, TokenSource
from services.worker.worker import build_worker

pytestmark = pytest.mark.integration

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> dict[str, dict]:
    """family -> {type, label name sets, le values} from Prometheus text format."""
    families: dict[str, dict] = defaultdict(lambda: {"type": None, "labels": set(), "le": set()})
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            families[name]["type"] = kind
            continue
        match = SAMPLE.match(line)
        if not match:
            continue
        name, labels = match.group(1), dict(LABEL.findall(match.group(3) or ""))
        family = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and types.get(name.removesuffix(suffix)) == "histogram":
                family = name.removesuffix(suffix)
        if "le" in labels:
            families[family]["le"].add(labels.pop("le"))
        families[family]["labels"].add(tuple(sorted(labels)))
    return dict(families)


async def _workload(client: Client) -> None:
    """Two batches that fail in planning (input not found: a local activity) and one inline
    batch whose activity cannot reach Serve (nothing listens): workflow, activity and local
    activity metrics, failures included, without needing Serve."""
    queue = f"metrics-{uuid.uuid4().hex[:8]}"
    serve = ServeClient("http://127.0.0.1:9", TokenSource("unused"), retry=RetrySettings(max_attempts=1))
    batches = [{"input_uri": "/nonexistent/in.jsonl", "output_uri": "/tmp/unused-out"}] * 2 + [
        {"records": [{"id": 1, "input": 1}], "tuning": {"shard_max_attempts": 1}}
    ]
    try:
        async with build_worker(client, WorkerSettings(task_queue=queue), serve):
            for batch in batches:
                with pytest.raises(WorkflowFailureError):
                    await client.execute_workflow(
                        "BatchInference", batch, id=f"metrics-{uuid.uuid4().hex[:8]}", task_queue=queue
                    )
            await asyncio.sleep(1.5)  # let the slot gauges and poll counters settle
    finally:
        await serve.aclose()


async def test_bridge_exports_what_the_sdk_exporter_exports(temporal_server: TemporalDevServer) -> None:
    core_port = free_port()
    core_runtime = Runtime(
        telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"127.0.0.1:{core_port}"))
    )
    bridge = TemporalMetricsBridge()
    server = MetricsServer("127.0.0.1", 0, bridge)
    for runtime in (core_runtime, bridge.create_runtime()):
        client = await Client.connect(
            temporal_server.address, runtime=runtime, data_converter=pydantic_data_converter
        )
        await _workload(client)
    server.start()
    try:
        async with httpx.AsyncClient() as http:
            core = parse((await http.get(f"http://127.0.0.1:{core_port}/metrics")).text)
            response = await http.get(server.url)
    finally:
        server.stop()
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    ours = parse(response.text)
    temporal = {name: f for name, f in ours.items() if name.startswith("temporal_")}
    both = set(core) & set(temporal)
    # The families the dashboards and rules read, and those a failed batch must produce.
    must = {
        x.prom
        for x in (
            m.TEMPORAL_WF_SCHEDULE_TO_START,
            m.TEMPORAL_ACT_SCHEDULE_TO_START,
            m.TEMPORAL_ACT_EXECUTION_LATENCY,
            m.TEMPORAL_WF_TASK_EXECUTION_LATENCY,
            m.TEMPORAL_SLOTS_AVAILABLE,
            m.TEMPORAL_SLOTS_USED,
            m.TEMPORAL_NUM_POLLERS,
            m.TEMPORAL_WF_POLL_SUCCEED,
            m.TEMPORAL_ACT_TASK_RECEIVED,
            m.TEMPORAL_ACT_EXECUTION_FAILED,
            m.TEMPORAL_LA_EXECUTION_FAILED,
            m.TEMPORAL_WF_FAILED,
            m.TEMPORAL_REQUEST,
        )
    }
    assert must <= both, (must - set(core), must - set(temporal))
    # Anything only one side has must be a family that appears only with timing (long polls).
    assert len(both) >= 0.8 * len(core), (sorted(core), sorted(temporal))
    for name in sorted(both):
        assert temporal[name]["type"] == core[name]["type"], name
        assert temporal[name]["le"] == core[name]["le"], name
        assert temporal[name]["labels"] == core[name]["labels"], name
    # The project's own metrics are on the same endpoint.
    assert m.RECORDS.prom in response.text and m.BATCHES_RUNNING.prom in response.text
