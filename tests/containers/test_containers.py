"""Both images built on a real Docker engine and run the way the chart runs them (host network
here: there is no bridge). The Serve container gets the rendered serveConfigV2 and the rendered
Secret's token as a file; the worker container gets the rendered worker env and the pod's
securityContext, and completes a batch against the session's Temporal and Ray Serve."""

from __future__ import annotations

import asyncio
import shlex
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml

from services import constants as c
from services.local.processes import free_port
from services.worker.contracts import BatchInferenceInput, BatchInferenceOutput, Tuning
from tests.helpers.docker import ray_version
from tests.helpers.k8s import find, load_k8s, pod_env, render, secret_data
from tests.helpers.records import iris_records, read_outputs, write_jsonl

# A cold machine installs Docker and builds the base images inside the first test's setup.
pytestmark = [pytest.mark.containers, pytest.mark.timeout(1200)]

IRIS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


def _name(what: str) -> str:
    return f"bi-test-{what}-{uuid.uuid4().hex[:6]}"


def test_worker_image_contents(docker, worker_image) -> None:
    (job,) = load_k8s("job-submit-cli.yaml")["spec"]["template"]["spec"]["containers"]
    sample = next(e["value"] for e in job["env"] if e["name"] == "INPUT_URI")
    script = "; ".join(
        [
            "set -e",
            "id -u",
            "id -g",
            f"test -f {shlex.quote(sample)}",  # the Jobs' default input ships in the image
            "batch-inference submit --help >/dev/null",  # the CLI Job's command
            "for tool in gcc cc make; do ! command -v $tool; done",  # no build tools
            "! python -c 'import ray' 2>/dev/null",  # no Ray in the worker image
            # The object-store extras (EXTRAS' default): fsspec finds both backends.
            'python -c \'import fsspec; fsspec.filesystem("s3"); fsspec.filesystem("gs", token="anon")\'',
        ]
    )
    result = docker("run", "--rm", "--network", "host", "--entrypoint", "sh", worker_image, "-c", script)
    assert result.stdout.split()[:2] == ["10001", "10001"], result.stdout
    entrypoint = docker("image", "inspect", "-f", "{{json .Config.Entrypoint}}", worker_image).stdout.strip()
    assert entrypoint == '["python","-m","services.worker"]'


def test_serve_image_contents(docker, serve_image) -> None:
    script = (
        "set -e; id -u; command -v wget; python -c 'import ray, services.serve.app; print(ray.__version__)'"
    )
    result = docker("run", "--rm", "--network", "host", "--entrypoint", "bash", serve_image, "-c", script)
    uid, wget, version = result.stdout.split()
    assert (uid, version) == ("1000", ray_version())
    assert wget.endswith("/wget")


async def _get_until(url: str, timeout_s: float, alive) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=3) as http:
        while time.monotonic() < deadline:
            alive()
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError(f"{url} not answering within {timeout_s:.0f}s")


async def test_serve_container_answers_authenticated_requests(docker, serve_image, tmp_path: Path) -> None:
    docs = render()
    rayservice = find(docs, "RayService")
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]
    (container,) = head["template"]["spec"]["containers"]
    (token,) = secret_data(find(docs, "Secret")).values()

    # The Secret volume as the kubelet mounts it (readable by the container's user).
    secret_dir = tmp_path / "serve-auth"
    secret_dir.mkdir()
    (secret_dir / "token").write_text(token)
    (secret_dir / "token").chmod(0o444)
    mount = next(m for m in container["volumeMounts"] if m["name"] == "serve-auth")["mountPath"]

    # serveConfigV2 as rendered; only the bind address/port change (host network, shared ports).
    http_port = free_port()
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    config["http_options"].update(host="127.0.0.1", port=http_port)
    (tmp_path / "serve-config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "serve-config.yaml").chmod(0o444)

    # `ray start` as KubeRay runs it on the head, from the rendered rayStartParams. Changed: the
    # node stands for head + worker group (num-cpus 2), and every port is a free one.
    dashboard = free_port()
    params = {k: str(v) for k, v in head["rayStartParams"].items()}
    params.update({"num-cpus": "2", "dashboard-host": "127.0.0.1", "metrics-export-port": str(free_port())})
    low = 20_000 + (http_port % 20) * 500  # a worker-port range away from the session Ray's
    params.update(
        {
            "node-ip-address": "127.0.0.1", "port": str(free_port()), "dashboard-port": str(dashboard),
            "dashboard-agent-listen-port": str(free_port()), "dashboard-agent-grpc-port": str(free_port()),
            "node-manager-port": str(free_port()), "object-manager-port": str(free_port()),
            "runtime-env-agent-port": str(free_port()), "ray-client-server-port": str(free_port()),
            "min-worker-port": str(low), "max-worker-port": str(low + 400),
            "object-store-memory": "200000000",
        }
    )  # fmt: skip
    ray_start = "ray start --head --disable-usage-stats " + " ".join(
        f"--{k}={shlex.quote(v)}" for k, v in params.items()
    )
    script = (
        f"ulimit -n 65536; {ray_start} && serve deploy /config/serve-config.yaml -a http://127.0.0.1:{dashboard}"
        " && exec sleep infinity"
    )
    env = pod_env(container)
    # KubeRay's authOptions (rayAuthMode: token) gives Ray's control plane a token the same way.
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex})
    name = _name("serve")
    args = ["run", "-d", "--name", name, "--network", "host", "--shm-size", "512m"]
    args += [
        "-v",
        f"{secret_dir}:{mount}:ro",
        "-v",
        f"{tmp_path / 'serve-config.yaml'}:/config/serve-config.yaml:ro",
    ]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    started = time.monotonic()
    docker(*args, "--entrypoint", "bash", serve_image, "-c", script)

    def alive() -> None:
        assert docker.exit_code(name) is None, f"serve container exited:\n{docker.logs(name)}"

    try:
        base = f"http://127.0.0.1:{http_port}"
        await _get_until(base + c.HEALTH_ROUTE, 300, alive)
        print(f"serve container answering after {time.monotonic() - started:.0f}s")
        url = base + c.MODEL_INFERENCE_ROUTE.format(model="iris")
        body = {"inputs": [{"features": f} for f in IRIS]}
        async with httpx.AsyncClient(timeout=30) as http:
            ok = await http.post(url, json=body, headers={c.AUTH_HEADER: f"{c.AUTH_SCHEME} {token}"})
            assert ok.status_code == 200, ok.text
            assert [p["label"] for p in ok.json()["predictions"]] == ["setosa", "virginica"]
            assert (await http.post(url, json=body)).status_code == 401
        # KubeRay's Serve readiness probe, run inside the container with its wget.
        probe = docker("exec", name, "bash", "-c", f"wget -T 2 -q -O- http://127.0.0.1:{http_port}/-/healthz")
        assert "success" in probe.stdout
    finally:
        docker.remove(name)


