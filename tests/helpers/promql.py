"""Helpers: the queries of the generated dashboards and rules, made evaluable, and the metric
names they read (parsed with a real PromQL parser)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import promql_parser
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_OBS = REPO_ROOT / "charts" / "batch-inference" / "files" / "observability"
DASHBOARDS = sorted((CHART_OBS / "dashboards").glob("*.json"))
RULES_FILE = CHART_OBS / "prometheus-rules.yaml"

# Grafana's variables as a query runs with "All" selected.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "10m", "$__interval": "15s"}


@dataclass
class PanelQuery:
    dashboard: str
    panel: str
    ref: str
    expr: str  # as in the dashboard
    must_have_data: bool

    @property
    def evaluable(self) -> str:
        return grafana_to_promql(self.expr)


def grafana_to_promql(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    # Template variables with "All" (allValue ".*"): $name or ${name} inside regex matchers.
    return re.sub(r"\$\{?([a-z_]+)\}?", ".*", expr)


def load_dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in DASHBOARDS}


def panel_queries(must_have: set[tuple[str, str]] | None = None) -> Iterator[PanelQuery]:
    must_have = must_have or set()
    for board in load_dashboards().values():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                yield PanelQuery(
                    board["title"],
                    panel["title"],
                    target["refId"],
                    target["expr"],
                    (board["title"], panel["title"]) in must_have,
                )


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES_FILE.read_text())["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def load_generator():
    """observability/generate.py as a module (it is a script, not a package)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        "observability_generate", REPO_ROOT / "observability" / "generate.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def must_have_panels() -> set[tuple[str, str]]:
    gen = load_generator()
    return {
        (d.title, p.title) for make in gen.DASHBOARDS for d in [make()] for p in d.panels if p.must_have_data
    }
