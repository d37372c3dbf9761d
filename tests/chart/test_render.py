"""The chart rendered by Helm's own engine over several value sets, every object validated
against the real schemas, and the wiring between objects checked."""

from __future__ import annotations

import copy

import pytest
import yaml

from services import constants as c
from services.local.ray_serve import SERVE_CONFIG
from services.local.temporal_dev import FAIRNESS_CONFIG
from tests.helpers.k8s import (
    CHART,
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    find,
    kinds,
    lint,
    render,
    render_files,
    secret_data,
    validate_core,
)

SETS = list(VALUE_SETS)


def worker_deployment(docs: list[dict]) -> dict:
    return find(docs, "Deployment", f"{RELEASE}-worker")


def worker_container(docs: list[dict]) -> dict:
    (container,) = worker_deployment(docs)["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def ray_pods(docs: list[dict]) -> list[dict]:
    """The head and worker-group pod templates of the RayService."""
    cluster = find(docs, "RayService")["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]


def serve_config(docs: list[dict]) -> dict:
    return yaml.safe_load(find(docs, "RayService")["spec"]["serveConfigV2"])


# --- Helm lint, schemas ------------------------------------------------------------------------


@pytest.mark.parametrize("name", SETS)
def test_lint_is_clean(name: str) -> None:
    report = lint(VALUE_SETS[name])
    assert report["errors"] == []
    assert report["messages"] == [], report["messages"]


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", SETS)
def test_core_objects_match_kubernetes_schemas(rendered, crds, name: str, version: str) -> None:
    core = [d for d in rendered[name] if not crds.knows(d)]
    assert core
    for doc in core:
        validate_core(doc, version)
    # The pod templates inside the RayService are core PodSpecs too: check them strictly as Pods.
    for template in ray_pods(rendered[name]):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", **template["metadata"]}}
        validate_core({**pod, "spec": template["spec"]}, version)


@pytest.mark.parametrize("name", SETS)
def test_custom_resources_match_upstream_crds(rendered, crds, name: str) -> None:
    custom = [d for d in rendered[name] if crds.knows(d)]
    assert any(d["kind"] == "RayService" for d in custom)
    builtin_groups = {"", "apps", "batch", "policy", "networking.k8s.io"}
    unknown = [
        d["kind"]
        for d in rendered[name]
        if not crds.knows(d) and d["apiVersion"].rpartition("/")[0] not in builtin_groups
    ]
    assert not unknown, f"custom resources without a CRD to check them against: {unknown}"
    for doc in custom:
        crds.validate(doc)


def test_crd_check_rejects_what_the_api_server_rejects(rendered, crds) -> None:
    """The CRD-derived validation is not vacuous: typos, wrong types and missing required
    fields fail, while fields the CRD defaults (minReplicas) may be left out."""
    import jsonschema

    rayservice = find(rendered["defaults"], "RayService")
    group = lambda doc: doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]  # noqa: E731
    cases = {
        "typo": lambda d: group(d)["template"]["spec"]["containers"][0].update(imagePullPolcy="Always"),
        "type": lambda d: group(d).update(replicas="one"),
        "required": lambda d: group(d).pop("groupName"),
    }
    for what, mutate in cases.items():
        doc = copy.deepcopy(rayservice)
        mutate(doc)
        with pytest.raises(jsonschema.ValidationError):
            crds.validate(doc)
        print(f"{what}: rejected")
    doc = copy.deepcopy(rayservice)
    group(doc).pop("minReplicas")
    assert group(crds.validate(doc))["minReplicas"] == 0


# --- what each value set creates ---------------------------------------------------------------


def test_default_objects(rendered) -> None:
    assert kinds(rendered["defaults"]) == sorted(
        [
            f"ConfigMap/{RELEASE}-client",
            f"Deployment/{RELEASE}-progress-exporter",
            f"Deployment/{RELEASE}-worker",
            f"NetworkPolicy/{RELEASE}-ray",
            f"NetworkPolicy/{RELEASE}-worker",
            f"PodDisruptionBudget/{RELEASE}-worker",
            f"RayService/{RELEASE}",
            f"Secret/{RELEASE}-serve-auth",
            f"ServiceAccount/{RELEASE}-worker",
        ]
    )


def test_existing_secret_is_used_everywhere_and_none_is_created(rendered) -> None:
    docs = rendered["existing-secret"]
    assert not [d for d in docs if d["kind"] == "Secret"]
    for spec in [worker_deployment(docs)["spec"]["template"]["spec"]] + [t["spec"] for t in ray_pods(docs)]:
        volume = next(v for v in spec["volumes"] if v["name"] == "serve-auth")
        assert volume["secret"]["secretName"] == "my-serve-auth"
    mount = "/var/run/secrets/batch-inference/serve-auth"
    assert env_of(worker_container(docs))[c.ENV_SERVE_TOKEN_FILE] == f"{mount}/current"
    for pod in ray_pods(docs):
        assert env_of(pod["spec"]["containers"][0])[c.ENV_SERVE_TOKENS_FILE] == f"{mount}/accepted"


def test_keda_scales_the_worker_deployment_on_the_task_queue(rendered) -> None:
    docs = rendered["keda"]
    scaled = find(docs, "ScaledObject")
    deployment = worker_deployment(docs)
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "temporal"
    env = env_of(worker_container(docs))
    assert trigger["metadata"]["endpoint"] == env[c.ENV_TEMPORAL_ADDRESS]
    assert trigger["metadata"]["taskQueue"] == env[c.ENV_TEMPORAL_TASK_QUEUE] == c.DEFAULT_TASK_QUEUE
    assert trigger["metadata"]["namespace"] == env[c.ENV_TEMPORAL_NAMESPACE]
    assert trigger["authenticationRef"] == {"name": "temporal-auth"}
    assert scaled["spec"]["minReplicaCount"] >= 1
    assert "replicas" in worker_deployment(rendered["defaults"])["spec"]


def test_optional_parts_can_be_turned_off(rendered) -> None:
    docs = rendered["no-networkpolicy"]
    assert not [d for d in docs if d["kind"] in ("NetworkPolicy", "PodDisruptionBudget", "ServiceAccount")]
    assert worker_deployment(docs)["spec"]["template"]["spec"]["serviceAccountName"] == "batch"
    cluster = find(docs, "RayService")["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is False and "autoscalerOptions" not in cluster
    assert cluster["authOptions"] == {"mode": "disabled"}


def test_dev_temporal_server_is_what_workers_and_jobs_use(rendered) -> None:
    docs = rendered["dev-temporal"]
    service = find(docs, "Service", f"{RELEASE}-temporal")
    deployment = find(docs, "Deployment", f"{RELEASE}-temporal")
    address = f"{RELEASE}-temporal.{NAMESPACE}.svc:{service['spec']['ports'][0]['port']}"
    assert env_of(worker_container(docs))[c.ENV_TEMPORAL_ADDRESS] == address
    assert find(docs, "ConfigMap")["data"][c.ENV_TEMPORAL_ADDRESS] == address
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["temporal"]
    args = container["args"]
    assert args[:2] == ["server", "start-dev"]
    assert args[args.index("--ip") + 1] == "0.0.0.0"
    assert args[args.index("--namespace") + 1] == "batches"
    # Fairness on, as on the local dev server.
    at = args.index(FAIRNESS_CONFIG[0])
    assert tuple(args[at : at + len(FAIRNESS_CONFIG)]) == FAIRNESS_CONFIG
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["name"] for p in container["ports"]} == {p["targetPort"] for p in service["spec"]["ports"]}


def test_temporal_tls_and_api_key_become_files_and_env(rendered) -> None:
    docs = rendered["everything"]
    env = env_of(worker_container(docs))
    mount = "/var/run/secrets/batch-inference/temporal-tls"
    assert env[c.ENV_TEMPORAL_TLS] == "true"
    assert env[c.ENV_TEMPORAL_TLS_CLIENT_CERT_PATH] == f"{mount}/tls.crt"
    assert env[c.ENV_TEMPORAL_TLS_CLIENT_KEY_PATH] == f"{mount}/tls.key"
    assert env[c.ENV_TEMPORAL_TLS_SERVER_CA_CERT_PATH] == f"{mount}/ca.crt"
    assert env[c.ENV_TEMPORAL_TLS_SERVER_NAME] == "my-ns.a1b2c.tmprl.cloud"
    api = render({"temporal": {"apiKey": {"existingSecret": "temporal-cloud"}}})
    env = env_of(worker_container(api))
    assert env[c.ENV_TEMPORAL_TLS] == "true"
    assert env[c.ENV_TEMPORAL_API_KEY_FILE] == "/var/run/secrets/batch-inference/temporal-api-key/api-key"
    assert c.ENV_TEMPORAL_API_KEY not in env, "the key itself never goes into env"


# --- worker pod ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SETS)
def test_worker_pod_is_locked_down(rendered, name: str) -> None:
    spec = worker_deployment(rendered[name])["spec"]["template"]["spec"]
    container = worker_container(rendered[name])
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == tmp["name"])
    assert container["resources"]["requests"] and container["resources"]["limits"]


