"""The chart's `schedules:`: the hook Jobs rendered and validated, bad values refused, and the
Jobs' commands run as the kubelet would run them, against the session's real Temporal dev server:
install (created), upgrade unchanged and changed (updated in place, an unlisted one deleted, never
a second one), a run of a chart-made schedule completing on a worker, uninstall (all deleted)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow.parquet as pq
import pytest
from temporalio.client import Client, ScheduleActionExecutionStartWorkflow

from services import constants as c
from services import schedules as s
from services.local.processes import venv_bin
from services.worker.contracts import BatchInferenceOutput
from services.worker.uri_templates import PLACEHOLDERS
from tests.helpers.k8s import (
    CHART,
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    chart_values,
    expand_k8s_vars,
    find,
    job_pod_metadata,
    lint,
    pod_env,
    render,
    validate_core,
)
from tests.helpers.records import iris_records, write_jsonl

OWNER = f"helm:{NAMESPACE}/{RELEASE}"
NIGHTLY = {
    "id": "iris-nightly",
    "cron": "0 2 * * *",
    "timeZone": "Europe/Berlin",
    "input": "s3://bucket/events/date={date}/",
    "output": "s3://bucket/scored/{date}/",
    "model": "iris",
    "set": {"output_format": "parquet", "micro_batch_size": 500},
    "overlap": "skip",
    "catchupWindow": "6h",
    "priority": 2,
    "fairnessKey": "analytics",
}
HOURLY = {
    "id": "hourly",
    "every": "1h",
    "input": ["s3://b/a/{date}/{hour}/"],
    "output": "s3://b/o/{datetime}",
}


def hook_jobs(docs: list[dict]) -> dict[str, dict]:
    return {d["metadata"]["annotations"]["helm.sh/hook"]: d for d in docs if d["kind"] == "Job"}


# --- rendering ------------------------------------------------------------------------------------


def test_hook_jobs_render_valid_and_locked_down() -> None:
    values = {
        "schedules": [NIGHTLY, HOURLY],
        "temporal": {"tls": {"enabled": True, "existingSecret": "mtls"}},
    }
    assert lint(values)["errors"] == []
    docs = render(values)
    for version in KUBE_VERSIONS:
        for doc in docs:
            if doc["apiVersion"].split("/")[0] in ("v1", "apps", "batch", "policy", "networking.k8s.io"):
                validate_core(doc, version)
    jobs = hook_jobs(docs)
    assert set(jobs) == {"post-install,post-upgrade", "pre-delete"}
    worker = find(docs, "Deployment", f"{RELEASE}-worker")["spec"]["template"]["spec"]
    (worker_container,) = worker["containers"]
    for job in jobs.values():
        assert (
            job["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
            == "before-hook-creation,hook-succeeded"
        )
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert container["image"] == worker_container["image"] and container["command"] == ["batch-inference"]
        # The workers' Temporal connection, TLS files included: one definition for both.
        temporal = [e for e in worker_container["env"] if e["name"].startswith("TEMPORAL_")]
        assert [e for e in container["env"] if e["name"].startswith("TEMPORAL_")] == temporal
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["temporal-tls"] == next(
            m for m in worker_container["volumeMounts"] if m["name"] == "temporal-tls"
        )
        assert "serve-auth" not in mounts, "the Jobs need no Serve token"
    apply_args = jobs["post-install,post-upgrade"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert apply_args[:5] == ["schedule", "apply", "--owner", OWNER, "--json"]
    assert s.ScheduleConfig.model_validate(json.loads(apply_args[5])[0]).id == "iris-nightly"
    delete_args = jobs["pre-delete"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert delete_args == ["schedule", "delete", "--owner", OWNER]


def test_when_the_jobs_render() -> None:
    assert hook_jobs(render()) == {}, "no schedules, auto: no Jobs (an install needs no Temporal)"
    always = hook_jobs(render({"scheduleJob": {"enabled": True}}))
    assert (
        always["post-install,post-upgrade"]["spec"]["template"]["spec"]["containers"][0]["args"][-1] == "[]"
    )
    assert hook_jobs(render({"schedules": [NIGHTLY], "scheduleJob": {"enabled": False}})) == {}


def test_values_yaml_documents_every_schedule_key() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    keys = set(schema["properties"]["schedules"]["items"]["properties"])
    text = (CHART / "values.yaml").read_text()
    documented = text[text.index("# -- Schedules.") : text.index("schedules: []")]
    assert all(f"`{key}`" in documented for key in keys), keys
    assert chart_values()["schedules"] == [] and chart_values()["scheduleJob"]["enabled"] == "auto"
    # The schema's placeholder pattern names exactly the placeholders the workflow fills.
    pattern = schema["properties"]["schedules"]["items"]["properties"]["output"]["pattern"]
    assert set(re.search(r"\\\{\((.*?)\)\\\}", pattern).group(1).split("|")) == set(PLACEHOLDERS)


BAD = [
    ("neither cron nor every", {"cron": None}, r"/schedules/0'?: 'anyOf' failed.*missing property 'every'"),
    (
        "unknown placeholder",
        {"output": "s3://b/{dt}/"},
        r"/schedules/0/output'?: 's3://b/\{dt\}/' does not match",
    ),
    ("bad overlap", {"overlap": "queue"}, r"/schedules/0/overlap'?: value must be one of 'skip'"),
    (
        "bad catch-up window",
        {"catchupWindow": "1 day"},
        r"/schedules/0/catchupWindow'?: '1 day' does not match",
    ),
    ("a misspelt key", {"timezone": "UTC"}, r"/schedules/0'?: additional properties 'timezone' not allowed"),
    ("a cron of three fields", {"cron": "0 2 *"}, r"/schedules/0/cron'?: '0 2 \*' does not match"),
    ("an id with a space", {"id": "my batch"}, r"/schedules/0/id'?: 'my batch' does not match"),
    ("priority 0", {"priority": 0}, r"/schedules/0/priority'?: minimum: got 0, want 1"),
]


@pytest.mark.parametrize(("kind", "change", "message"), BAD, ids=[b[0] for b in BAD])
def test_schema_rejects_bad_schedules(kind: str, change: dict, message: str) -> None:
    import helm_python

    entry = {k: v for k, v in {**NIGHTLY, **change}.items() if v is not None}
    with pytest.raises(helm_python.HelmValuesError) as err:
        render({"schedules": [entry]})
    assert re.search(message, str(err.value), re.S), str(err.value)


def test_template_refuses_duplicates_and_both_cron_and_every() -> None:
    import helm_python

    with pytest.raises(helm_python.HelmRenderError, match=r'schedules: id "iris-nightly" is listed twice'):
        render({"schedules": [NIGHTLY, NIGHTLY]})
    with pytest.raises(helm_python.HelmRenderError, match=r'"iris-nightly" has both cron and every'):
        render({"schedules": [{**NIGHTLY, "every": "1h"}]})


# --- the Jobs as processes against the dev server ----------------------------------------------------


def job_argv(job: dict, overrides: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The Job's container as the kubelet runs it: env as rendered (plus what DNS would resolve
    differently here), ``$(VAR)`` expanded, the image's binary from the venv."""
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = pod_env(container, pod_metadata=job_pod_metadata(job), overrides=overrides)
    argv = [expand_k8s_vars(a, env) for a in container["command"] + container.get("args", [])]
    argv[0] = venv_bin(argv[0])
    return argv, env


