"""values.schema.json and the templates' own checks reject bad values with a readable message
that names the offending value, before anything reaches a cluster."""

from __future__ import annotations

import re

import pytest

from tests.helpers.k8s import CHART, chart_values, render

# (kind of mistake, values, what the message must say)
BAD_VALUES = [
    ("wrong type", {"worker": {"replicas": "two"}}, r"/worker/replicas'?: got string, want integer"),
    ("typo in a key", {"worker": {"replica": 2}}, r"/worker'?: additional properties 'replica' not allowed"),
    (
        "out of range",
        {"worker": {"gracefulShutdownSeconds": -1}},
        r"/worker/gracefulShutdownSeconds'?: minimum",
    ),
    ("port out of range", {"worker": {"metricsPort": 70000}}, r"/worker/metricsPort'?: maximum"),
    (
        "not one of the allowed values",
        {"worker": {"image": {"pullPolicy": "Sometimes"}}},
        r"/worker/image/pullPolicy'?: value must be one of 'Always', 'IfNotPresent', 'Never'",
    ),
    (
        "bad format",
        {"temporal": {"address": "temporal-frontend"}},
        r"/temporal/address'?: .*does not match pattern",
    ),
    ("empty required string", {"temporal": {"taskQueue": ""}}, r"/temporal/taskQueue'?: minLength"),
    (
        "serve setting at the wrong level",
        {"serve": {"deployments": {"iris": {"max_batch_size": 8}}}},
        r"/serve/deployments/iris'?: additional properties 'max_batch_size' not allowed",
    ),
    (
        "batch size out of range",
        {"serve": {"deployments": {"iris": {"user_config": {"max_batch_size": 0}}}}},
        r"/serve/deployments/iris/user_config/max_batch_size'?: minimum",
    ),
    (
        "grace margin too small",
        {"worker": {"terminationGraceMarginSeconds": 1}},
        r"/worker/terminationGraceMarginSeconds'?: minimum",
    ),
    ("name too long for KubeRay", {"fullnameOverride": "x" * 48}, r"/fullnameOverride'?: maxLength"),
    ("no worker group", {"serve": {"workerGroups": []}}, r"/serve/workerGroups'?: minItems"),
    ("short fixed token", {"auth": {"token": "secret"}}, r"/auth/token'?: .*does not match pattern"),
    (
        "endpoint port as a number",
        {"worker": {"objectStore": {"s3": {"endpointUrl": 9000}}}},
        r"/worker/objectStore/s3/endpointUrl'?: got number, want string",
    ),
    (
        "endpoint without a scheme",
        {"worker": {"objectStore": {"s3": {"endpointUrl": "minio:9000"}}}},
        r"/worker/objectStore/s3/endpointUrl'?: .*does not match pattern",
    ),
    (
        "GCS endpoint with a path",
        {"worker": {"objectStore": {"gcs": {"endpointUrl": "http://fake-gcs:4443/storage/v1"}}}},
        r"/worker/objectStore/gcs/endpointUrl'?: .*does not match pattern",
    ),
    (
        "a key as a plain value",
        {"worker": {"objectStore": {"s3": {"secretAccessKey": "wJalrXUtnFEMI"}}}},
        r"/worker/objectStore/s3'?: additional properties 'secretAccessKey' not allowed",
    ),
    (
        "Secret given as an object",
        {"worker": {"objectStore": {"credentialsSecret": {"name": "s3-keys"}}}},
        r"/worker/objectStore/credentialsSecret'?: got object, want string",
    ),
    (
        "unknown upgrade strategy",
        {"serve": {"upgradeStrategy": {"type": "Recreate"}}},
        r"/serve/upgradeStrategy/type'?: value must be one of 'NewCluster', ",
    ),
    (
        "incremental upgrade without a GatewayClass",
        {"serve": {"upgradeStrategy": {"type": "NewClusterWithIncrementalUpgrade"}}},
        r"/serve/upgradeStrategy/clusterUpgradeOptions/gatewayClassName'?: minLength",
    ),
    (
        "traffic step over 100%",
        {"serve": {"upgradeStrategy": {"clusterUpgradeOptions": {"stepSizePercent": 150}}}},
        r"/serve/upgradeStrategy/clusterUpgradeOptions/stepSizePercent'?: maximum",
    ),
]


@pytest.mark.parametrize(("kind", "values", "message"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_schema_rejects_bad_values_readably(kind: str, values: dict, message: str) -> None:
    import helm_python

    with pytest.raises(helm_python.HelmValuesError) as err:
        render(values)
    text = str(err.value)
    assert "values don't meet the specifications of the schema" in text
    assert re.search(message, text), text
    assert len(text) < 600, f"one clear line, not a wall of text: {text}"


def test_template_checks_reject_what_the_schema_cannot_see() -> None:
    import helm_python

    with pytest.raises(
        helm_python.HelmRenderError, match=r'no deployment named "iriss" \(known: Ingress, echo, iris\)'
    ):
        render({"serve": {"deployments": {"iriss": {"num_replicas": 2}}}})
    with pytest.raises(helm_python.HelmRenderError, match=r"worker\.serviceAccount\.name is required"):
        render({"worker": {"serviceAccount": {"create": False}}})
    incremental = {
        "type": "NewClusterWithIncrementalUpgrade",
        "clusterUpgradeOptions": {"gatewayClassName": "x"},
    }
    with pytest.raises(
        helm_python.HelmRenderError, match=r"NewClusterWithIncrementalUpgrade needs serve\.autoscaling"
    ):
        render({"serve": {"upgradeStrategy": incremental, "autoscaling": {"enabled": False}}})


def test_schema_covers_every_default_value() -> None:
    """Every key in values.yaml is declared in the schema (additionalProperties: false would
    otherwise reject the chart's own defaults), and the defaults pass."""
    import helm_python

    with helm_python.Chart.load(CHART) as chart:
        chart.validate_schema(chart_values())
        schema = chart.schema
    assert schema is not None

    def walk(values: dict, node: dict, path: str) -> None:
        props = node.get("properties", {})
        for key, value in values.items():
            if key in props:
                sub = props[key]
                if isinstance(value, dict) and sub.get("additionalProperties") is False:
                    walk(value, sub, f"{path}.{key}")
            else:
                assert node.get("additionalProperties") is not False, f"{path}.{key} is not in the schema"

    walk(chart_values(), schema, "")
