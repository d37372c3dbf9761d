"""Dashboards, rules and metric definitions agree with each other and with the code, without
servers: every metric a dashboard or rule reads is defined once in services/metrics.py and
exported by code (the worker's registry, the Serve app, the Temporal SDK binary, Ray's source)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from services import metrics as m
from services.errors import CODES_BY_STAGE, Code, RecordError, Stage
from tests.helpers.promql import (
    CHART_OBS,
    DASHBOARDS,
    REPO_ROOT,
    RULES_FILE,
    load_dashboards,
    load_generator,
    metric_names,
    panel_queries,
    rules,
)
from tests.helpers.promtool import promtool

OBS = REPO_ROOT / "observability"


def test_generated_files_are_up_to_date() -> None:
    assert load_generator().main(["--check"]) == 0, "run .venv/bin/python observability/generate.py"


def test_plain_folder_links_to_the_chart_files() -> None:
    """observability/ holds links to the chart's files: one copy of each, two places to find it."""
    links = {p.name: p for p in (OBS / "dashboards").glob("*.json")}
    assert set(links) == {p.name for p in DASHBOARDS} and len(links) == 3
    for name, link in links.items():
        assert link.is_symlink() and link.resolve() == (CHART_OBS / "dashboards" / name).resolve()
    rules_link = OBS / "prometheus" / "rules.yaml"
    assert rules_link.is_symlink() and rules_link.resolve() == RULES_FILE.resolve()


def test_every_metric_used_is_defined_and_every_query_parses() -> None:
    known = m.known_series_names()
    used: dict[str, set[str]] = {}
    for query in panel_queries():
        for name in metric_names(query.evaluable):
            used.setdefault(name, set()).add(f"{query.dashboard} / {query.panel}")
    for rule in rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"rule {rule['alert']}")
    unknown = {name: where for name, where in used.items() if name not in known and name != "up"}
    assert not unknown, f"metrics used but not defined in services/metrics.py: {unknown}"
    # And every dashboard variable query reads a defined metric too.
    for board in load_dashboards().values():
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                (name,) = re.findall(r"label_values\((\w+),", var["query"])
                assert name in known, (board["title"], var["name"])


def test_worker_metrics_are_registered_by_the_worker() -> None:
    from prometheus_client import REGISTRY

    import services.worker.telemetry  # noqa: F401  (registers them)

    registered = set(REGISTRY._names_to_collectors)
    for metric in m.WORKER_METRICS:
        assert set(metric.series_names()) <= registered, metric.name


def test_serve_metrics_are_created_by_the_serve_app() -> None:
    source = (REPO_ROOT / "services" / "serve" / "app.py").read_text()
    for metric in m.SERVE_METRICS:
        const = next(k for k, v in vars(m).items() if v is metric and k.isupper())
        assert f"_ray_metric(m.{const})" in source, metric.name


def test_temporal_metric_names_are_the_sdks() -> None:
    """Every Temporal name is compiled into the SDK's Core library (as it exports it, without the
    temporal_ prefix)."""
    import temporalio.bridge

    (lib,) = Path(temporalio.bridge.__file__).parent.glob("temporal_sdk_bridge*.so")
    binary = lib.read_bytes()
    for metric in m.TEMPORAL_METRICS:
        bare = metric.name.removeprefix("temporal_").encode()
        assert bare in binary, metric.name


def test_ray_metric_names_are_rays() -> None:
    """Every ray_serve_* name is one Ray 2.60's Serve code defines (counters: without _total)."""
    import ray.serve

    source = "".join(p.read_text() for p in Path(ray.serve.__file__).parent.rglob("*.py"))
    for metric in m.RAY_METRICS:
        bare = metric.name.removeprefix("ray_").removesuffix("_total")
        generic = bare.replace("_http_", "_{protocol_name}_").replace("serve_http_", "serve_{protocol_name}_")
        assert f'"{bare}"' in source or f'f"{generic}"' in source, metric.name


