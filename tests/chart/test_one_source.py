"""Facts written in more than one place (chart values, Serve config, k8s Jobs, Dockerfiles,
pyproject.toml, docs) agree with services/constants.py and with each other."""

from __future__ import annotations

import re
import tomllib

import yaml

from services import constants as c
from services.local.ray_serve import SERVE_CONFIG
from services.worker.config import WorkerSettings
from tests.helpers.k8s import (
    CHART,
    REPO_ROOT,
    chart_values,
    dockerfile_entrypoint,
    find,
    load_k8s,
    render,
)

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
CHART_YAML = yaml.safe_load((CHART / "Chart.yaml").read_text())
JOBS = ["job-submit-cli.yaml", "job-temporal-cli.yaml"]
ENV_NAMES = {v for k, v in vars(c).items() if k.startswith("ENV_")}
OUR_ENV = re.compile(r"^(TEMPORAL|SERVE|WORKER)_[A-Z_]+$")
# The storage libraries' own variables the chart sets (worker.objectStore).
OBJECT_STORE_ENV = re.compile(r"^(AWS|GOOGLE|STORAGE|GCSFS)_[A-Z0-9_]+$")
ENV_ENTRY = re.compile(r"name: ((?:TEMPORAL|SERVE|WORKER|AWS|GOOGLE|STORAGE|GCSFS)_[A-Z0-9_]+)")


def ray_pin() -> str:
    (pin,) = [d for d in PYPROJECT["project"]["optional-dependencies"]["serve"] if d.startswith("ray[")]
    return pin.split("==")[1]


def test_chart_values_match_constants() -> None:
    values = chart_values()
    assert values["temporal"]["taskQueue"] == c.DEFAULT_TASK_QUEUE
    assert values["temporal"]["namespace"] == c.DEFAULT_NAMESPACE
    assert values["worker"]["metricsPort"] == c.WORKER_METRICS_PORT
    assert values["serve"]["metricsPort"] == c.RAY_METRICS_PORT
    defaults = WorkerSettings.model_fields
    assert values["worker"]["maxConcurrentActivities"] == defaults["max_concurrent_activities"].default
    assert values["worker"]["eagerActivities"] == defaults["eager_activities"].default


def test_probe_and_scrape_paths_are_the_worker_routes() -> None:
    """The worker's probes and its ServiceMonitor use the routes the worker serves, one each
    (anything else is 404 there)."""
    docs = render({"metrics": {"serviceMonitor": {"enabled": True}}})
    deployment = find(docs, "Deployment", "batch-inference-worker")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    names = ("startupProbe", "livenessProbe", "readinessProbe")
    probes = {name: container[name]["httpGet"] for name in names}
    assert {name: probe["path"] for name, probe in probes.items()} == {
        "startupProbe": c.WORKER_STARTUP_ROUTE,
        "livenessProbe": c.WORKER_LIVE_ROUTE,
        "readinessProbe": c.WORKER_READY_ROUTE,
    }
    assert {probe["port"] for probe in probes.values()} == {"metrics"}
    (endpoint,) = find(docs, "ServiceMonitor", "batch-inference-worker")["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", c.WORKER_METRICS_ROUTE)


def test_serve_config_matches_constants() -> None:
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    assert config["http_options"]["port"] == c.SERVE_HTTP_PORT
    assert [app["name"] for app in config["applications"]] == [c.SERVE_APP_NAME]


def test_versions_agree() -> None:
    """Ray: pyproject pin = chart rayVersion = Chart annotation = Dockerfile.serve base image.
    App: pyproject version = Chart appVersion = image tags in the k8s Jobs."""
    ray = ray_pin()
    assert chart_values()["serve"]["rayVersion"] == ray
    assert CHART_YAML["annotations"]["batch-inference/ray-version"] == ray
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", (REPO_ROOT / "Dockerfile.serve").read_text(), re.M)
    assert base and base.group(1) == f"rayproject/ray:{ray}-py311"
    version = PYPROJECT["project"]["version"]
    assert CHART_YAML["appVersion"] == version == CHART_YAML["version"]
    (worker_job,) = load_k8s("job-submit-cli.yaml")["spec"]["template"]["spec"]["containers"]
    assert worker_job["image"] == f"{chart_values()['worker']['image']['repository']}:{version}"


def test_kuberay_version_is_stated_once_everywhere() -> None:
    version = CHART_YAML["annotations"]["batch-inference/kuberay-operator-version"]
    assert version == "1.7.0"
    line = f"helm install kuberay-operator kuberay/kuberay-operator --version {version}"
    for path in [
        "charts/batch-inference/templates/NOTES.txt",
        "charts/batch-inference/values.yaml",
        "docs/kubernetes.md",
    ]:
        assert line in (REPO_ROOT / path).read_text(), path
    assert f"KUBERAY_VERSION={version}" in (REPO_ROOT / "k8s" / "kind-e2e.sh").read_text()


