"""The CLI as an operator meets it: each mistake run as a user would (``batch-inference ...`` as a
process against the session's dev server and Serve), reading its output and exit code. No
traceback anywhere; each message says what to do.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services import constants as c
from services.local.processes import free_port, venv_bin
from services.worker.contracts import Tuning
from services.worker.manifests import DataSpec
from tests.helpers.records import echo_records, iris_records, write_jsonl
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.integration

NO_SUCH = "error: no batch with workflow id 'no-such-id' (see `batch-inference list`)\n"


@dataclass
class Run:
    code: int
    out: str
    err: str


def cli_env(temporal_address: str, queue: str | None = None, **extra: str) -> dict[str, str]:
    """The user's shell: only what the README's three-terminal setup sets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "SERVE_", "WORKER_"))}
    env[c.ENV_TEMPORAL_ADDRESS] = temporal_address
    if queue:
        env[c.ENV_TEMPORAL_TASK_QUEUE] = queue
    env.update(extra)
    return env


async def cli(*args: str, env: dict[str, str], timeout_s: float = 120) -> Run:
    done = await asyncio.to_thread(
        subprocess.run,
        [venv_bin("batch-inference"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    return Run(done.returncode, done.stdout, done.stderr)


def queue_name() -> str:
    return f"cli-{uuid.uuid4().hex[:8]}"


async def serve_models(serve_stack, serve_token: str) -> list[str]:
    async with httpx.AsyncClient() as http:
        answer = await http.get(
            serve_stack.url + c.MODELS_ROUTE, headers={c.AUTH_HEADER: f"Bearer {serve_token}"}, timeout=10
        )
    return sorted(answer.json()["models"])


async def test_an_unknown_workflow_id_is_named(temporal_server):
    env = cli_env(temporal_server.address)
    for args in (["progress", "no-such-id"], ["progress", "--watch", "no-such-id"], ["cancel", "no-such-id"]):
        run = await cli(*args, env=env)
        assert (run.code, run.err, run.out) == (2, NO_SUCH, ""), args


async def test_no_temporal_says_where_it_looked():
    address = f"127.0.0.1:{free_port()}"
    run = await cli("list", env=cli_env(address))
    assert run.code == 2 and run.err.count("\n") == 1
    assert run.err.startswith(f"error: cannot connect to Temporal at {address} (namespace default): start it")
    assert c.ENV_TEMPORAL_ADDRESS in run.err


async def test_a_second_worker_names_the_port_and_the_setting(
    temporal_server, serve_stack, serve_token_file, spawn_worker
):
    queue, port = queue_name(), free_port()
    await spawn_worker(
        temporal_server.address,
        queue,
        serve_stack.url,
        serve_token_file,
        **{c.ENV_WORKER_METRICS_PORT: str(port)},
    ).polling()
    env = cli_env(
        temporal_server.address,
        queue,
        **{
            c.ENV_SERVE_URL: serve_stack.url,
            c.ENV_SERVE_TOKEN_FILE: str(serve_token_file),
            c.ENV_WORKER_METRICS_PORT: str(port),
        },
    )
    run = await cli("worker", env=env, timeout_s=60)
    assert run.code == 2
    (line,) = run.err.splitlines()
    setting = c.ENV_WORKER_METRICS_PORT
    assert line.startswith(
        f"error: port {port} (the worker's /metrics on 127.0.0.1) is already in use: another worker on this "
        f"machine? Give this one another port with {setting} (e.g. {setting}="
    )
    assert line.endswith(f"or {c.ENV_WORKER_METRICS_PORT}=0 to turn its /metrics off")


async def test_a_second_temporal_or_serve_names_the_port(temporal_server, tmp_path):
    env = cli_env(temporal_server.address)
    run = await cli("temporal", "--port", str(temporal_server.port), "--state-dir", str(tmp_path), env=env)
    assert run.code == 2 and run.err.count("\n") == 1
    assert run.err.startswith(f"error: port {temporal_server.port} (Temporal's gRPC) is already in use: ")
    assert "--port " in run.err and c.ENV_TEMPORAL_ADDRESS in run.err

    # The local Serve's HTTP port is fixed (the worker's default SERVE_URL): held here unless
    # something else holds it already, either way taken.
    with socket.socket() as held:
        try:
            held.bind(("127.0.0.1", c.SERVE_HTTP_PORT))
            held.listen()
        except OSError:
            pass
        run = await cli("serve", "--state-dir", str(tmp_path), env=env, timeout_s=60)
    assert run.code == 2 and run.err.count("\n") == 1
    assert run.err.startswith(f"error: port {c.SERVE_HTTP_PORT} (Ray Serve's HTTP) is already in use: ")
    assert "stop it first" in run.err


async def test_bad_settings_name_the_valid_keys_and_what_fits(temporal_server, tmp_path):
    env = cli_env(temporal_server.address)
    base = ["submit", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out")]
    run = await cli(*base, "--set", "bogus=1", env=env)
    assert run.code == 2 and run.err.count("\n") == 1
    assert run.err.startswith("error: unknown setting 'bogus'; valid: data options ")
    assert all(key in run.err for key in [*DataSpec.model_fields, *Tuning.model_fields])

    run = await cli(*base, "--set", "micro_batch_size=5000", env=env)
    assert (run.code, run.err) == (
        2,
        "error: micro_batch_size (records per HTTP request): input should be less than or equal to 1024 "
        "(got 5000)\n",
    )


async def test_unknown_model_and_missing_input_fail_at_once_in_one_line(
    temporal_server, serve_stack, serve_token, serve_token_file, spawn_worker, tmp_path
):
    queue = queue_name()
    worker = await spawn_worker(temporal_server.address, queue, serve_stack.url, serve_token_file).polling()
    env = cli_env(temporal_server.address, queue)
    source = write_jsonl(tmp_path / "in.jsonl", iris_records(20))
    output = tmp_path / "out"

    run = await cli(
        "submit", "--input", str(source), "--output", str(output), "--model", "nope", "--wait", env=env
    )
    known = ", ".join(await serve_models(serve_stack, serve_token))
    assert run.code == 1
    assert run.err.splitlines()[-1] == f"batch failed: unknown model 'nope'; Serve has: {known}"
    assert not (output / c.PLAN_FILE).exists(), "refused before planning: no shard started"

    missing = tmp_path / "missing.jsonl"
    run = await cli("submit", "--input", str(missing), "--output", str(output), "--wait", env=env)
    assert run.code == 1
    assert run.err.splitlines()[-1] == f"batch failed: input not found: {missing}"

    # The worker logged each as one line with its reason, no stack trace.
    def failures() -> list[str]:
        return [line for line in worker.text().splitlines() if "Completing activity as failed" in line]

    await wait_until(lambda: len(failures()) >= 2, 10, "the worker's two failure lines")
    lines = failures()
    assert lines[0].endswith(f": UnknownModel: unknown model 'nope'; Serve has: {known}")
    assert lines[1].endswith(f": InputNotFound: input not found: {missing}")
    assert "Traceback" not in worker.text()


async def test_list_and_cancel(temporal_server, serve_stack, serve_token_file, spawn_worker, tmp_path):
    queue = queue_name()
    await spawn_worker(temporal_server.address, queue, serve_stack.url, serve_token_file).polling()
    env = cli_env(temporal_server.address, queue)
    done_id, slow_id = f"done-{uuid.uuid4().hex[:6]}", f"slow-{uuid.uuid4().hex[:6]}"

    small = write_jsonl(tmp_path / "small.jsonl", echo_records(30))
    run = await cli("submit", "--input", str(small), "--output", str(tmp_path / "o1"), "--model", "echo",
                    "--id", done_id, "--wait", env=env)  # fmt: skip
    assert run.code == 0, run.err
    # Slow on purpose: two records a request, one request at a time, one shard.
    slow = write_jsonl(tmp_path / "slow.jsonl", echo_records(20_000))
    run = await cli("submit", "--input", str(slow), "--output", str(tmp_path / "o2"), "--model", "echo",
                    "--id", slow_id, "--set", "micro_batch_size=2", "--set", "max_in_flight=1",
                    "--set", "max_concurrent_shards=1", env=env)  # fmt: skip
    assert (run.code, run.out) == (0, f"{slow_id}\n"), run.err

    async def rows() -> dict[str, dict]:
        listed = await cli("list", "--json", "--limit", "100", env=env)
        assert listed.code == 0, listed.err
        return {row["workflow_id"]: row for row in map(json.loads, listed.out.splitlines())}

    for _ in range(100):
        running = (await rows())[slow_id]
        if running["total_records"]:
            break
        await asyncio.sleep(0.2)
    assert (running["status"], running["total_records"]) == ("running", 20_000)

    table = await cli("list", env=env)
    header, *lines = table.out.splitlines()
    assert header.split() == ["WORKFLOW", "ID", "STATUS", "SUCCEEDED", "FAILED", "TOTAL", "AGE"]
    assert any(line.split()[:2] == [slow_id, "running"] for line in lines)

    run = await cli("cancel", slow_id, env=env)
    assert run.code == 0, run.err
    assert json.loads(run.out) == {"workflow_id": slow_id, "status": "cancelled"}
    assert f"`batch-inference resume {slow_id}`" in run.err

    listed = await rows()
    assert listed[slow_id]["status"] == "cancelled"
    finished = listed[done_id]
    assert (finished["status"], finished["total_records"], finished["succeeded"], finished["failed"]) == (
        "completed",
        30,
        30,
        0,
    )
    run = await cli("cancel", slow_id, env=env)
    assert (run.code, run.out) == (0, f"batch {slow_id!r} already ended (cancelled): nothing to cancel\n")


async def test_no_worker_is_named_with_its_task_queue(client, temporal_server, tmp_path):
    queue = queue_name()  # nobody polls it
    env = cli_env(temporal_server.address, queue)
    source = write_jsonl(tmp_path / "in.jsonl", echo_records(3))
    run = await cli("submit", "--input", str(source), "--output", str(tmp_path / "out"), env=env)
    workflow_id = run.out.strip()
    try:
        run = await cli("progress", workflow_id, env=env)
        assert (run.code, run.err) == (
            2,
            f"error: no worker answered for batch {workflow_id!r} within 10s: start one on its task queue "
            f"({c.ENV_TEMPORAL_TASK_QUEUE}={queue} batch-inference worker)\n",
        )
        run = await cli("cancel", workflow_id, "--wait-s", "1", env=env)
        assert run.code == 1 and "is still stopping after 1s (is a worker running?)" in run.err
    finally:
        await client.get_workflow_handle(workflow_id).terminate("test over")


def test_readme_documents_list_cancel_and_the_errors():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for text in ("batch-inference list", "batch-inference cancel", NO_SUCH.removesuffix("\n")):
        assert text in readme, text
