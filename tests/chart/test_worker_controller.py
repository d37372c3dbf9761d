"""The chart's Temporal Worker Controller mode (worker.versioning.controller): the controller's
WorkerDeployment and Connection (temporal.io/v1alpha1, v1.8.1) instead of the worker Deployment,
with the same pod template; every object valid against Kubernetes' schemas and the controller's
CRDs (their CEL rules checked here by hand); what the controller then runs, emulated, is a
valid Deployment whose worker reads the same settings and Secret files as the plain one."""

from __future__ import annotations

import copy
import itertools
import os
import re

import jsonschema
import pytest
import yaml

from services import constants as c
from services.worker.config import WorkerSettings
from tests.helpers.k8s import (
    CONTROLLER_TLS_MOUNT,
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    controller_version_deployment,
    find,
    lint,
    pod_env,
    render,
    render_files,
    validate_core,
)

BUILD_ID = "v2-5f7d9c"  # as the controller names a version: the image tag and a template hash
API_KEY = "tmprl-api-key-for-tests-0123456789"  # what the API-key Secret would hold in a cluster
CONTROLLER = {"enabled": True, "controller": {"enabled": True}}


def with_controller(values: dict, **controller) -> dict:
    """``values`` in controller mode (KEDA off: it scales one Deployment)."""
    out = copy.deepcopy(values)
    versioning = out.setdefault("worker", {}).setdefault("versioning", {})
    versioning.update(copy.deepcopy(CONTROLLER))
    versioning["controller"].update(controller)
    out.setdefault("keda", {})["enabled"] = False
    return out


MTLS = {
    "address": "my-ns.a1b2c.tmprl.cloud:7233",
    "namespace": "my-ns.a1b2c",
    "tls": {"enabled": True, "existingSecret": "temporal-mtls", "serverName": "my-ns.a1b2c.tmprl.cloud"},
}
API_KEY_AUTH = {
    "address": "eu-west-1.aws.api.temporal.io:7233",
    "namespace": "my-ns.a1b2c",
    "tls": {"serverName": "my-ns.a1b2c.tmprl.cloud"},
    "apiKey": {"existingSecret": "temporal-api-key", "key": "api-key"},
}
# Base values, each rendered in both modes.
BASES: dict[str, dict] = {
    "defaults": {},
    "mtls": {"temporal": MTLS, "auth": {"token": "a-fixed-token-for-tests-0123456789"}},
    "api-key": {"temporal": API_KEY_AUTH},
    "dev-temporal": {"temporalDev": {"enabled": True}, "temporal": {"namespace": "batches"}},
    "everything": {k: v for k, v in VALUE_SETS["everything"].items() if k != "keda"},
}
CONTROLLER_SETS: dict[str, dict] = {name: with_controller(values) for name, values in BASES.items()}
CONTROLLER_SETS["all-at-once-existing-connection"] = with_controller(
    {},
    rollout={"strategy": "AllAtOnce"},
    existingConnection="shared-temporal",
    unsafeCustomBuildId="1.4.2",
    sunset={"scaledownDelay": "6h", "deleteDelay": "168h"},
)
CONTROLLER_SETS["manual"] = with_controller({}, rollout={"strategy": "Manual", "steps": []})


@pytest.fixture(scope="module")
def controller_rendered() -> dict[str, list[dict]]:
    return {name: render(values) for name, values in CONTROLLER_SETS.items()}


def plain(name: str) -> list[dict]:
    """The same base values as a plain Deployment with Worker Versioning."""
    values = copy.deepcopy(BASES[name])
    values.setdefault("worker", {})["versioning"] = {"enabled": True}
    return render(values)


def worker_deployment(docs: list[dict]) -> dict:
    return find(docs, "WorkerDeployment", f"{RELEASE}-worker")


def connection_of(docs: list[dict], wd: dict) -> dict:
    """The Connection the WorkerDeployment names: rendered, or (existingConnection) one made up
    as its owner would have it."""
    name = wd["spec"]["workerOptions"]["connectionRef"]["name"]
    rendered = [d for d in docs if d["kind"] == "Connection"]
    if rendered:
        return find(rendered, "Connection", name)
    return {"apiVersion": "temporal.io/v1alpha1", "kind": "Connection", "metadata": {"name": name},
            "spec": {"hostPort": "temporal-frontend.temporal.svc.cluster.local:7233"}}  # fmt: skip


