"""Render the chart with the real Helm engine and check objects the way a cluster would.

- ``render()``: Helm's own template engine (PyPI ``helm-python-sdk``, Helm v4's Go SDK over a C ABI),
  offline: ``lookup`` returns nothing, ``values.schema.json`` is enforced.
- ``validate_core()``: built-in kinds against Kubernetes' OpenAPI schemas (``kubernetes-validate``,
  strict: unknown fields are errors, as ``kubectl apply`` with server-side field validation).
- ``CrdValidator``: custom resources against the upstream CRDs' ``openAPIV3Schema`` turned into
  JSON Schema, with each schema's ``default``s applied before checking, as the API server does.
- ``expand_k8s_vars()`` / ``pod_env()``: what the kubelet does to a container's command and env.
- ``controller_version_deployment()``: what the Temporal Worker Controller makes of a
  ``WorkerDeployment`` for one version.
"""

from __future__ import annotations

import base64
import copy
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "batch-inference"
K8S_DIR = REPO_ROOT / "k8s"
RELEASE = "batch-inference"  # the release name the Jobs in k8s/ expect
NAMESPACE = "inference"  # not "default": catches hard-coded namespaces


def _newest_kube_version() -> str:
    try:
        from kubernetes_validate.utils import latest_version

        return latest_version()
    except ImportError:  # reported by the tests that need it
        return "1.33.0"


# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas installed.
KUBE_VERSIONS = ("1.27.0", _newest_kube_version())

# Value sets rendered and validated by the tests (the issue's list plus one with everything on).
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "existing-secret": {
        "auth": {"existingSecret": "my-serve-auth", "tokenKey": "current", "acceptedTokensKey": "accepted"}
    },
    "keda": {"keda": {"enabled": True, "authenticationRef": "temporal-auth"}},
    "no-networkpolicy": {  # and the other optional parts off
        "networkPolicy": {"enabled": False},
        "serve": {
            "autoscaling": {"enabled": False},
            "rayAuthMode": "disabled",
            "upgradeStrategy": {"type": "None"},
        },
        "worker": {
            "podDisruptionBudget": {"enabled": False},
            "serviceAccount": {"create": False, "name": "batch"},
        },
    },
    "dev-temporal": {"temporalDev": {"enabled": True}, "temporal": {"namespace": "batches"}},
    # What k8s/kind-e2e.sh installs.
    "kind": yaml.safe_load((REPO_ROOT / "k8s" / "kind-values.yaml").read_text()),
    "everything": {
        "commonLabels": {"team": "ml"},
        "imagePullSecrets": [{"name": "registry"}],
        "temporal": {
            "address": "my-ns.a1b2c.tmprl.cloud:7233",
            "namespace": "my-ns.a1b2c",
            "tls": {
                "enabled": True,
                "existingSecret": "temporal-mtls",
                "serverName": "my-ns.a1b2c.tmprl.cloud",
            },
        },
        "auth": {"acceptedTokensKey": "accepted", "token": "a-fixed-token-for-tests-0123456789"},
        "serve": {
            "image": {"repository": "registry.example/ml/batch-inference-serve", "tag": "1.2.3"},
            "deployments": {
                "iris": {
                    "autoscaling_config": {
                        "min_replicas": 1,
                        "max_replicas": 4,
                        "target_ongoing_requests": 64,
                    },
                    "user_config": {"max_batch_size": 32},
                    "ray_actor_options": {"num_cpus": 1},
                },
                "Ingress": {"num_replicas": 2, "max_ongoing_requests": 256},
            },
            "applicationArgs": {"default_model": "iris"},
            "extraEnv": [{"name": "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "value": "10"}],
            "highThroughput": {"enabled": True},
            "upgradeStrategy": {
                "type": "NewClusterWithIncrementalUpgrade",
                "clusterUpgradeOptions": {"gatewayClassName": "istio", "maxSurgePercent": 25},
            },
            "workerGroups": [
                {
                    "name": "cpu",
                    "replicas": 1,
                    "minReplicas": 1,
                    "maxReplicas": 8,
                    "resources": {
                        "requests": {"cpu": "4", "memory": "8Gi"},
                        "limits": {"cpu": "4", "memory": "8Gi"},
                    },
                },
                {
                    "name": "gpu",
                    "replicas": 0,
                    "minReplicas": 0,
                    "maxReplicas": 2,
                    "resources": {"limits": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 1}},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                },
            ],
        },
        "worker": {
            "replicas": 3,
            "gracefulShutdownSeconds": 120,
            "dataVolume": {"existingClaim": "batch-data"},
            "objectStore": {
                "credentialsSecret": "object-store-keys",
                "s3": {"endpointUrl": "http://minio.storage.svc:9000", "region": "eu-west-1"},
                "gcs": {"endpointUrl": "fake-gcs.storage.svc:4443", "credentialsSecret": "gcs-key"},
            },
            "extraEnv": [{"name": "AWS_REGION", "value": "eu-west-1"}],
            "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"}},
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "worker"}},
                }
            ],
        },
        "keda": {"enabled": True},
        "networkPolicy": {
            "metricsClients": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
            ],
            "extraServeClients": [{"podSelector": {"matchLabels": {"app": "debug"}}}],
        },
    },
}


