"""The worker's Serve settings as chart values: worker.serveWire, worker.serveMaxConnections and
worker.adaptiveConcurrency render as the env WorkerSettings reads, with the worker's defaults,
and bad values are refused before anything reaches a cluster."""

from __future__ import annotations

import json

import pytest

from services import constants as c
from services.worker.concurrency import AdaptiveLimiter, NoLimit
from services.worker.config import WorkerSettings
from tests.helpers.k8s import CHART, chart_values, find, pod_env, render

SETTINGS_ENV = (
    c.ENV_SERVE_WIRE,
    c.ENV_SERVE_MAX_CONNECTIONS,
    c.ENV_SERVE_ADAPTIVE_CONCURRENCY,
    c.ENV_SERVE_CONCURRENCY_MIN,
    c.ENV_SERVE_CONCURRENCY_MAX,
)


def worker_env(values: dict | None = None) -> dict[str, str]:
    deployment = find(render(values), "Deployment", "batch-inference-worker")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return pod_env(container)


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> WorkerSettings:
    """WorkerSettings as the pod's worker reads them, from the rendered env of these names."""
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    for name in SETTINGS_ENV:
        if name in env:
            monkeypatch.setenv(name, env[name])
    return WorkerSettings()


def test_the_chart_defaults_are_the_workers() -> None:
    worker = chart_values()["worker"]
    fields = WorkerSettings.model_fields
    assert worker["serveWire"] == fields["serve_wire"].default
    assert worker["serveMaxConnections"] == fields["serve_max_connections"].default
    adaptive = worker["adaptiveConcurrency"]
    assert adaptive["enabled"] is fields["serve_adaptive_concurrency"].default
    assert adaptive["min"] == fields["serve_concurrency_min"].default
    assert adaptive["max"] is fields["serve_concurrency_max"].default is None


def test_the_schema_allows_the_wires_the_worker_takes() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    wire = schema["properties"]["worker"]["properties"]["serveWire"]
    assert tuple(wire["enum"]) == c.SERVE_WIRES


def test_default_render_gives_the_worker_its_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    env = worker_env()
    assert c.ENV_SERVE_CONCURRENCY_MAX not in env  # null: the worker's own (serveMaxConnections)
    settings = settings_from(env, monkeypatch)
    assert (settings.serve_wire, settings.serve_max_connections) == ("auto", 32)
    assert settings.serve_adaptive_concurrency and settings.serve_concurrency_min == 1
    assert isinstance(settings.limiter(), AdaptiveLimiter)


def test_set_values_reach_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    env = worker_env(
        {
            "worker": {
                "serveWire": "json",
                "serveMaxConnections": 64,
                "adaptiveConcurrency": {"min": 4, "max": 48},
            }
        }
    )
    settings = settings_from(env, monkeypatch)
    assert settings.serve_wire == "json"
    assert (
        settings.serve_max_connections,
        settings.serve_concurrency_min,
        settings.serve_concurrency_max,
    ) == (
        64,
        4,
        48,
    )
    limiter = settings.limiter()
    assert isinstance(limiter, AdaptiveLimiter)
    assert (limiter.settings.min_limit, limiter.settings.max_limit) == (4, 48)

    off = settings_from(worker_env({"worker": {"adaptiveConcurrency": {"enabled": False}}}), monkeypatch)
    assert off.serve_adaptive_concurrency is False
    limit: list[int] = []
    assert isinstance(off.limiter(limit.append), NoLimit) and limit == [32]


BAD_VALUES = [
    ({"serveWire": "arrow"}, r"/worker/serveWire'?: value must be one of 'auto', 'json'"),
    ({"serveWire": True}, r"/worker/serveWire'?: got boolean, want string"),
    ({"serveMaxConnections": 0}, r"/worker/serveMaxConnections'?: minimum"),
    ({"adaptiveConcurrency": {"enabled": "yes"}}, r"/worker/adaptiveConcurrency/enabled'?: got string"),
    ({"adaptiveConcurrency": {"min": 0}}, r"/worker/adaptiveConcurrency/min'?: minimum"),
    ({"adaptiveConcurrency": {"max": "ten"}}, r"/worker/adaptiveConcurrency/max'?: got string"),
    ({"adaptiveConcurrency": {"maximum": 8}}, r"additional properties 'maximum' not allowed"),
]


@pytest.mark.parametrize(("worker", "message"), BAD_VALUES, ids=[str(b[0]) for b in BAD_VALUES])
def test_schema_refuses_bad_values(worker: dict, message: str) -> None:
    import helm_python

    with pytest.raises(helm_python.HelmValuesError, match=message):
        render({"worker": worker})


@pytest.mark.parametrize(
    ("worker", "message"),
    [
        ({"adaptiveConcurrency": {"max": 64}}, r"min <= max <= worker\.serveMaxConnections, got 1, 64, 32"),
        ({"adaptiveConcurrency": {"min": 8, "max": 4}}, r"got 8, 4, 32"),
        ({"adaptiveConcurrency": {"min": 40}}, r"min \(40\) is above worker\.serveMaxConnections \(32\)"),
    ],
)
def test_bounds_the_worker_would_refuse_fail_the_render(
    worker: dict, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import helm_python

    with pytest.raises(helm_python.HelmRenderError, match=message):
        render({"worker": worker})
    # The same bounds as env: the worker itself refuses them at start.
    adaptive = {"min": 1, **worker["adaptiveConcurrency"]}
    env = {c.ENV_SERVE_CONCURRENCY_MIN: str(adaptive["min"])}
    if "max" in adaptive:
        env[c.ENV_SERVE_CONCURRENCY_MAX] = str(adaptive["max"])
    with pytest.raises(ValueError, match=c.ENV_SERVE_CONCURRENCY_MIN):
        settings_from(env, monkeypatch)