def version_deployment(docs: list[dict]) -> dict:
    """What the controller would run for version BUILD_ID."""
    wd = worker_deployment(docs)
    return controller_version_deployment(wd, connection_of(docs, wd), BUILD_ID)


# --- the CRDs' CEL rules and the controller's webhook, which the JSON Schema check skips --------


def go_duration_s(text: str) -> float:
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a Go duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def cel_violations(doc: dict) -> list[str]:
    """The x-kubernetes-validations of temporal.io_workerdeployments/connections.yaml (v1.8.1)
    and the webhook's ramp ordering (api/v1alpha1/workerdeployment_webhook.go), by hand."""
    errors = []
    if len(doc["metadata"]["name"]) > 63:
        errors.append("name cannot be more than 63 characters")
    spec = doc["spec"]
    if doc["kind"] == "Connection" and "mutualTLSSecretRef" in spec and "apiKeySecretRef" in spec:
        errors.append("Only one of mutualTLSSecretRef or apiKeySecretRef may be set")
    if doc["kind"] == "WorkerDeployment":
        rollout = spec["rollout"]
        steps = rollout.get("steps") or []
        if rollout["strategy"] == "Progressive" and not steps:
            errors.append("steps are required for Progressive rollout")
        errors += [
            "pause duration must be at least 30s" for s in steps if go_duration_s(s["pauseDuration"]) < 30
        ]
        ramps = [s["rampPercentage"] for s in steps]
        if any(b <= a for a, b in itertools.pairwise(ramps)):
            errors.append("rampPercentage must increase between each step")
        for delay in spec["sunset"].values():
            go_duration_s(delay)
    return errors


def test_cel_check_is_not_vacuous(controller_rendered) -> None:
    wd = worker_deployment(controller_rendered["defaults"])
    assert cel_violations(wd) == []
    for mutate, message in [
        (lambda d: d["spec"]["rollout"]["steps"][0].update(pauseDuration="10s"), "at least 30s"),
        (lambda d: d["spec"]["rollout"]["steps"][1].update(rampPercentage=5), "must increase"),
        (lambda d: d["spec"]["rollout"].pop("steps"), "steps are required"),
    ]:
        doc = copy.deepcopy(wd)
        mutate(doc)
        assert any(message in e for e in cel_violations(doc))
    connection = copy.deepcopy(find(controller_rendered["mtls"], "Connection"))
    connection["spec"]["apiKeySecretRef"] = {"name": "k", "key": "api-key"}
    assert cel_violations(connection) == ["Only one of mutualTLSSecretRef or apiKeySecretRef may be set"]


# --- what is rendered ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONTROLLER_SETS))
def test_lint_is_clean(name: str) -> None:
    report = lint(CONTROLLER_SETS[name])
    assert report["errors"] == [] and report["messages"] == [], report


@pytest.mark.parametrize("name", list(CONTROLLER_SETS))
def test_the_controller_resources_replace_the_worker_deployment(controller_rendered, name: str) -> None:
    docs = controller_rendered[name]
    worker_kinds = {
        d["kind"] for d in docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"
    }
    assert "Deployment" not in worker_kinds and "ScaledObject" not in worker_kinds
    assert not [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == f"{RELEASE}-worker"]
    wd = worker_deployment(docs)
    controller = CONTROLLER_SETS[name]["worker"]["versioning"]["controller"]
    values_temporal = CONTROLLER_SETS[name].get("temporal", {})
    connections = [d for d in docs if d["kind"] == "Connection"]
    if controller.get("existingConnection"):
        assert connections == []
        assert wd["spec"]["workerOptions"]["connectionRef"]["name"] == controller["existingConnection"]
    else:
        (connection,) = connections
        assert wd["spec"]["workerOptions"]["connectionRef"]["name"] == connection["metadata"]["name"]
        # The same Temporal as the clients' ConfigMap (the Jobs that start batches).
        client = find(docs, "ConfigMap", f"{RELEASE}-client")["data"]
        assert connection["spec"]["hostPort"] == client[c.ENV_TEMPORAL_ADDRESS]
    assert wd["spec"]["workerOptions"]["temporalNamespace"] == values_temporal.get("namespace", "default")
    assert wd["spec"]["replicas"] == CONTROLLER_SETS[name].get("worker", {}).get("replicas", 2)
    rollout = controller.get("rollout", {"strategy": "Progressive"})
    assert wd["spec"]["rollout"]["strategy"] == rollout["strategy"]
    if rollout["strategy"] == "Progressive":
        assert [s["rampPercentage"] for s in wd["spec"]["rollout"]["steps"]] == [10, 50]
    else:
        assert "steps" not in wd["spec"]["rollout"]
    assert wd["spec"]["sunset"] == controller.get("sunset", {"scaledownDelay": "1h", "deleteDelay": "24h"})
    assert wd["spec"]["workerOptions"].get("unsafeCustomBuildID") == controller.get("unsafeCustomBuildId")