# --- rendering --------------------------------------------------------------------------------


def _chart():
    import helm_python

    return helm_python.Chart.load(CHART)


def render_files(
    values: dict[str, Any] | None = None, name: str = RELEASE, namespace: str = NAMESPACE
) -> dict[str, str]:
    """Template path -> rendered text, from Helm's own engine (as ``helm install --dry-run``)."""
    with _chart() as chart:
        return chart.render(values or {}, name=name, namespace=namespace, is_install=True)


def render(
    values: dict[str, Any] | None = None, name: str = RELEASE, namespace: str = NAMESPACE
) -> list[dict]:
    """Every object the chart would create, parsed."""
    docs: list[dict] = []
    for path, text in sorted(render_files(values, name, namespace).items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def lint(values: dict[str, Any] | None = None) -> dict[str, Any]:
    import helm_python

    return helm_python.lint(CHART, values, strict=True, namespace=NAMESPACE)


def find(docs: Iterable[dict], kind: str, name: str | None = None) -> dict:
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, (
        f"expected one {kind} {name or ''}, found {[m['metadata']['name'] for m in matches]}"
    )
    return matches[0]


def kinds(docs: Iterable[dict]) -> list[str]:
    return sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)


def secret_data(secret: dict) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def chart_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def load_k8s(name: str) -> dict:
    (doc,) = [d for d in yaml.safe_load_all((K8S_DIR / name).read_text()) if d]
    return doc


