"""The chart's optional monitoring objects: rendered by Helm, validated against Kubernetes' and the
Prometheus Operator's real schemas (../shared/crds), built from the same files as observability/,
and selecting the pods the chart really creates."""

from __future__ import annotations

import json

import pytest
import yaml

from services import metrics as m
from tests.helpers.k8s import KUBE_VERSIONS, CrdValidator, crd_dirs, find, render, validate_core
from tests.helpers.promql import CHART_OBS, RULES_FILE

ALL_ON = {
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "podMonitor": {"enabled": True, "interval": "15s"},
        "prometheusRule": {"enabled": True, "runbookBaseUrl": "https://git.example.com/ml/bi/blob/main/"},
        "dashboards": {"enabled": True, "annotations": {"grafana_folder": "Batch inference"}},
    }
}
MONITORING = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return render(ALL_ON)


@pytest.fixture(scope="module")
def crds() -> CrdValidator:
    dirs = crd_dirs()
    if not dirs:
        pytest.skip("no upstream CRDs (../shared/crds or BATCH_INFERENCE_CRD_DIR)")
    return CrdValidator(dirs[0])


def test_off_by_default() -> None:
    docs = render({})
    assert not [d for d in docs if d["kind"] in MONITORING]
    assert not [
        d
        for d in docs
        if d["metadata"]["name"].endswith(("-metrics",)) or "dashboard" in d["metadata"]["name"]
    ]


def test_objects_validate_against_real_schemas(docs: list[dict], crds: CrdValidator) -> None:
    new = [d for d in docs if d["kind"] in MONITORING or "dashboard" in d["metadata"]["name"]]
    new.append(find(docs, "Service", "batch-inference-worker-metrics"))
    assert {d["kind"] for d in new} == MONITORING | {"ConfigMap", "Service"}
    for doc in new:
        if doc["kind"] in MONITORING:
            assert crds.knows(doc), doc["kind"]
            crds.validate(doc)
        else:
            for version in KUBE_VERSIONS:
                validate_core(doc, version)


def test_monitors_select_the_chart_pods_with_the_rule_job_names(docs: list[dict]) -> None:
    worker_pod = find(docs, "Deployment", "batch-inference-worker")["spec"]["template"]["metadata"]["labels"]
    service = find(docs, "Service", "batch-inference-worker-metrics")
    assert service["spec"]["selector"].items() <= worker_pod.items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    monitor = find(docs, "ServiceMonitor", "batch-inference-worker")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert {"targetLabel": "job", "replacement": m.WORKER_JOB} in endpoint["relabelings"]

    ray = find(docs, "RayService")["spec"]["rayClusterConfig"]
    pod_labels = [ray["headGroupSpec"]["template"]["metadata"]["labels"]] + [
        g["template"]["metadata"]["labels"] for g in ray["workerGroupSpecs"]
    ]
    pod_monitor = find(docs, "PodMonitor")
    for labels in pod_labels:
        assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["interval"] == "15s"
    relabel = endpoint["relabelings"]
    assert {
        "sourceLabels": ["__meta_kubernetes_pod_label_ray_io_cluster"],
        "targetLabel": "ray_io_cluster",
    } in relabel
    assert {"targetLabel": "job", "replacement": m.RAY_JOB} in relabel
    head_ports = {p["name"] for p in ray["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]}
    assert "metrics" in head_ports


def test_rules_and_dashboards_are_the_shared_files(docs: list[dict]) -> None:
    rule = find(docs, "PrometheusRule")
    shared = yaml.safe_load(RULES_FILE.read_text())["groups"]
    rendered = rule["spec"]["groups"]
    for group in rendered:
        for r in group["rules"]:
            url = r["annotations"].pop("runbook_url")
            assert url == "https://git.example.com/ml/bi/blob/main/" + r["annotations"]["runbook"]
    assert rendered == shared
    maps = [d for d in docs if d["kind"] == "ConfigMap" and "dashboard" in d["metadata"]["name"]]
    assert len(maps) == 3
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "Batch inference"}
        ((key, text),) = cm["data"].items()
        assert json.loads(text) == json.loads((CHART_OBS / "dashboards" / key).read_text())


def test_values_schema_rejects_unknown_metrics_keys() -> None:
    with pytest.raises(Exception, match=r"(?i)schema|additional"):
        render({"metrics": {"serviceMonitor": {"enabled": True, "intervall": "30s"}}})