@pytest.mark.parametrize("name", SETS)
def test_worker_grace_period_exceeds_its_graceful_shutdown(rendered, name: str) -> None:
    spec = worker_deployment(rendered[name])["spec"]["template"]["spec"]
    graceful = float(env_of(worker_container(rendered[name]))[c.ENV_WORKER_GRACEFUL_SHUTDOWN_S])
    assert spec["terminationGracePeriodSeconds"] >= graceful + 5
    expected = VALUE_SETS[name].get("worker", {}).get("gracefulShutdownSeconds", 30)
    assert graceful == expected


@pytest.mark.parametrize("name", SETS)
def test_worker_probes_hit_the_metrics_port(rendered, name: str) -> None:
    container = worker_container(rendered[name])
    env = env_of(container)
    port = next(p for p in container["ports"] if p["name"] == "metrics")
    assert port["containerPort"] == int(env[c.ENV_WORKER_METRICS_PORT]) == c.WORKER_METRICS_PORT
    assert env[c.ENV_WORKER_METRICS_HOST] == "0.0.0.0"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "metrics"


@pytest.mark.parametrize("name", SETS)
def test_worker_reaches_the_rayservice_serve_service(rendered, name: str) -> None:
    env = env_of(worker_container(rendered[name]))
    rayservice = find(rendered[name], "RayService")["metadata"]["name"]
    assert env[c.ENV_SERVE_URL] == f"http://{rayservice}-serve-svc.{NAMESPACE}.svc:{c.SERVE_HTTP_PORT}"
    assert env[c.ENV_TEMPORAL_TASK_QUEUE] == c.DEFAULT_TASK_QUEUE


