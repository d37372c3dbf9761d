"""worker.objectStore: the S3/GCS settings become the standard env vars the storage libraries
read, static keys come only from Secrets (envFrom, a mounted key file), and the rendered S3
settings really steer s3fs to an S3-compatible server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from services import constants as c
from services.local.processes import LOOPBACK, free_port
from tests.helpers.k8s import VALUE_SETS, find, pod_env, render

OBJECT_STORE_ENV = {
    c.ENV_AWS_ENDPOINT_URL_S3,
    c.ENV_AWS_DEFAULT_REGION,
    c.ENV_STORAGE_EMULATOR_HOST,
    c.ENV_GOOGLE_APPLICATION_CREDENTIALS,
}
GCS_MOUNT = "/var/run/secrets/batch-inference/gcs-credentials"


def worker_pod(docs: list[dict]) -> tuple[dict, dict]:
    spec = find(docs, "Deployment", "batch-inference-worker")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return spec, container


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_object_store_values_become_env_envfrom_and_a_key_file(rendered) -> None:
    values = VALUE_SETS["everything"]["worker"]["objectStore"]
    spec, container = worker_pod(rendered["everything"])
    env = env_of(container)
    assert env[c.ENV_AWS_ENDPOINT_URL_S3] == values["s3"]["endpointUrl"]
    assert env[c.ENV_AWS_DEFAULT_REGION] == values["s3"]["region"]
    assert env[c.ENV_STORAGE_EMULATOR_HOST] == values["gcs"]["endpointUrl"]
    # Static keys: every key of the named Secret, by reference only.
    assert container["envFrom"] == [{"secretRef": {"name": values["credentialsSecret"]}}]
    # The GCS key file: only that key of the Secret, read-only, where the env var points.
    (volume,) = [v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == "gcs-key"]
    assert volume["secret"]["items"] == [{"key": "key.json", "path": "key.json"}]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True and mount["mountPath"] == GCS_MOUNT
    assert env[c.ENV_GOOGLE_APPLICATION_CREDENTIALS] == f"{GCS_MOUNT}/key.json"


def test_gcs_key_name_is_configurable() -> None:
    spec, container = worker_pod(
        render({"worker": {"objectStore": {"gcs": {"credentialsSecret": "sa", "credentialsKey": "sa.json"}}}})
    )
    (volume,) = [v for v in spec["volumes"] if v["name"] == "gcs-credentials"]
    assert volume["secret"] == {
        "secretName": "sa",
        "items": [{"key": "sa.json", "path": "sa.json"}],
        "defaultMode": 0o440,
    }
    env = env_of(container)
    assert env[c.ENV_GOOGLE_APPLICATION_CREDENTIALS] == f"{GCS_MOUNT}/sa.json"
    assert "envFrom" not in container
    assert set(env) & OBJECT_STORE_ENV == {c.ENV_GOOGLE_APPLICATION_CREDENTIALS}


@pytest.mark.parametrize("name", [n for n in VALUE_SETS if n != "everything"])
def test_no_object_store_settings_unless_asked(rendered, name: str) -> None:
    spec, container = worker_pod(rendered[name])
    assert "envFrom" not in container
    assert not OBJECT_STORE_ENV & set(env_of(container))
    assert "gcs-credentials" not in {v["name"] for v in spec["volumes"]}


def test_no_key_is_ever_a_plain_value(rendered) -> None:
    """Credentials reach the worker only through Secret references: no env entry of any value
    set carries a key, and the schema has no value for one (see test_values_schema)."""
    secret_like = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "GOOGLE_API_KEY"}
    for docs in rendered.values():
        _, container = worker_pod(docs)
        assert not secret_like & set(env_of(container))


# What a process with the rendered env does with s3:// URLs (the worker opens them through fsspec).
S3_CLIENT = """
import json, fsspec, fsspec.asyn
fs = fsspec.filesystem("s3")
with fsspec.open("s3://batch-data/in.jsonl", "wb") as fh:
    fh.write(b'{"id": 1}\\n')
creds = fsspec.asyn.sync(fs.loop, fs.session.get_credentials)
print(json.dumps({"endpoint": fs.s3.meta.endpoint_url, "region": fs.s3.meta.region_name,
                  "key_id": creds.access_key, "read": fs.cat("s3://batch-data/in.jsonl").decode()}))
"""


def test_rendered_s3_settings_reach_an_s3_compatible_server(tmp_path: Path) -> None:
    """The endpoint, region and a credentials Secret as the kubelet would pass them: s3fs (via
    botocore) talks to that endpoint, in that region, with the Secret's key; nothing else set."""
    pytest.importorskip("s3fs")
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=port)
    server.start()
    url = f"http://{LOOPBACK}:{port}"
    try:
        values = {"s3": {"endpointUrl": url, "region": "eu-west-1"}, "credentialsSecret": "s3-keys"}
        _, container = worker_pod(render({"worker": {"objectStore": values}}))
        keys = {"AWS_ACCESS_KEY_ID": "AKIAFROMTHESECRET", "AWS_SECRET_ACCESS_KEY": "not-a-real-secret"}
        env = pod_env(container, secrets={"s3-keys": keys})
        s3 = boto3.client("s3", endpoint_url=url, region_name="eu-west-1", **_boto_keys(keys))
        s3.create_bucket(Bucket="batch-data", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        # A clean environment: no host AWS settings or config files (HOME is empty).
        base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
        result = subprocess.run(
            [sys.executable, "-c", S3_CLIENT],
            env={**base, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        seen = json.loads(result.stdout.strip().splitlines()[-1])
        assert seen == {
            "endpoint": url,
            "region": "eu-west-1",
            "key_id": "AKIAFROMTHESECRET",
            "read": '{"id": 1}\n',
        }
        # The object is on that server, not anywhere else.
        body = s3.get_object(Bucket="batch-data", Key="in.jsonl")["Body"].read()
        assert body == b'{"id": 1}\n'
    finally:
        server.stop()


def _boto_keys(keys: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": keys["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": keys["AWS_SECRET_ACCESS_KEY"],
    }