async def test_worker_container_completes_a_batch(
    docker, worker_image, tmp_path: Path, client, temporal_server, serve_stack, serve_token
) -> None:
    docs = render()
    deployment = find(docs, "Deployment", "batch-inference-worker")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "command" not in container, "the image's ENTRYPOINT runs"

    secret_dir = tmp_path / "serve-auth"
    secret_dir.mkdir()
    for key in secret_data(find(docs, "Secret")):
        (secret_dir / key).write_text(serve_token)  # the token the session's Serve accepts
        (secret_dir / key).chmod(0o444)
    mount = next(m for m in container["volumeMounts"] if m["name"] == "serve-auth")["mountPath"]
    data = tmp_path / "data"  # shared storage: the same path inside and outside
    data.mkdir()
    data.chmod(0o777)

    queue = f"ctr-{uuid.uuid4().hex[:8]}"
    metrics_port = free_port()
    env = pod_env(
        container,
        overrides={
            c.ENV_TEMPORAL_ADDRESS: temporal_server.address,
            c.ENV_SERVE_URL: serve_stack.url,
            c.ENV_TEMPORAL_TASK_QUEUE: queue,
            c.ENV_WORKER_METRICS_HOST: "127.0.0.1",
            c.ENV_WORKER_METRICS_PORT: str(metrics_port),
        },
    )
    # The pod's securityContext, as Docker flags.
    sc, psc = container["securityContext"], pod["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"]
    assert not sc["allowPrivilegeEscalation"] and psc["runAsNonRoot"]
    args = ["run", "-d", "--name", (name := _name("worker")), "--network", "host"]
    args += ["--user", f"{psc['runAsUser']}:{psc['runAsGroup']}", "--read-only", "--cap-drop", "ALL"]
    args += ["--security-opt", "no-new-privileges", "--tmpfs", "/tmp"]
    args += ["-v", f"{secret_dir}:{mount}:ro", "-v", f"{data}:{data}"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    docker(*args, worker_image)

    def alive() -> None:
        assert docker.exit_code(name) is None, f"worker container exited:\n{docker.logs(name)}"

    try:
        probe = container["readinessProbe"]["httpGet"]["path"]
        await _get_until(f"http://127.0.0.1:{metrics_port}{probe}", 60, alive)
        records = iris_records(1_000, prefix="ctr-")
        source = write_jsonl(data / "in.jsonl", records)
        batch = BatchInferenceInput(
            input_uri=str(source), output_uri=str(data / "out"), model="iris", tuning=Tuning(shard_size=250)
        )
        result = await client.execute_workflow(
            c.WORKFLOW_NAME, batch, id=f"ctr-{uuid.uuid4().hex[:6]}", task_queue=queue,
            result_type=BatchInferenceOutput,
        )  # fmt: skip
        assert (result.succeeded, result.failed) == (1_000, 0)
        results, errors = read_outputs(data / "out")
        assert not errors
        assert Counter(r["id"] for r in results) == Counter(r["id"] for r in records)
        owner = {p.stat().st_uid for p in (data / "out").glob("shard-*.jsonl")}
        assert owner == {psc["runAsUser"]}, "written by the non-root container user"

        started = time.monotonic()
        grace = pod["terminationGracePeriodSeconds"]
        docker("stop", "-t", str(grace), name, timeout=grace + 30)
        took = time.monotonic() - started
        assert docker.exit_code(name) == 0, docker.logs(name)
        assert took < 10, f"idle worker container took {took:.1f}s to stop"
        print(f"worker container: SIGTERM -> exit 0 in {took:.1f}s")
    finally:
        docker.remove(name)