def test_worker_serve_url_can_be_overridden() -> None:
    docs = render({"worker": {"serveUrl": "https://serve.example:8443"}})
    assert env_of(worker_container(docs))[c.ENV_SERVE_URL] == "https://serve.example:8443"


def test_pdb_selects_the_worker_pods(rendered) -> None:
    docs = rendered["defaults"]
    pdb = find(docs, "PodDisruptionBudget")
    labels = worker_deployment(docs)["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert (
        worker_deployment(docs)["spec"]["selector"]["matchLabels"] == pdb["spec"]["selector"]["matchLabels"]
    )


# --- auth ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in SETS if n != "existing-secret"])
def test_one_secret_feeds_serve_and_workers_as_files(rendered, name: str) -> None:
    docs = rendered[name]
    secret = find(docs, "Secret")
    tokens = secret_data(secret)
    token_key = VALUE_SETS[name].get("auth", {}).get("tokenKey", "token")
    assert len(tokens[token_key]) >= 32 or VALUE_SETS[name].get("auth", {}).get("token")
    pods = [(worker_deployment(docs)["spec"]["template"], c.ENV_SERVE_TOKEN_FILE)]
    pods += [(pod, c.ENV_SERVE_TOKENS_FILE) for pod in ray_pods(docs)]
    for pod, env_name in pods:
        (volume,) = [
            v
            for v in pod["spec"]["volumes"]
            if v.get("secret", {}).get("secretName") == secret["metadata"]["name"]
        ]
        container = pod["spec"]["containers"][0]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"] is True and "subPath" not in mount, "whole-Secret mount: rotations propagate"
        path = env_of(container)[env_name]
        assert path.rsplit("/", 1)[0] == mount["mountPath"] and path.rsplit("/", 1)[1] in tokens
        assert volume["secret"]["defaultMode"] == 0o440
        assert pod["spec"]["securityContext"]["fsGroup"], "group-readable token file needs fsGroup"
        # Token values never travel as env values or literals.
        assert not any(t in yaml.safe_dump(pod) for t in tokens.values())


@pytest.mark.parametrize("name", SETS)
def test_token_never_in_serve_config_or_runtime_env(rendered, name: str) -> None:
    docs = rendered[name]
    text = find(docs, "RayService")["spec"]["serveConfigV2"]
    for secret in [d for d in docs if d["kind"] == "Secret"]:
        for token in secret_data(secret).values():
            assert token not in text
    assert "runtime_env" not in text
    for key in ("SERVE_AUTH", "token", "Bearer"):
        assert key not in text


