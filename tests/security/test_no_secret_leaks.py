"""Run batches with known tokens, then search everything the system writes for them.

A batch that succeeds (the session's Serve token, read by the worker from a file) and one that
fails because the worker sends a wrong token (given in an env var). Then: both worker processes'
logs, their /metrics, the workflow histories (``temporal workflow show --output json``) and the
failure text, the batch's output files, the Temporal server's log, every file Ray and Serve
wrote under the local stack's temp dir, Ray's metrics endpoint and the deployed Serve config.
None may contain either token.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from pathlib import Path

import httpx
import pytest
from temporalio.client import WorkflowFailureError

from services import constants as c
from services.cli import describe_failure
from services.local.processes import free_port, venv_bin
from services.worker.contracts import BatchInferenceInput, BatchInferenceOutput
from tests.helpers.records import iris_records, write_jsonl

pytestmark = pytest.mark.integration


async def run(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()[-2000:]
    return out.decode(errors="replace")


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


async def test_no_token_in_logs_metrics_history_errors_or_outputs(
    client, temporal_server, serve_stack, serve_token, serve_token_file, spawn_worker, tmp_path
):
    wrong = f"wrong-{secrets.token_urlsafe(24)}"
    source = write_jsonl(tmp_path / "in.jsonl", iris_records(300))
    ports = {"good": free_port(), "bad": free_port()}
    queues = {"good": f"leak-{uuid.uuid4().hex[:8]}", "bad": f"leak-{uuid.uuid4().hex[:8]}"}
    good = await spawn_worker(
        temporal_server.address, queues["good"], serve_stack.url, serve_token_file,
        **{c.ENV_WORKER_METRICS_PORT: str(ports["good"])},
    ).polling()  # fmt: skip
    bad = await spawn_worker(
        temporal_server.address, queues["bad"], serve_stack.url, Path("/nonexistent"),
        **{c.ENV_SERVE_TOKEN_FILE: "", c.ENV_SERVE_TOKEN: wrong},
        **{c.ENV_WORKER_METRICS_PORT: str(ports["bad"])},
    ).polling()  # fmt: skip

    ids = {"good": f"leak-ok-{uuid.uuid4().hex[:8]}", "bad": f"leak-403-{uuid.uuid4().hex[:8]}"}
    result = await client.execute_workflow(
        c.WORKFLOW_NAME,
        BatchInferenceInput(input_uri=str(source), output_uri=str(tmp_path / "out-good"), model="iris"),
        id=ids["good"], task_queue=queues["good"], result_type=BatchInferenceOutput,
    )  # fmt: skip
    assert result.succeeded == 300
    with pytest.raises(WorkflowFailureError) as err:
        await client.execute_workflow(
            c.WORKFLOW_NAME,
            BatchInferenceInput(input_uri=str(source), output_uri=str(tmp_path / "out-bad"), model="iris"),
            id=ids["bad"], task_queue=queues["bad"], result_type=BatchInferenceOutput,
        )  # fmt: skip
    failure = describe_failure(err.value)
    assert "Serve answered 403" in failure

    texts: dict[str, str] = {"failure text": failure}
    async with httpx.AsyncClient(timeout=30) as http:
        for name, port in ports.items():
            texts[f"{name} worker /metrics"] = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        texts["ray metrics"] = (await http.get(f"http://127.0.0.1:{serve_stack.metrics_port}/metrics")).text
    for name, workflow_id in ids.items():
        texts[f"{name} history"] = await run(
            venv_bin("temporal"), "workflow", "show", "--address", temporal_server.address,
            "--workflow-id", workflow_id, "--output", "json",
        )  # fmt: skip
        assert workflow_id in texts[f"{name} history"]
    config = await asyncio.to_thread(
        serve_stack._run, venv_bin("serve"), "config", "-a", serve_stack.dashboard, timeout=60
    )
    assert config.returncode == 0 and "import_path" in config.stdout
    texts["deployed serve config"] = config.stdout
    for worker in (good, bad):
        worker.signal(2)  # SIGINT: stop like Ctrl-C, flushing the logs
        await worker.exited(30)
        texts[f"worker log {worker.log.name}"] = worker.text()
    assert c.WORKER_POLLING_LOG in texts[f"worker log {good.log.name}"], "the logs were captured"
    assert "Serve answered 403 (invalid token)" in texts[f"worker log {bad.log.name}"]

    searched = {
        "outputs": files_under(tmp_path / "out-good") + files_under(tmp_path / "out-bad"),
        "temporal server": files_under(temporal_server.state_dir),
        "ray and serve": sorted(
            set(files_under(serve_stack.ray_temp_dir()) + files_under(serve_stack.state_dir))
        ),
    }
    # Ray's own control-plane token is a secret file by design; the Serve token must not be in it.
    searched["ray and serve"] = [p for p in searched["ray and serve"] if p.name != "ray-auth-token"]
    assert any(p.suffix in (".log", ".out", ".err") for p in searched["ray and serve"]), "found Ray's logs"
    leaks = []
    for secret in (serve_token, wrong):
        needle = secret.encode()
        leaks += [f"{name} contains a token" for name, text in texts.items() if secret in text]
        for group, paths in searched.items():
            for path in paths:
                try:
                    if needle in path.read_bytes():
                        leaks.append(f"{group}: {path}")
                except OSError:
                    continue
    print(f"\nsearched {len(texts)} texts and {sum(len(p) for p in searched.values())} files for 2 tokens")
    assert not leaks, leaks