async def run_job(job: dict, overrides: dict[str, str], cwd: Path) -> str:
    argv, env = job_argv(job, overrides)
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), "LANG": "C.UTF-8"}
    proc = await asyncio.create_subprocess_exec(
        *argv, env={**base, **env}, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out.decode()}\n{err.decode()}"
    assert "Traceback" not in err.decode()
    return out.decode()


async def owned(client: Client) -> dict[str, s.ScheduleConfig]:
    found = {}
    for schedule_id in await s.owned_by(client, OWNER):
        config = s.stored_config(client, await client.get_schedule_handle(schedule_id).describe())
        assert config is not None
        found[schedule_id] = config
    return found


async def wait_owned(client: Client, ids: set[str]) -> dict[str, s.ScheduleConfig]:
    """What the release owns, once Temporal's schedule list (visibility) shows ``ids``."""
    for _ in range(100):
        found = await owned(client)
        if set(found) == ids:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"owned {set(found)}, expected {ids}")


@pytest.mark.integration
async def test_hook_jobs_apply_update_and_delete_the_releases_schedules(
    tmp_path, client, temporal_server, run_worker
):
    suffix = uuid.uuid4().hex[:6]
    nightly = {**NIGHTLY, "id": f"nightly-{suffix}", "input": f"{tmp_path}/events/date={{date}}/",
               "output": f"{tmp_path}/scored/{{date}}/", "set": {"output_format": "parquet"}}  # fmt: skip
    hourly = {**HOURLY, "id": f"hourly-{suffix}"}
    async with run_worker() as queue:
        # What DNS and the test's own task queue change; everything else as rendered.
        overrides = {c.ENV_TEMPORAL_ADDRESS: temporal_server.address, c.ENV_TEMPORAL_TASK_QUEUE: queue}
        try:
            # helm install
            install = hook_jobs(render({"schedules": [nightly, hourly]}))["post-install,post-upgrade"]
            out = await run_job(install, overrides, tmp_path)
            assert f"{nightly['id']}: created" in out and f"{hourly['id']}: created" in out
            found = await wait_owned(client, {nightly["id"], hourly["id"]})
            assert (
                found[nightly["id"]].task_queue == queue and found[nightly["id"]].time_zone == "Europe/Berlin"
            )

            # helm upgrade, same values: nothing changes
            out = await run_job(install, overrides, tmp_path)
            assert f"{nightly['id']}: unchanged" in out and f"{hourly['id']}: unchanged" in out

            # helm upgrade: nightly changed, hourly removed from the list
            changed = {**nightly, "cron": "30 3 * * *", "paused": True}
            upgrade = hook_jobs(render({"schedules": [changed]}))["post-install,post-upgrade"]
            out = await run_job(upgrade, overrides, tmp_path)
            assert f"{nightly['id']}: updated" in out and f"{hourly['id']}: deleted" in out
            found = await wait_owned(client, {nightly["id"]})
            assert found[nightly["id"]].cron == "30 3 * * *"
            description = await client.get_schedule_handle(nightly["id"]).describe()
            assert description.schedule.state.paused

            # A run of the chart's schedule: its templates and settings reach the worker.
            records = iris_records(120, prefix="chart-")
            berlin = ZoneInfo("Europe/Berlin")
            for day in (datetime.now(berlin), datetime.now(berlin) + timedelta(days=1)):
                write_jsonl(tmp_path / "events" / f"date={day:%Y-%m-%d}" / "part-0.jsonl", records)
            handle = client.get_schedule_handle(nightly["id"])
            await handle.trigger()
            for _ in range(100):
                recent = (await handle.describe()).info.recent_actions
                if recent:
                    break
                await asyncio.sleep(0.1)
            action = recent[0].action
            assert isinstance(action, ScheduleActionExecutionStartWorkflow)
            day = f"{recent[0].scheduled_at.astimezone(berlin):%Y-%m-%d}"
            result = await asyncio.wait_for(
                client.get_workflow_handle(action.workflow_id, result_type=BatchInferenceOutput).result(), 120
            )
            # A local path is made absolute (no trailing slash); the set reached the batch too.
            assert result.output_uri == f"{tmp_path}/scored/{day}" and result.succeeded == 120
            table = pq.read_table(result.output_uri)
            assert sorted(table.column("id").to_pylist()) == sorted(r["id"] for r in records)
            # The chart's priority and fairness key: on the run, and on the shards it scheduled.
            history = await client.get_workflow_handle(action.workflow_id).fetch_history()
            started = history.events[0].workflow_execution_started_event_attributes.priority
            assert (started.priority_key, started.fairness_key) == (2, "analytics")
            shards = [e.activity_task_scheduled_event_attributes.priority for e in history.events
                      if e.HasField("activity_task_scheduled_event_attributes")]  # fmt: skip
            assert shards and all((p.priority_key, p.fairness_key) == (2, "analytics") for p in shards)
        finally:
            # helm uninstall
            delete = hook_jobs(render({"schedules": [nightly]}))["pre-delete"]
            out = await run_job(delete, overrides, tmp_path)
        assert f"{nightly['id']}: deleted" in out
        await wait_owned(client, set())