def test_generated_token_is_random_and_a_fixed_one_is_used() -> None:
    first, second = (secret_data(find(render(), "Secret"))["token"] for _ in range(2))
    assert first != second and len(first) == 48 and first.isalnum()
    fixed = render({"auth": {"token": "x" * 40}})
    assert secret_data(find(fixed, "Secret")) == {"token": "x" * 40}


def test_secret_template_reads_back_the_cluster_token_on_upgrade() -> None:
    """`lookup` returns nothing offline, so the keep-across-upgrades branch cannot run here; at
    least check the template asks the cluster for the Secret it is about to render."""
    template = (CHART / "templates" / "serve-auth-secret.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in template
    assert "b64dec" in template


# --- RayService ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SETS)
def test_rayservice_pods(rendered, name: str) -> None:
    rayservice = find(rendered[name], "RayService")
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0"
    assert isinstance(cluster["enableInTreeAutoscaling"], bool)
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert head["rayStartParams"]["metrics-export-port"] == str(c.RAY_METRICS_PORT)
    ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert ports["serve"] == c.SERVE_HTTP_PORT, "KubeRay needs a port named serve on the head"
    assert ports["metrics"] == c.RAY_METRICS_PORT
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["rayStartParams"]["metrics-export-port"] == str(c.RAY_METRICS_PORT)
    head_pod, *worker_pods = ray_pods(rendered[name])
    # The in-tree autoscaler (a sidecar in the head pod) calls the Kubernetes API.
    assert head_pod["spec"]["automountServiceAccountToken"] is cluster["enableInTreeAutoscaling"]
    assert all(pod["spec"]["automountServiceAccountToken"] is False for pod in worker_pods)
    for pod in ray_pods(rendered[name]):
        container = pod["spec"]["containers"][0]
        assert container["resources"]["limits"], "Ray sizes itself from the limits"
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert "app.kubernetes.io/name" not in pod["metadata"]["labels"], "KubeRay sets its own"
        shm = next(m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
        assert (
            next(v for v in pod["spec"]["volumes"] if v["name"] == shm["name"])["emptyDir"]["medium"]
            == "Memory"
        )


UPGRADES = {
    "NewCluster": {},
    "None": {},
    "NewClusterWithIncrementalUpgrade": {
        "clusterUpgradeOptions": {"gatewayClassName": "istio", "stepSizePercent": 5, "intervalSeconds": 10}
    },
}


@pytest.mark.parametrize("kind", UPGRADES)
def test_upgrade_strategy_is_rendered_and_matches_the_crd(crds, kind: str) -> None:
    rayservice = find(render({"serve": {"upgradeStrategy": {"type": kind, **UPGRADES[kind]}}}), "RayService")
    strategy = crds.validate(rayservice)["spec"]["upgradeStrategy"]
    if kind != "NewClusterWithIncrementalUpgrade":
        # Gateway options only mean something to the incremental upgrade.
        assert strategy == {"type": kind}
        return
    assert strategy == {
        "type": kind,
        "clusterUpgradeOptions": {
            "gatewayClassName": "istio",
            "maxSurgePercent": 100,
            "stepSizePercent": 5,
            "intervalSeconds": 10,
        },
    }


def test_default_upgrade_strategy_is_kuberays_default(rendered) -> None:
    # KubeRay's default when the field is absent; written out so `kubectl get -o yaml` shows it.
    spec = find(rendered["defaults"], "RayService")["spec"]
    assert spec["upgradeStrategy"] == {"type": "NewCluster"}


def test_high_throughput_mode_sets_the_same_env_as_the_local_stack(rendered) -> None:
    for pod in ray_pods(rendered["everything"]):
        env = env_of(pod["spec"]["containers"][0])
        assert {k: env.get(k) for k in c.SERVE_HIGH_THROUGHPUT_ENV} == c.SERVE_HIGH_THROUGHPUT_ENV
        assert env["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"] == "10"  # extraEnv still there
    for pod in ray_pods(rendered["defaults"]):
        assert not set(c.SERVE_HIGH_THROUGHPUT_ENV) & set(env_of(pod["spec"]["containers"][0]))


def test_rayservice_name_longer_than_kuberay_allows_fails_early() -> None:
    import helm_python

    name = "a-release-name-that-is-long-enough-to-break-kuberay"  # 51 chars: fine for Helm
    helm_python.validate_release_name(name)
    with pytest.raises(helm_python.HelmRenderError, match="at most 47"):
        render(name=name)
    assert len(find(render({"fullnameOverride": "y" * 47}), "RayService")["metadata"]["name"]) == 47


def test_serve_config_is_the_shared_file_bound_to_all_interfaces(rendered) -> None:
    expected = yaml.safe_load(SERVE_CONFIG.read_text())
    expected["http_options"]["host"] = "0.0.0.0"
    assert serve_config(rendered["defaults"]) == expected
    from ray.serve.schema import ServeDeploySchema

    for docs in rendered.values():
        ServeDeploySchema.model_validate(serve_config(docs))


def test_serve_overrides_merge_per_deployment(rendered) -> None:
    base = yaml.safe_load(SERVE_CONFIG.read_text())
    config = serve_config(rendered["everything"])
    (app,) = config["applications"]
    (base_app,) = base["applications"]
    assert app["args"] == {**base_app["args"], "default_model": "iris"}
    deployments = {d["name"]: d for d in app["deployments"]}
    base_deployments = {d["name"]: d for d in base_app["deployments"]}
    iris = deployments["iris"]
    assert "num_replicas" not in iris, "autoscaling_config replaces the fixed replica count"
    assert iris["autoscaling_config"]["max_replicas"] == 4
    assert iris["user_config"] == {**base_deployments["iris"]["user_config"], "max_batch_size": 32}
    assert iris["ray_actor_options"] == {"num_cpus": 1}
    assert deployments["Ingress"]["num_replicas"] == 2
    assert deployments["Ingress"]["max_ongoing_requests"] == 256
    assert deployments["echo"] == base_deployments["echo"]
    zero = serve_config(
        render({"serve": {"deployments": {"echo": {"user_config": {"batch_wait_timeout_s": 0}}}}})
    )
    echo = next(d for d in zero["applications"][0]["deployments"] if d["name"] == "echo")
    assert echo["user_config"]["batch_wait_timeout_s"] == 0, "zero values override too"


# --- NetworkPolicy ------------------------------------------------------------------------------


def _matches(selector: dict, labels: dict) -> bool:
    return selector.get("matchLabels", {}).items() <= labels.items()


def test_only_worker_pods_reach_the_serve_port(rendered) -> None:
    docs = rendered["defaults"]
    policy = find(docs, "NetworkPolicy", f"{RELEASE}-ray")
    worker_labels = worker_deployment(docs)["spec"]["template"]["metadata"]["labels"]
    for pod in ray_pods(docs):
        assert _matches(policy["spec"]["podSelector"], pod["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    serve_rules = [
        r
        for r in policy["spec"]["ingress"]
        if any(p["port"] == c.SERVE_HTTP_PORT for p in r.get("ports", []))
    ]
    (rule,) = serve_rules
    (peer,) = rule["from"]
    assert _matches(peer["podSelector"], worker_labels)
    assert set(peer) == {"podSelector"}, "same namespace only"
    for other in policy["spec"]["ingress"]:
        if other is not rule:
            assert not any(
                _matches(p.get("podSelector", {"matchLabels": {"-": "-"}}), worker_labels)
                for p in other["from"]
            )
    # Ray pods reach each other on every port; the operator only the dashboard ports.
    ray_labels = ray_pods(docs)[0]["metadata"]["labels"]
    assert any(
        "ports" not in r and _matches(r["from"][0]["podSelector"], ray_labels)
        for r in policy["spec"]["ingress"]
    )
    operator = next(r for r in policy["spec"]["ingress"] if "namespaceSelector" in r["from"][0])
    assert {p["port"] for p in operator["ports"]} == {8265, 52365}
    worker_policy = find(docs, "NetworkPolicy", f"{RELEASE}-worker")
    assert worker_policy["spec"]["ingress"] == []


def test_metrics_clients_are_allowed_to_scrape(rendered) -> None:
    docs = rendered["everything"]
    ray = find(docs, "NetworkPolicy", f"{RELEASE}-ray")
    assert any(p["port"] == c.RAY_METRICS_PORT for r in ray["spec"]["ingress"] for p in r.get("ports", []))
    worker = find(docs, "NetworkPolicy", f"{RELEASE}-worker")
    assert worker["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": c.WORKER_METRICS_PORT}]


def test_notes_say_how_to_start_and_watch_a_batch() -> None:
    notes = next(v for k, v in render_files().items() if k.endswith("NOTES.txt"))
    assert "helm install kuberay-operator kuberay/kuberay-operator --version 1.7.0" in notes
    assert f"--type {c.WORKFLOW_NAME} --task-queue {c.DEFAULT_TASK_QUEUE}" in notes
    assert "kubectl -n inference apply -f k8s/job-submit-cli.yaml" in notes
    assert f"--type {c.PROGRESS_QUERY}" in notes
