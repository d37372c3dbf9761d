"""The chart's progress exporter: one replica of `batch-inference progress-exporter` with the
worker's Temporal connection, its ServiceMonitor under the job the rules expect, and the dev
Temporal registering the search attributes batches publish to."""

from __future__ import annotations

import yaml

from services import constants as c
from services import metrics as m
from tests.helpers.k8s import CHART, RELEASE, find, render

NAME = f"{RELEASE}-progress-exporter"


def worker_container(docs: list[dict]) -> dict:
    (container,) = find(docs, "Deployment", f"{RELEASE}-worker")["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _container(docs: list[dict]) -> dict:
    (container,) = find(docs, "Deployment", NAME)["spec"]["template"]["spec"]["containers"]
    return container


def test_one_exporter_with_the_workers_temporal_connection(rendered) -> None:
    for name in ("defaults", "everything", "dev-temporal"):
        docs = rendered[name]
        deployment = find(docs, "Deployment", NAME)
        assert deployment["spec"]["replicas"] == 1
        container = _container(docs)
        assert container["command"] == ["python", "-m", "services.cli", "progress-exporter"]
        assert container["image"] == worker_container(docs)["image"]
        worker_env = env_of(worker_container(docs))
        for key in (c.ENV_TEMPORAL_ADDRESS, c.ENV_TEMPORAL_NAMESPACE, c.ENV_TEMPORAL_TASK_QUEUE):
            assert env_of(container)[key] == worker_env[key], (name, key)
        args = container["args"]
        assert args[args.index("--port") + 1] == str(c.PROGRESS_EXPORTER_METRICS_PORT)
        assert "--register-search-attributes" not in args, "off by default"
        # The workers export no per-batch gauges (their default), so nothing is counted twice.
        assert c.ENV_WORKER_BATCH_PROGRESS_METRICS not in worker_env


def test_exporter_can_be_turned_off_or_register_the_attributes() -> None:
    assert not [d for d in render({"progressExporter": {"enabled": False}}) if NAME in d["metadata"]["name"]]
    args = _container(
        render({"progressExporter": {"registerSearchAttributes": True, "queryFallback": False}})
    )["args"]
    assert "--register-search-attributes" in args and "--no-query-fallback" in args


def test_its_service_monitor_sets_the_progress_job() -> None:
    docs = render({"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}})
    monitor = find(docs, "ServiceMonitor", NAME)
    service = find(docs, "Service", NAME)
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    pod_labels = find(docs, "Deployment", NAME)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert {"targetLabel": "job", "replacement": m.PROGRESS_JOB} in endpoint["relabelings"]
    jobs = yaml.safe_load((CHART / "files" / "observability" / "jobs.yaml").read_text())
    assert jobs["progress"] == m.PROGRESS_JOB


def test_dev_temporal_registers_the_progress_attributes(rendered) -> None:
    (container,) = find(rendered["dev-temporal"], "Deployment", f"{RELEASE}-temporal")["spec"]["template"][
        "spec"
    ]["containers"]
    args = container["args"]
    registered = {args[i + 1] for i, a in enumerate(args) if a == "--search-attribute"}
    assert registered == {f"{name}={kind}" for name, kind in c.PROGRESS_SEARCH_ATTRIBUTES.items()}
