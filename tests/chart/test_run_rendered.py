"""Run what the cluster would run, taken out of the rendered chart and the k8s/ Jobs.

No cluster here, so each piece is executed as the kubelet would execute it, against the
session's real Temporal dev server and local Ray Serve:
- the RayService's serveConfigV2 is deployed on the local Ray and called with the token from the
  rendered Secret (written where the Serve replicas read their token file);
- the worker Deployment's container (command/args from the image's ENTRYPOINT, env as rendered,
  Secret volume emulated as files) runs as a process, completes a batch, and stops on SIGTERM
  within its terminationGracePeriodSeconds, also in the middle of a batch;
- each Job in k8s/ runs as a process (env from the rendered ConfigMap + its own env, `$(VAR)`
  expanded, downward-API job-name label) against a worker, and the batch completes.
Only cluster addresses are swapped for loopback ones (what DNS would resolve in the cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from services import constants as c
from services.local.processes import free_port, venv_bin
from services.worker.contracts import BatchInferenceInput, BatchInferenceOutput, Progress, Tuning
from tests.helpers.batches import start_batch
from tests.helpers.k8s import (
    REPO_ROOT,
    dockerfile_entrypoint,
    expand_k8s_vars,
    find,
    job_pod_metadata,
    load_k8s,
    pod_env,
    render,
    secret_data,
)
from tests.helpers.records import iris_records, read_outputs, write_jsonl

pytestmark = pytest.mark.integration

IRIS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


# --- serveConfigV2 on the local Ray -------------------------------------------------------------


async def _wait_status(url: str, token: str | None, expected: int, timeout_s: float = 60) -> httpx.Response:
    headers = {c.AUTH_HEADER: f"{c.AUTH_SCHEME} {token}"} if token else {}
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=10) as http:
        while True:
            response = await http.post(url, json={"inputs": [{"features": f} for f in IRIS]}, headers=headers)
            if response.status_code == expected or time.monotonic() > deadline:
                return response
            await asyncio.sleep(0.3)


async def test_rendered_serve_config_deploys_and_authenticates(serve_stack, serve_token):
    docs = render(
        {
            "serve": {
                "deployments": {"iris": {"user_config": {"max_batch_size": 8}}},
                "applicationArgs": {"default_model": "iris"},
            }
        }
    )
    rayservice = find(docs, "RayService")
    (token,) = secret_data(find(docs, "Secret")).values()
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])

    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(config)
    assert token not in rayservice["spec"]["serveConfigV2"]
    local = copy.deepcopy(config)
    local["http_options"].update(host="127.0.0.1", port=serve_stack.http_port)  # the pod IP, here

    original = serve_stack.token_file.read_text()
    try:
        # The rendered Secret's token, in the file SERVE_AUTH_TOKENS_FILE names (Serve re-reads it).
        serve_stack.token_file.write_text(token + "\n")
        await asyncio.to_thread(serve_stack.deploy, local)
        deployed = await asyncio.to_thread(
            subprocess.run,
            [venv_bin("serve"), "config", "-a", serve_stack.dashboard],
            env=serve_stack.env(), capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        (app,) = list(yaml.safe_load_all(deployed.stdout))
        iris = next(d for d in app["deployments"] if d["name"] == "iris")
        assert iris["user_config"]["max_batch_size"] == 8 and app["args"]["default_model"] == "iris"

        url = serve_stack.url + c.INFERENCE_ROUTE  # the default model, set by applicationArgs
        ok = await _wait_status(url, token, 200)
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert [p["label"] for p in body["predictions"]] == ["setosa", "virginica"]
        assert body["errors"] == [None, None]
        assert (await _wait_status(url, None, 401, timeout_s=0)).status_code == 401
        stale = await _wait_status(url, serve_token, 403)
        assert stale.status_code == 403, "only the rendered Secret's token is accepted now"
    finally:
        serve_stack.token_file.write_text(original)
        await asyncio.to_thread(serve_stack.deploy)
        assert (await _wait_status(serve_stack.url + c.INFERENCE_ROUTE, serve_token, 200)).status_code == 200


# --- the worker Deployment as a process ---------------------------------------------------------


def local_volumes(pod_spec: dict, container: dict, root: Path, secrets: dict[str, dict[str, str]]) -> dict:
    """Emulate the container's volume mounts with local folders: Secret volumes become one file
    per key (contents from ``secrets``), emptyDirs empty folders. Returns mountPath -> folder."""
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    mapping: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        folder = root / "volumes" / mount["name"]
        folder.mkdir(parents=True, exist_ok=True)
        if "secret" in volume:
            for key, value in secrets[volume["secret"]["secretName"]].items():
                (folder / key).write_text(value)
                (folder / key).chmod(volume["secret"].get("defaultMode", 0o644))
        else:
            assert "emptyDir" in volume or "persistentVolumeClaim" in volume, volume
        mapping[mount["mountPath"]] = folder
    return mapping


def remap_paths(env: dict[str, str], mounts: dict[str, Path]) -> dict[str, str]:
    out = dict(env)
    for name, value in env.items():
        for mount_path, folder in mounts.items():
            if value.startswith(mount_path + "/"):
                out[name] = str(folder) + value[len(mount_path) :]
    return out


def base_env(home: Path) -> dict[str, str]:
    """What a container starts with before the pod's env: PATH, HOME, locale (no host env leaks)."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}