def test_env_var_names_are_the_ones_the_code_reads() -> None:
    """Every TEMPORAL_*/SERVE_*/WORKER_* name set by the chart, the Jobs or the Dockerfiles is
    one services/constants.py defines (a typo would be silently ignored by the worker)."""
    used: set[str] = set()
    object_store = {"s3": {"endpointUrl": "http://minio:9000", "region": "r"},
                    "gcs": {"endpointUrl": "gcs:4443", "credentialsSecret": "g"}}  # fmt: skip
    docs = render({"temporal": {"tls": {"enabled": True, "existingSecret": "t", "serverName": "x"},
                                "apiKey": {"existingSecret": "k"}},
                   "worker": {"objectStore": object_store}})  # fmt: skip
    for doc in docs:
        text = yaml.safe_dump(doc)
        used |= set(re.findall(ENV_ENTRY, text))
        if doc["kind"] == "ConfigMap":
            used |= set(doc["data"])
    for job in JOBS:
        (container,) = load_k8s(job)["spec"]["template"]["spec"]["containers"]
        used |= {e["name"] for e in container["env"]}
    for dockerfile in ["Dockerfile.worker", "Dockerfile.serve"]:
        used |= set(
            re.findall(r"\b((?:TEMPORAL|SERVE|WORKER)_[A-Z_]+)=", (REPO_ROOT / dockerfile).read_text())
        )
    ours = {name for name in used if OUR_ENV.match(name)}
    assert {c.ENV_SERVE_TOKEN_FILE, c.ENV_SERVE_TOKENS_FILE, c.ENV_TEMPORAL_API_KEY_FILE} <= ours
    assert ours <= ENV_NAMES, f"not defined in services/constants.py: {sorted(ours - ENV_NAMES)}"
    libraries = {name for name in used if OBJECT_STORE_ENV.match(name)}
    assert libraries == {
        c.ENV_AWS_ENDPOINT_URL_S3,
        c.ENV_AWS_DEFAULT_REGION,
        c.ENV_STORAGE_EMULATOR_HOST,
        c.ENV_GOOGLE_APPLICATION_CREDENTIALS,
        c.ENV_GCSFS_ZB_HNS_SUPPORT,
    }


def test_worker_image_installs_the_object_store_extras() -> None:
    """Dockerfile.worker's default EXTRAS are optional-dependency groups of pyproject.toml (it
    reads them from there at build time), and they include both object stores."""
    text = (REPO_ROOT / "Dockerfile.worker").read_text()
    match = re.search(r'^ARG EXTRAS="([^"]*)"$', text, re.M)
    assert match, "Dockerfile.worker has no EXTRAS default"
    extras = [e.strip() for e in match.group(1).split(",") if e.strip()]
    groups = PYPROJECT["project"]["optional-dependencies"]
    assert set(extras) <= set(groups), sorted(set(extras) - set(groups))
    assert {"s3", "gcs"} <= set(extras)
    assert any(d.startswith("s3fs") for d in groups["s3"])
    assert any(d.startswith("gcsfs") for d in groups["gcs"])
    # Installed with the dependencies, before the code is copied (the cached layer).
    assert text.index("ARG EXTRAS=") < text.index("COPY services ")


def test_jobs_start_the_workflow_the_worker_runs() -> None:
    cli = load_k8s("job-submit-cli.yaml")["spec"]["template"]["spec"]["containers"][0]
    assert cli["command"] == ["batch-inference"] and cli["args"][0] == "submit"
    assert PYPROJECT["project"]["scripts"]["batch-inference"] == "services.cli:entrypoint"
    temporal = load_k8s("job-temporal-cli.yaml")["spec"]["template"]["spec"]["containers"][0]
    args = temporal["args"]
    assert args[args.index("--type") + 1] == c.WORKFLOW_NAME
    assert args[args.index("--task-queue") + 1] == f"$({c.ENV_TEMPORAL_TASK_QUEUE})"
    assert args[args.index("--address") + 1] == f"$({c.ENV_TEMPORAL_ADDRESS})"
    # Both read Temporal's address from the chart's client ConfigMap (release "batch-inference").
    config_map = find(render(), "ConfigMap")
    for container in (cli, temporal):
        (source,) = container["envFrom"]
        assert source["configMapRef"]["name"] == config_map["metadata"]["name"]
    assert config_map["data"][c.ENV_TEMPORAL_TASK_QUEUE] == c.DEFAULT_TASK_QUEUE


def test_worker_image_runs_the_worker_module() -> None:
    assert dockerfile_entrypoint(REPO_ROOT / "Dockerfile.worker") == ["python", "-m", "services.worker"]
    text = (REPO_ROOT / "Dockerfile.worker").read_text()
    assert f"EXPOSE {c.WORKER_METRICS_PORT}" in text
    assert re.search(r"^USER 10001", text, re.M)
    pod = chart_values()["worker"]["podSecurityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (10001, 10001)


def test_kind_script_creates_what_its_values_use() -> None:
    script = (REPO_ROOT / "k8s" / "kind-e2e.sh").read_text()
    values = yaml.safe_load((REPO_ROOT / "k8s" / "kind-values.yaml").read_text())
    assert f"name: {values['worker']['dataVolume']['existingClaim']}" in script
    assert "-f k8s/kind-values.yaml" in script
    assert "apply -f k8s/job-submit-cli.yaml" in script
    assert "RELEASE=batch-inference" in script, "the Jobs read the ConfigMap of release batch-inference"
