"""The object-store test servers themselves: fake-gcs-server behind gs:// URLs (and stopped however
the tests end), and the S3 fault proxy (verbatim forwarding, 503 SlowDown that s3fs rides out)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from urllib.parse import urlsplit

import fsspec
import httpx
import pytest

from services import constants as c
from services.local.paths import REPO_ROOT
from services.local.processes import free_port
from tests.helpers.object_stores import (
    S3FaultProxy,
    fake_gcs,
    moto_s3,
    read_outputs_uri,
    s3_fault_proxy,
    write_jsonl_uri,
)
from tests.helpers.proxy import ThreadedServer


def port_open(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_closed(url: str, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while port_open(url):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- fake-gcs-server --------------------------------------------------------------------------


def test_fake_gcs_round_trip_through_gs_urls() -> None:
    pytest.importorskip("gcsfs")
    before = os.environ.get(c.ENV_STORAGE_EMULATOR_HOST)
    with fake_gcs() as url:
        assert os.environ[c.ENV_STORAGE_EMULATOR_HOST] == url
        bucket = f"b-{uuid.uuid4().hex[:8]}"
        fs = fsspec.filesystem("gs")
        fs.mkdir(bucket)
        records = [{"id": i, "x": "y" * i} for i in range(50)]
        source = write_jsonl_uri(f"gs://{bucket}/in/part.jsonl", records)
        with fsspec.open(source, "rb") as fh:
            assert fh.readline() == b'{"id": 0, "x": ""}\n'
        fs.pipe(f"{bucket}/out/shard-00000.jsonl", b'{"id": 1}\n{"id": 2}\n')
        fs.pipe(f"{bucket}/out/errors/shard-00000.jsonl", b'{"id": 3}\n')
        assert read_outputs_uri(f"gs://{bucket}/out") == ([{"id": 1}, {"id": 2}], [{"id": 3}])
        found = fs.find(f"gs://{bucket}", detail=True)
        assert {path: info["size"] for path, info in found.items()} == {
            f"{bucket}/in/part.jsonl": fs.size(source),
            f"{bucket}/out/shard-00000.jsonl": 20,
            f"{bucket}/out/errors/shard-00000.jsonl": 10,
        }
        assert fs.cat_file(f"{bucket}/out/shard-00000.jsonl", start=11, end=18) == b'"id": 2'
        # Larger than a block (5 MiB): gcsfs's resumable upload, continued at the server's URL.
        big = os.urandom(6 * 2**20 + 7)
        with fsspec.open(f"gs://{bucket}/big.bin", "wb") as fh:
            fh.write(big)
        assert fs.cat(f"{bucket}/big.bin") == big
    assert os.environ.get(c.ENV_STORAGE_EMULATOR_HOST) == before
    assert wait_closed(url), "fake-gcs-server still answering after the block"


def test_fake_gcs_stops_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"), fake_gcs() as url:
        assert port_open(url)
        raise RuntimeError("boom")
    assert wait_closed(url)


# Ctrl-C raises KeyboardInterrupt even where the tests run as a background job (`cmd &`), which
# starts with SIGINT ignored: Python then installs no handler of its own, and SIGINT did nothing.
HOLD_FAKE_GCS = """
import signal, time
from tests.helpers.object_stores import fake_gcs
signal.signal(signal.SIGINT, signal.default_int_handler)
with fake_gcs() as url:
    print(url, flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_fake_gcs_server_ends_with_the_tests_however_they_end(sig: signal.Signals) -> None:
    """Ctrl-C leaves the block (its ``finally`` stops the server); SIGTERM and SIGKILL end the
    process without one, and the kernel then kills the server (its parent-death signal)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_FAKE_GCS], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        url = holder.stdout.readline().strip()  # type: ignore[union-attr]
        assert url.startswith("http://") and port_open(url)
        holder.send_signal(sig)
        holder.wait(15)
        assert wait_closed(url), f"fake-gcs-server outlived its parent ({sig.name})"
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


# --- S3 fault proxy ---------------------------------------------------------------------------


def test_fault_proxy_forwards_requests_and_answers_verbatim() -> None:
    seen: list[dict] = []

    async def upstream(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen.append({**{k: scope[k] for k in ("method", "raw_path", "query_string")}, "body": body,
                     "headers": dict(scope["headers"])})  # fmt: skip
        headers = [(b"x-amz-meta-kind", b"echo"), (b"etag", b'"abc"')]
        await send({"type": "http.response.start", "status": 206, "headers": headers})
        for part in (b"first ", b"second"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    def chunks():
        yield b"part one, "
        yield b"part two"

    target = "/bkt/a%2Bb%20c/~x%25y?partNumber=1&uploadId=a%2Fb%3D"
    with (
        ThreadedServer(upstream, free_port(), "echo") as echo,
        S3FaultProxy(f"http://127.0.0.1:{echo.port}") as proxy,
    ):
        headers = {
            "host": "bkt.s3.test:9000",
            "authorization": "AWS4-HMAC-SHA256 Credential=x",
            "x-amz-date": "1",
        }
        with httpx.Client(trust_env=False) as client:
            response = client.put(proxy.url + target, headers=headers, content=chunks())
    assert (response.status_code, response.text) == (206, "first second")
    assert (response.headers["x-amz-meta-kind"], response.headers["etag"]) == ("echo", '"abc"')
    [request] = seen
    assert request["method"] == "PUT"
    assert request["raw_path"] + b"?" + request["query_string"] == target.encode()
    assert request["body"] == b"part one, part two"
    for name, value in headers.items():
        assert request["headers"][name.encode()] == value.encode()
    assert (proxy.requests, proxy.slowed, proxy.log) == (1, 0, [("PUT", target, 206)])


def test_fault_proxy_slows_down_then_passes_and_s3fs_rides_it_out() -> None:
    pytest.importorskip("s3fs")
    with moto_s3() as s3:
        bucket = f"b-{uuid.uuid4().hex[:8]}"
        fsspec.filesystem("s3", skip_instance_cache=True).mkdir(bucket)
        with s3_fault_proxy() as proxy:
            assert os.environ[c.ENV_AWS_ENDPOINT_URL_S3] == proxy.url and proxy.upstream == s3

            # What a client sees: S3's own error, for as many requests as asked, then the server.
            proxy.slow_down(2)
            with httpx.Client(base_url=proxy.url, trust_env=False) as client:
                first, second, third = (client.get(f"/{bucket}/missing") for _ in range(3))
            assert first.status_code == second.status_code == 503
            assert "<Code>SlowDown</Code><Message>Please reduce your request rate.</Message>" in first.text
            assert third.status_code == 404 and "NoSuchKey" in third.text

            # s3fs (botocore's retries, then its own) gets a write and a read through.
            fs = fsspec.filesystem("s3")
            proxy.slow_down(2)
            fs.pipe(f"{bucket}/in/a.jsonl", b'{"id": 1}\n')
            proxy.slow_down(2)
            assert fs.cat(f"{bucket}/in/a.jsonl") == b'{"id": 1}\n'
            statuses = [status for _, _, status in proxy.log[3:]]
            assert statuses[:3] == [503, 503, 200] and statuses[3:5] == [503, 503]
            assert statuses[5:] and set(statuses[5:]) == {200}
            assert (proxy.slowed, proxy.passed) == (6, proxy.requests - 6)

            # A window in time, for the writes only: reads pass meanwhile (moto answers these
            # unsigned requests itself, whatever it answers).
            proxy.slow_down_for(0.5, methods={"PUT"})
            with httpx.Client(base_url=proxy.url, trust_env=False) as client:
                assert client.put(f"/{bucket}/x", content=b"x").status_code == 503
                assert client.get(f"/{bucket}/missing").status_code == 404
                time.sleep(0.6)
                assert client.put(f"/{bucket}/x", content=b"x").status_code != 503
            assert [s for _, _, s in proxy.log[-3:]][:2] == [503, 404] and proxy.slowed == 7
        assert os.environ[c.ENV_AWS_ENDPOINT_URL_S3] == s3
    assert wait_closed(proxy.url)


def test_fault_proxy_slows_down_a_fraction_of_requests() -> None:
    async def ok(scope, receive, send):
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    with (
        ThreadedServer(ok, free_port(), "ok") as upstream,
        S3FaultProxy(f"http://127.0.0.1:{upstream.port}", seed=7) as proxy,
    ):
        proxy.slow_down(fraction=0.5)
        with httpx.Client(base_url=proxy.url, trust_env=False) as client:
            statuses = [client.get(f"/b/{i}").status_code for i in range(200)]
            proxy.recover()
            assert client.get("/b/after").status_code == 200
    assert 60 < statuses.count(503) < 140 and set(statuses) == {200, 503}
    assert (proxy.requests, proxy.slowed) == (201, statuses.count(503))