class WorkerProcess:
    """The rendered worker container, run as a local process (the image's ENTRYPOINT with the
    venv's Python in place of the image's)."""

    def __init__(self, docs: list[dict], root: Path, token: str, overrides: dict[str, str]):
        deployment = find(docs, "Deployment", "batch-inference-worker")
        self.pod = deployment["spec"]["template"]["spec"]
        (self.container,) = self.pod["containers"]
        secret = find(docs, "Secret")
        secrets = {secret["metadata"]["name"]: {k: token for k in secret_data(secret)}}
        mounts = local_volumes(self.pod, self.container, root, secrets)
        self.env = remap_paths(pod_env(self.container), mounts)
        assert self.env[c.ENV_SERVE_TOKEN_FILE].startswith(str(root)), "token file is in the Secret mount"
        self.env.update(overrides)
        command = self.container.get("command") or dockerfile_entrypoint(REPO_ROOT / "Dockerfile.worker")
        assert command[0] == "python"
        self.argv = [sys.executable, *command[1:], *self.container.get("args", [])]
        self.root = root
        self.proc: subprocess.Popen | None = None

    @property
    def grace_s(self) -> int:
        return self.pod["terminationGracePeriodSeconds"]

    def start(self, log_name: str) -> WorkerProcess:
        log = open(self.root / log_name, "wb")
        self.proc = subprocess.Popen(
            self.argv,
            env={**base_env(self.root), **self.env},
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    async def wait_ready(self) -> None:
        """The readiness probe: HTTP GET on the metrics port until 200, within the startup budget."""
        probe = self.container["readinessProbe"]["httpGet"]
        startup = self.container["startupProbe"]
        url = f"http://127.0.0.1:{self.env[c.ENV_WORKER_METRICS_PORT]}{probe['path']}"
        deadline = time.monotonic() + startup["periodSeconds"] * startup["failureThreshold"]
        async with httpx.AsyncClient(timeout=2) as http:
            while time.monotonic() < deadline:
                assert self.proc and self.proc.poll() is None, self.log()
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(url)).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise TimeoutError(f"worker not ready: {self.log()}")

    async def sigterm(self) -> tuple[int, float]:
        """What the kubelet does on pod deletion: SIGTERM, then SIGKILL after the grace period."""
        assert self.proc
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(self.proc.wait, self.grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(
                f"still running after terminationGracePeriodSeconds={self.grace_s}"
            ) from None
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return "".join(
            (self.root / p).read_text(errors="replace")[-3000:]
            for p in os.listdir(self.root)
            if p.endswith(".log")
        )


def _batch(tmp_path: Path, n: int, name: str, **tuning) -> tuple[BatchInferenceInput, list[dict], Path]:
    records = iris_records(n, prefix=f"{name}-")
    source = write_jsonl(tmp_path / f"{name}.jsonl", records)
    output = tmp_path / f"out-{name}"
    batch = BatchInferenceInput(
        input_uri=str(source), output_uri=str(output), model="iris", tuning=Tuning(**tuning)
    )
    return batch, records, output


def _assert_every_id_once(records: list[dict], output: Path) -> None:
    results, errors = read_outputs(output)
    assert not errors
    assert Counter(r["id"] for r in results) == Counter(r["id"] for r in records)


async def test_rendered_worker_completes_a_batch_and_stops_on_sigterm(
    tmp_path, client, temporal_server, serve_stack, serve_token
):
    queue = f"k8s-worker-{uuid.uuid4().hex[:8]}"

    def overrides() -> dict[str, str]:
        return {
            c.ENV_TEMPORAL_ADDRESS: temporal_server.address,  # <svc>.<ns>.svc:7233 in the cluster
            c.ENV_SERVE_URL: serve_stack.url,  # <rayservice>-serve-svc.<ns>.svc:8000 in the cluster
            c.ENV_TEMPORAL_TASK_QUEUE: queue,  # this test's own queue on the shared dev server
            c.ENV_WORKER_METRICS_HOST: "127.0.0.1",  # the pod IP; loopback only here
            c.ENV_WORKER_METRICS_PORT: str(free_port()),
        }

    docs = render()
    first = WorkerProcess(docs, tmp_path, serve_token, overrides()).start("worker-1.log")
    second: WorkerProcess | None = None
    try:
        await first.wait_ready()
        # 1. A batch completes: every id exactly once.
        batch, records, output = _batch(tmp_path, 600, "a", shard_size=200)
        result = await client.execute_workflow(
            c.WORKFLOW_NAME, batch, id=f"k8s-a-{uuid.uuid4().hex[:6]}", task_queue=queue,
            result_type=BatchInferenceOutput, execution_timeout=timedelta(minutes=10),
        )  # fmt: skip
        assert (result.succeeded, result.failed) == (600, 0)
        _assert_every_id_once(records, output)

        # 2. SIGTERM in the middle of a batch: running shards finish, the process exits 0 within
        #    terminationGracePeriodSeconds; another pod picks up the rest.
        batch, records, output = _batch(
            tmp_path, 6_000, "b", shard_size=500, micro_batch_size=8, max_in_flight=1, max_concurrent_shards=2
        )
        handle = await start_batch(client, queue, batch, "k8s-b")
        deadline = time.monotonic() + 300
        while True:
            progress: Progress = await handle.query(c.PROGRESS_QUERY, result_type=Progress)
            if progress.shards_running and progress.succeeded:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"batch did not start running: {progress}")
            await asyncio.sleep(0.05)
        code, took = await first.sigterm()
        assert code == 0, first.log()
        assert took < first.grace_s
        running = f"{progress.succeeded} done, {progress.shards_running} shards running"
        print(f"SIGTERM mid-batch ({running}) -> exit 0 in {took:.2f}s")
        (tmp_path / "pod-2").mkdir()
        second = WorkerProcess(docs, tmp_path / "pod-2", serve_token, overrides()).start("worker-2.log")
        await second.wait_ready()
        result = await asyncio.wait_for(handle.result(), 600)
        assert (result.succeeded, result.failed) == (6_000, 0)
        _assert_every_id_once(records, output)

        # 3. Idle: SIGTERM stops it promptly with exit code 0.
        code, took = await second.sigterm()
        assert code == 0, second.log()
        assert took < 10, f"idle worker took {took:.1f}s to stop"
        print(f"idle SIGTERM -> exit 0 in {took:.2f}s (grace period {second.grace_s}s)")
    finally:
        first.kill()
        if second:
            second.kill()


