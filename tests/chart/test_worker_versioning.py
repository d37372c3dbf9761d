"""The chart's Worker Versioning values: each worker pod a version of a Worker Deployment whose
build id is the image tag; off, the worker is unversioned as before."""

from __future__ import annotations

import pytest

from services import constants as c
from services.worker.config import WorkerSettings
from tests.helpers.k8s import RELEASE, find, render, validate_core


def worker_env(values: dict) -> dict[str, str]:
    (container,) = find(render(values), "Deployment", f"{RELEASE}-worker")["spec"]["template"]["spec"][
        "containers"
    ]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_unversioned_by_default() -> None:
    env = worker_env({})
    assert c.ENV_TEMPORAL_DEPLOYMENT_NAME not in env and c.ENV_TEMPORAL_BUILD_ID not in env


@pytest.mark.parametrize(
    ("values", "deployment", "build_id"),
    [
        ({"worker": {"versioning": {"enabled": True}}}, f"{RELEASE}-worker", "0.1.0"),  # appVersion
        (
            {"worker": {"versioning": {"enabled": True, "deploymentName": "bi"}, "image": {"tag": "2.3.1"}}},
            "bi",
            "2.3.1",
        ),
    ],
)
def test_versioned_workers_take_their_build_id_from_the_image_tag(
    values: dict, deployment: str, build_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = worker_env(values)
    assert (env[c.ENV_TEMPORAL_DEPLOYMENT_NAME], env[c.ENV_TEMPORAL_BUILD_ID]) == (deployment, build_id)
    # What the worker makes of them: the version the pod is.
    monkeypatch.setenv(c.ENV_TEMPORAL_DEPLOYMENT_NAME, deployment)
    monkeypatch.setenv(c.ENV_TEMPORAL_BUILD_ID, build_id)
    version = WorkerSettings().deployment_config().version
    assert (version.deployment_name, version.build_id) == (deployment, build_id)


def test_the_versioned_deployment_is_valid() -> None:
    docs = render({"worker": {"versioning": {"enabled": True}}})
    validate_core(find(docs, "Deployment", f"{RELEASE}-worker"), "1.27")


def test_a_deployment_name_with_a_dot_is_refused() -> None:
    import helm_python

    with pytest.raises(helm_python.HelmValuesError, match="deploymentName"):
        render({"worker": {"versioning": {"enabled": True, "deploymentName": "batch.inference"}}})