def test_the_plain_modes_render_no_controller_resources() -> None:
    for values in ({}, {"worker": {"versioning": {"enabled": True}}}):
        assert not {"WorkerDeployment", "Connection"} & {d["kind"] for d in render(values)}


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", list(CONTROLLER_SETS))
def test_every_object_is_valid(controller_rendered, crds, name: str, version: str) -> None:
    docs = controller_rendered[name]
    builtin_groups = {"", "apps", "batch", "policy", "networking.k8s.io"}
    for doc in docs:
        if crds.knows(doc):
            crds.validate(doc)
            assert cel_violations(doc) == [], doc["kind"]
        else:
            assert doc["apiVersion"].rpartition("/")[0] in builtin_groups, f"no CRD to check {doc['kind']}"
            validate_core(doc, version)
    # The pod template is a core PodTemplateSpec: strictly, as a Pod.
    template = worker_deployment(docs)["spec"]["template"]
    validate_core({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", **template["metadata"]},
                   "spec": template["spec"]}, version)  # fmt: skip
    # What the controller makes of it is a valid Deployment, with no env, volume or mount path twice.
    deployment = version_deployment(docs)
    validate_core(deployment, version)
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    for field in ([e["name"] for e in container["env"]], [v["name"] for v in spec["volumes"]],
                  [m["mountPath"] for m in container["volumeMounts"]]):  # fmt: skip
        assert len(field) == len(set(field)), field


def test_the_pod_template_is_the_deployments() -> None:
    """One pod template for both modes: all but the Temporal connection (the controller's to
    inject) is identical, and the worker reads the same settings and Secret files."""
    for name in ("defaults", "mtls", "api-key", "dev-temporal", "everything"):
        docs = render(CONTROLLER_SETS[name])
        plain_docs = plain(name)
        template = worker_deployment(docs)["spec"]["template"]
        plain_template = find(plain_docs, "Deployment", f"{RELEASE}-worker")["spec"]["template"]

        def without_temporal(t: dict) -> dict:
            t = copy.deepcopy(t)
            (container,) = t["spec"]["containers"]
            container["env"] = [e for e in container["env"] if not e["name"].startswith("TEMPORAL_")]
            container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "temporal-tls"]
            t["spec"]["volumes"] = [v for v in t["spec"]["volumes"] if v["name"] != "temporal-tls"]
            return t

        assert without_temporal(template) == without_temporal(plain_template), name

        # As run: the controller's Deployment for a version vs the plain Deployment.
        ran = version_deployment(docs)["spec"]["template"]
        secrets = {
            API_KEY_AUTH["apiKey"]["existingSecret"]: {"api-key": API_KEY},
            "object-store-keys": {"AWS_ACCESS_KEY_ID": "minio", "AWS_SECRET_ACCESS_KEY": "minio-secret"},
        }
        env, plain_env = (pod_env(t["spec"]["containers"][0], secrets=secrets) for t in (ran, plain_template))
        versioning = {c.ENV_TEMPORAL_DEPLOYMENT_NAME, c.ENV_TEMPORAL_BUILD_ID, c.ENV_TEMPORAL_WORKER_BUILD_ID}
        files = {
            c.ENV_TEMPORAL_TLS_CLIENT_CERT_PATH,
            c.ENV_TEMPORAL_TLS_CLIENT_KEY_PATH,
            c.ENV_TEMPORAL_TLS_SERVER_CA_CERT_PATH,
            c.ENV_TEMPORAL_API_KEY_FILE,
            c.ENV_SERVE_TOKEN_FILE,
        }
        # The controller's TEMPORAL_API_KEY is the very key of the mounted file the worker prefers.
        assert env.pop(c.ENV_TEMPORAL_API_KEY, API_KEY) == API_KEY
        skip = versioning | files
        assert {k: v for k, v in env.items() if k not in skip} == {
            k: v for k, v in plain_env.items() if k not in skip
        }, name
        assert {k: file_source(ran, env[k]) for k in files & env.keys()} == {
            k: file_source(plain_template, plain_env[k]) for k in files & plain_env.keys()
        }, name