# --- the Jobs in k8s/ as processes --------------------------------------------------------------


def job_command(job_file: str, env_overrides: dict[str, str]) -> tuple[list[str], dict[str, str], dict]:
    """The Job's container as the kubelet runs it: env from the chart's ConfigMap (envFrom) and
    the Job's own env, downward-API labels, ``$(VAR)`` expanded in command and args."""
    job = load_k8s(job_file)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    config_maps = {d["metadata"]["name"]: d["data"] for d in render() if d["kind"] == "ConfigMap"}
    env = pod_env(container, config_maps, job_pod_metadata(job), env_overrides)
    argv = [expand_k8s_vars(a, env) for a in container["command"] + container.get("args", [])]
    assert not [a for a in argv if "$(" in a], f"unexpanded references: {argv}"
    argv[0] = venv_bin(argv[0])  # the image's binary on PATH -> the same program from the venv
    return argv, env, job


def batch_job(
    job_file: str, address: str, queue: str, source: Path, output: Path
) -> tuple[list[str], dict[str, str], dict]:
    """``job_command`` for a batch of ``source`` into ``output`` (what a user edits in the Job)
    on this Temporal and task queue."""
    return job_command(
        job_file,
        {
            c.ENV_TEMPORAL_ADDRESS: address,
            c.ENV_TEMPORAL_TASK_QUEUE: queue,
            "INPUT_URI": str(source),
            "OUTPUT_URI": str(output),
        },
    )