# --- what the kubelet does ----------------------------------------------------------------------

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_k8s_vars(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in command/args: defined vars expand, ``$$`` escapes,
    undefined references stay as written."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(sub, text)


def pod_env(
    container: dict,
    config_maps: dict[str, dict[str, str]] | None = None,
    pod_metadata: dict | None = None,
    overrides: dict[str, str] | None = None,
    secrets: dict[str, dict[str, str]] | None = None,
) -> dict[str, str]:
    """A container's environment as the kubelet builds it: ``envFrom`` first, then ``env`` (which
    wins), ``$(VAR)`` references to earlier vars expanded, ``fieldRef`` from the pod's metadata.
    ``overrides`` replace values afterwards (e.g. cluster DNS names -> loopback). ``secrets``:
    the decoded data of the Secrets ``envFrom`` and ``secretKeyRef`` may reference, by name."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if "secretRef" in source:
            kind, ref, found = "Secret", source["secretRef"], secrets or {}
        else:
            kind, ref, found = "ConfigMap", source.get("configMapRef"), config_maps or {}
        assert ref, f"only configMapRef and secretRef envFrom are emulated: {source}"
        data = found.get(ref["name"])
        assert data is not None, f"{kind} {ref['name']!r} is not among the given objects"
        env.update({source.get("prefix", "") + k: v for k, v in data.items()})
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = expand_k8s_vars(str(item["value"]), env)
        elif "fieldRef" in (item.get("valueFrom") or {}):
            env[item["name"]] = _field_ref(item["valueFrom"]["fieldRef"]["fieldPath"], pod_metadata or {})
        elif "secretKeyRef" in (item.get("valueFrom") or {}):
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = (secrets or {})[ref["name"]][ref["key"]]
        else:
            raise AssertionError(f"env source not emulated: {item}")
    env.update(overrides or {})
    return env


def _field_ref(path: str, metadata: dict) -> str:
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return metadata.get(m.group(1), {})[m.group(2)]
    m = re.fullmatch(r"metadata\.(name|namespace|uid)", path)
    if m:
        return metadata[m.group(1)]
    raise AssertionError(f"fieldRef not emulated: {path}")


# --- what the Temporal Worker Controller does ----------------------------------------------------

# Where the controller mounts a Connection's mTLS Secret in every container (v1.8.1).
CONTROLLER_TLS_MOUNT = "/etc/temporal/tls"


def controller_version_deployment(worker_deployment: dict, connection: dict, build_id: str) -> dict:
    """The Deployment the Temporal Worker Controller (v1.8.1) runs for one version (build id) of
    a ``WorkerDeployment``: its pod template plus what the controller adds to every container,
    ported from temporal-worker-controller v1.8.1 ``internal/k8s/deployments.go``
    (``NewDeploymentWithOwnerRef``, ``ApplyControllerPodSpecModifications``), env in its order."""
    meta, spec, conn = worker_deployment["metadata"], worker_deployment["spec"], connection["spec"]
    selector = {"temporal.io/deployment-name": meta["name"], "temporal.io/build-id": build_id}
    env: list[dict] = [
        {"name": "TEMPORAL_ADDRESS", "value": conn["hostPort"]},
        {"name": "TEMPORAL_NAMESPACE", "value": spec["workerOptions"]["temporalNamespace"]},
        # computeWorkerDeploymentName: "<k8s namespace>/<WorkerDeployment name>".
        {"name": "TEMPORAL_DEPLOYMENT_NAME", "value": f"{meta.get('namespace', NAMESPACE)}/{meta['name']}"},
        {"name": "TEMPORAL_WORKER_BUILD_ID", "value": build_id},
    ]
    if server_name := (conn.get("tls") or {}).get("serverName"):
        env.append({"name": "TEMPORAL_TLS_SERVER_NAME", "value": server_name})
    mounts: list[dict] = []
    volumes: list[dict] = []
    if "mutualTLSSecretRef" in conn:
        env += [
            {"name": "TEMPORAL_TLS", "value": "true"},
            {"name": "TEMPORAL_TLS_CLIENT_KEY_PATH", "value": f"{CONTROLLER_TLS_MOUNT}/tls.key"},
            {"name": "TEMPORAL_TLS_CLIENT_CERT_PATH", "value": f"{CONTROLLER_TLS_MOUNT}/tls.crt"},
        ]
        mounts.append({"name": "temporal-tls", "mountPath": CONTROLLER_TLS_MOUNT})
        volumes.append({"name": "temporal-tls", "secret": {"secretName": conn["mutualTLSSecretRef"]["name"]}})
    elif "apiKeySecretRef" in conn:
        env.append({"name": "TEMPORAL_API_KEY", "valueFrom": {"secretKeyRef": conn["apiKeySecretRef"]}})
    pod = copy.deepcopy(spec["template"])
    for container in pod["spec"]["containers"]:
        container.setdefault("env", []).extend(copy.deepcopy(env))
        container.setdefault("volumeMounts", []).extend(copy.deepcopy(mounts))
    pod["spec"].setdefault("volumes", []).extend(volumes)
    pod.setdefault("metadata", {}).setdefault("labels", {}).update(selector)
    deployment_spec: dict[str, Any] = {"selector": {"matchLabels": selector}, "template": pod}
    if spec.get("replicas") is not None:
        deployment_spec["replicas"] = spec["replicas"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{meta['name']}-{build_id}", "labels": selector},
        "spec": deployment_spec,
    }


def job_pod_metadata(job: dict) -> dict:
    """The labels the Job controller puts on its pods (batch.kubernetes.io/job-name, GA in 1.27)."""
    name = job["metadata"]["name"]
    labels = dict(job["spec"]["template"]["metadata"].get("labels") or {})
    labels.update({"batch.kubernetes.io/job-name": name, "job-name": name})
    return {"name": f"{name}-abcde", "namespace": NAMESPACE, "labels": labels}


def dockerfile_entrypoint(path: Path) -> list[str]:
    """The exec-form ENTRYPOINT of a Dockerfile (what a container without `command` runs)."""
    import json

    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("ENTRYPOINT ")]
    assert lines, f"{path.name} has no ENTRYPOINT"
    return json.loads(lines[-1].removeprefix("ENTRYPOINT "))


# --- schemas -------------------------------------------------------------------------------------


def validate_core(doc: dict, version: str) -> None:
    """Strict validation of a built-in kind; a missing schema is an error here."""
    import kubernetes_validate

    kubernetes_validate.validate(doc, version, strict=True)


def crd_dirs() -> list[Path]:
    env = os.environ.get("BATCH_INFERENCE_CRD_DIR")
    candidates = [Path(env)] if env else []
    candidates += [REPO_ROOT.parent / "shared" / "crds", Path("/work/shared/crds")]
    return [p for p in candidates if p.is_dir()]


def _loader():
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def openapi_to_jsonschema(node: Any) -> Any:
    """A CRD's structural OpenAPI v3 schema as JSON Schema (draft 2020-12).

    ``nullable`` allows null; ``x-kubernetes-int-or-string`` allows both; objects with
    ``properties`` and neither ``additionalProperties`` nor ``x-kubernetes-preserve-unknown-fields``
    reject unknown fields (the API server's strict field validation, ``kubectl apply``'s default).
    CEL rules (``x-kubernetes-validations``) are not evaluated.
    """
    if isinstance(node, list):
        return [openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: openapi_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    out.pop("nullable", None)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def apply_defaults(instance: Any, schema: dict) -> Any:
    """Fill in missing fields that have a ``default``, recursively (as the API server does on
    create, before validating ``required``)."""
    if isinstance(instance, dict) and schema.get("type") == "object":
        for key, sub in (schema.get("properties") or {}).items():
            if key not in instance and "default" in sub:
                instance[key] = copy.deepcopy(sub["default"])
            if key in instance:
                apply_defaults(instance[key], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, value in instance.items():
                if key not in (schema.get("properties") or {}):
                    apply_defaults(value, extra)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for item in instance:
            apply_defaults(item, schema["items"])
    return instance


class CrdValidator:
    """Validates custom resources against the CRDs found in a folder (group/version/kind)."""

    def __init__(self, folder: Path):
        self.schemas: dict[tuple[str, str], dict] = {}
        for path in sorted(folder.glob("*.yaml")):
            for crd in yaml.load_all(path.read_text(), Loader=_loader()):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
                for version in crd["spec"]["versions"]:
                    if version.get("served", True):
                        api = f"{group}/{version['name']}"
                        self.schemas[(api, kind)] = version["schema"]["openAPIV3Schema"]

    def knows(self, doc: dict) -> bool:
        return (doc["apiVersion"], doc["kind"]) in self.schemas

    def validate(self, doc: dict) -> dict:
        """Returns the object with defaults applied; raises jsonschema.ValidationError."""
        import jsonschema

        raw = self.schemas[(doc["apiVersion"], doc["kind"])]
        defaulted = apply_defaults(copy.deepcopy(doc), raw)
        schema = openapi_to_jsonschema(raw)
        # metadata is validated by the API server itself, not by the CRD schema.
        schema.setdefault("properties", {})["metadata"] = {"type": "object"}
        jsonschema.Draft202012Validator(schema).validate(defaulted)
        return defaulted