def file_source(template: dict, path: str) -> tuple[str, str]:
    """(Secret name, key) of a file path in a pod, from its mounts and volumes."""
    (container,) = template["spec"]["containers"]
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == mount["name"]]
    return volume["secret"]["secretName"], path.removeprefix(mount["mountPath"] + "/")


@pytest.mark.parametrize("name", ["defaults", "mtls", "api-key"])
def test_the_worker_is_the_version_the_controller_names(
    controller_rendered, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The env the controller injects (TEMPORAL_WORKER_BUILD_ID, not TEMPORAL_BUILD_ID) makes
    the worker a version of Temporal's "<namespace>/<name>" deployment, connected as the
    Connection says."""
    docs = controller_rendered[name]
    (container,) = version_deployment(docs)["spec"]["template"]["spec"]["containers"]
    env = pod_env(container, secrets={"temporal-api-key": {"api-key": API_KEY}})
    assert c.ENV_TEMPORAL_BUILD_ID not in env
    for key in [k for k in os.environ if k.startswith("TEMPORAL_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = WorkerSettings()
    version = settings.deployment_config().version
    assert (version.deployment_name, version.build_id) == (f"{NAMESPACE}/{RELEASE}-worker", BUILD_ID)
    connection = find(docs, "Connection")["spec"]
    assert settings.address == connection["hostPort"]
    assert settings.namespace == BASES[name].get("temporal", {}).get("namespace", "default")
    assert settings.task_queue == c.DEFAULT_TASK_QUEUE
    if name == "mtls":
        tls = settings._profile.tls
        assert tls.client_cert.parent == tls.client_private_key.parent == tls.server_root_ca_cert.parent
        assert str(tls.client_cert.parent) == CONTROLLER_TLS_MOUNT
        assert tls.server_name == MTLS["tls"]["serverName"]
    if name == "api-key":
        assert settings.api_key_file is not None and settings._profile.api_key == API_KEY
        assert settings._profile.tls.server_name == API_KEY_AUTH["tls"]["serverName"]


# --- secrets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mtls", "api-key", "everything"])
def test_credentials_are_referenced_by_secret_name_only(controller_rendered, name: str) -> None:
    docs = controller_rendered[name]
    connection = find(docs, "Connection")["spec"]
    assert set(connection) <= {"hostPort", "tls", "mutualTLSSecretRef", "apiKeySecretRef"}
    if name == "api-key":
        assert connection["apiKeySecretRef"] == {"name": "temporal-api-key", "key": "api-key"}
    else:
        assert connection["mutualTLSSecretRef"] == {"name": "temporal-mtls"}
    # The one secret value the chart knows (a fixed Serve token) is only in its Secret, and no
    # env of the worker template carries a value that is not plain configuration.
    token = CONTROLLER_SETS[name].get("auth", {}).get("token")
    for doc in docs:
        if token and doc["kind"] != "Secret":
            assert token not in yaml.safe_dump(doc), doc["kind"]
    (container,) = worker_deployment(docs)["spec"]["template"]["spec"]["containers"]
    names = {e["name"] for e in container["env"]}
    assert not names & {c.ENV_TEMPORAL_API_KEY, "SERVE_AUTH_TOKEN"}
    assert all("value" in e for e in container["env"]), "no valueFrom: files and names only"


# --- bad values ---------------------------------------------------------------------------------


def steps(*ramps: tuple[int, str]) -> dict:
    return {"worker": {"versioning": {"controller": {"rollout": {"steps": [
        {"rampPercentage": r, "pauseDuration": d} for r, d in ramps]}}}}}  # fmt: skip


BAD = [
    ("KEDA with the controller", {"keda": {"enabled": True}}, r"/keda/enabled'?: value must be false"),
    (
        "controller without versioning",
        {"worker": {"versioning": {"enabled": False}}},
        r"/worker/versioning/enabled'?: value must be true",
    ),
    (
        "unknown strategy",
        {"worker": {"versioning": {"controller": {"rollout": {"strategy": "Canary"}}}}},
        r"/worker/versioning/controller/rollout/strategy'?: value must be one of 'Progressive'",
    ),
    (
        "Progressive without steps",
        {"worker": {"versioning": {"controller": {"rollout": {"steps": []}}}}},
        r"/worker/versioning/controller/rollout/steps'?: minItems",
    ),
    (
        "ramp of 100%",
        steps((100, "5m")),
        r"/rollout/steps/0/rampPercentage'?: maximum",
    ),
    (
        "pause under 30s",
        steps((10, "10s")),
        r"/rollout/steps/0/pauseDuration'?: .*does not match pattern",
    ),
    (
        "pause not a Go duration",
        steps((10, "5 minutes")),
        r"/rollout/steps/0/pauseDuration'?: .*does not match pattern",
    ),
    (
        "sunset not a Go duration",
        {"worker": {"versioning": {"controller": {"sunset": {"scaledownDelay": "1 hour"}}}}},
        r"/sunset/scaledownDelay'?: .*does not match pattern",
    ),
    (
        "build id not a label value",
        {"worker": {"versioning": {"controller": {"unsafeCustomBuildId": "-v1"}}}},
        r"/unsafeCustomBuildId'?: .*does not match pattern",
    ),
    (
        "resource name not DNS",
        {"worker": {"versioning": {"deploymentName": "Batch_Workers"}}},
        r"/worker/versioning/deploymentName'?: .*does not match pattern",
    ),
    (
        "Connection name not DNS",
        {"worker": {"versioning": {"controller": {"existingConnection": "My_Temporal"}}}},
        r"/existingConnection'?: .*does not match pattern",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "change", "message"), BAD, ids=[b[0] for b in BAD])
def test_schema_refuses_bad_values(kind: str, change: dict, message: str) -> None:
    import helm_python

    values = with_controller({})
    merge(values, change)
    with pytest.raises(helm_python.HelmValuesError) as err:
        render(values)
    assert re.search(message, str(err.value)), str(err.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            steps((50, "5m"), (50, "5m")),
            r"steps\[1\]\.rampPercentage: 50 does not increase",
        ),
        (
            {"temporal": {**MTLS, "apiKey": {"existingSecret": "temporal-api-key"}}},
            r"a Connection takes mTLS .* or an API key .*, not both",
        ),
        (
            {"temporal": {"tls": {"enabled": True, "existingSecret": "m", "certKey": "client.pem"}}},
            r"reads the mTLS Secret's keys tls\.crt, tls\.key and ca\.crt",
        ),
    ],
)  # fmt: skip
def test_template_refuses_what_the_controller_would(change: dict, message: str) -> None:
    import helm_python

    values = with_controller({})
    merge(values, change)
    with pytest.raises(helm_python.HelmRenderError, match=message):
        render(values)


def merge(into: dict, change: dict) -> None:
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value


def test_notes_say_how_to_watch_a_rollout() -> None:
    notes = render_files(CONTROLLER_SETS["defaults"])["batch-inference/templates/NOTES.txt"]
    assert f"kubectl -n {NAMESPACE} get workerdeployment {RELEASE}-worker" in notes
    assert "rollout status deployment" not in notes


def test_a_bad_crd_object_is_refused(controller_rendered, crds) -> None:
    """The CRD check itself bites on the controller's kinds: a typo, a wrong type, a missing field."""
    wd = worker_deployment(controller_rendered["defaults"])
    for mutate in (
        lambda d: d["spec"]["workerOptions"].update(temporalNamespac="x"),
        lambda d: d["spec"].update(replicas="two"),
        lambda d: d["spec"].pop("sunset"),
        lambda d: d["spec"]["rollout"].update(strategy="Canary"),
    ):
        doc = copy.deepcopy(wd)
        mutate(doc)
        with pytest.raises(jsonschema.ValidationError):
            crds.validate(doc)