async def run_process(
    argv: list[str], env: dict[str, str], cwd: Path, timeout_s: float = 180
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, env={**base_env(cwd), **env}, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        raise
    return proc.returncode or 0, out.decode(), err.decode()


async def test_submit_cli_job_runs_a_batch_to_the_end(tmp_path, client, temporal_server, run_worker):
    records = iris_records(700, prefix="cli-")
    source = write_jsonl(tmp_path / "in.jsonl", records)
    output = tmp_path / "out"
    async with run_worker() as queue:
        argv, env, job = batch_job("job-submit-cli.yaml", temporal_server.address, queue, source, output)
        assert argv[1:3] == ["submit", "--input"] and "--wait" in argv
        code, out, err = await run_process(argv, env, tmp_path)
    assert code == 0, f"exit code {code}\nstdout:\n{out[-2000:]}\nstderr:\n{err[-3000:]}"
    assert '"succeeded": 700' in out and "completed: 700 succeeded, 0 failed" in out
    _assert_every_id_once(records, output)
    workflow_id = job["metadata"]["name"]  # the downward-API job-name label
    described = await client.get_workflow_handle(workflow_id).describe()
    assert described.task_queue == queue and described.workflow_type == c.WORKFLOW_NAME


async def test_temporal_cli_job_starts_a_batch_the_worker_completes(
    tmp_path, client, temporal_server, run_worker
):
    records = iris_records(500, prefix="tcli-")
    source = write_jsonl(tmp_path / "in.jsonl", records)
    output = tmp_path / "out"
    async with run_worker() as queue:
        argv, env, job = batch_job("job-temporal-cli.yaml", temporal_server.address, queue, source, output)
        assert argv[1:3] == ["workflow", "start"]
        assert argv[argv.index("--address") + 1] == temporal_server.address
        code, out, err = await run_process(argv, env, tmp_path, timeout_s=60)
        assert code == 0, err + out
        handle = client.get_workflow_handle(job["metadata"]["name"], result_type=BatchInferenceOutput)
        result = await asyncio.wait_for(handle.result(), 600)
    assert (result.succeeded, result.failed, result.output_uri) == (500, 0, str(output))
    _assert_every_id_once(records, output)