def test_dashboards_are_valid_grafana_json() -> None:
    """Loadable by grafana-foundation-sdk's models; every panel has a unit, a description, a unique
    id, Prometheus targets with unique refIds, and a place on the grid that overlaps no other."""
    from grafana_foundation_sdk.models.dashboard import Dashboard

    for name, board in load_dashboards().items():
        Dashboard.from_json(board)
        assert board["schemaVersion"] >= 38 and board["uid"] and board["title"], name
        ids, cells = set(), set()
        for panel in board["panels"]:
            where = f"{name}: {panel['title']}"
            assert panel["fieldConfig"]["defaults"].get("unit"), where
            assert len(panel.get("description", "")) > 20, where
            assert panel["id"] not in ids, where
            ids.add(panel["id"])
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            refs = [t["refId"] for t in panel["targets"]]
            assert refs and len(refs) == len(set(refs)), where
            g = panel["gridPos"]
            assert g["x"] + g["w"] <= 24, where
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not mine & cells, f"{where} overlaps another panel"
            cells |= mine
        assert {v["name"] for v in board["templating"]["list"]} >= {"datasource"}


def test_every_alert_has_summary_description_and_a_runbook_section() -> None:
    runbooks = (OBS / "runbooks.md").read_text()
    anchors = {h.strip().lower() for h in re.findall(r"^## (.+)$", runbooks, re.M)}
    for rule in rules():
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        path, _, anchor = annotations["runbook"].partition("#")
        assert path == "observability/runbooks.md" and anchor in anchors, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}


def test_failure_codes_cover_every_record_error() -> None:
    """Every bad record the worker finds carries a code from the bounded set its stage
    initialises on /metrics; the Serve app's codes are that set's model codes; auth failures
    map to the bounded auth reasons."""
    from services.serve.auth import AuthError, TokenStore
    from services.worker import csv_records, jsonl, micro_batches
    from services.worker.fields import FieldReader
    from services.worker.manifests import RecordFields
    from services.worker.source import duplicate

    found = []
    for raw in [b"\xff\xfe", b"{not json", b"[1, 2]", b'{"x": 1}', b'{"id": [1]}']:
        with pytest.raises(RecordError) as exc:
            jsonl.parse_line(raw)
        found.append(exc.value)
    with pytest.raises(RecordError) as exc:
        jsonl.parse_line(b'{"id": 1}', FieldReader(RecordFields(input_field="text")))
    found.append(exc.value)
    _, csv_errors = csv_records.parse_rows([b"1,2\n", b"2\n", b"3,x\n"], {"id": "string", "a": "int64"})
    found += [
        *csv_errors.values(),
        jsonl.too_long(),
        duplicate(3),
        micro_batches.too_large(2048, 1024),
        micro_batches.too_deep(),
    ]
    for error in found:
        assert error.code in CODES_BY_STAGE[error.stage], error
    assert {e.code for e in found if e.stage == Stage.PARSE} == set(CODES_BY_STAGE[Stage.PARSE])
    serve_app = (REPO_ROOT / "services" / "serve" / "app.py").read_text()
    used = set(re.findall(r"_error\(Code\.(\w+)", serve_app))
    assert {Code[name] for name in used} == set(CODES_BY_STAGE[Stage.MODEL])
    store = TokenStore(env_tokens=["good"])
    reasons = set()
    for header in [None, "Basic abc", "Bearer wrong"]:
        with pytest.raises(AuthError) as exc:
            store.check(header)
        reasons.add(exc.value.code)
    assert reasons == {m.AUTH_MISSING, m.AUTH_MALFORMED, m.AUTH_INVALID}


def test_promtool_check_rules() -> None:
    out = subprocess.run([promtool(), "check", "rules", str(RULES_FILE)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_scrape_config_example_is_valid(tmp_path: Path) -> None:
    """promtool checks the example's jobs and relabelling (Debian's build lacks Kubernetes service
    discovery, so the discovery block is swapped for a static one here)."""
    example = yaml.safe_load((OBS / "prometheus" / "scrape-config.example.yaml").read_text())
    jobs = example["scrape_configs"]
    assert [j["job_name"] for j in jobs] == [m.WORKER_JOB, m.PROGRESS_JOB, m.RAY_JOB]
    ray_relabel = jobs[2]["relabel_configs"]
    assert {
        "source_labels": ["__meta_kubernetes_pod_label_ray_io_cluster"],
        "target_label": "ray_io_cluster",
    } in (ray_relabel)
    for job in jobs:
        assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
        job["static_configs"] = [{"targets": ["127.0.0.1:1"]}]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"rule_files": [str(RULES_FILE)], "scrape_configs": jobs}))
    out = subprocess.run([promtool(), "check", "config", str(config)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
