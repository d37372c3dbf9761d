"""Object stores on loopback for tests: moto's standalone S3 server (the one s3fs's own test
suite uses), and reading a batch's outputs back through fsspec."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import fsspec

from services.local.processes import LOOPBACK, free_port

# Credentials the S3 server accepts (moto checks none); never real ones.
S3_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """A moto S3 server on a free loopback port, and this process's environment pointed at it
    (the standard ``AWS_ENDPOINT_URL_S3``, as a worker would be configured); yields its URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=port)
    server.start()
    url = f"http://{LOOPBACK}:{port}"
    saved = {name: os.environ.get(name) for name in [*S3_TEST_ENV, "AWS_ENDPOINT_URL_S3"]}
    os.environ.update(S3_TEST_ENV, AWS_ENDPOINT_URL_S3=url)
    try:
        yield url
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


def write_jsonl_uri(uri: str, records: list[Any]) -> str:
    with fsspec.open(uri, "wb") as fh:
        fh.write(b"".join(json.dumps(r).encode() + b"\n" for r in records))
    return uri


def read_outputs_uri(output_uri: str) -> tuple[list[dict], list[dict]]:
    """All committed results and error lines of a batch's output folder at any fsspec URL."""
    fs, path = fsspec.core.url_to_fs(output_uri)

    def lines(pattern: str) -> list[dict]:
        return [
            json.loads(line)
            for name in sorted(fs.glob(f"{path}/{pattern}"))
            for line in fs.cat(name).splitlines()
        ]

    return lines("shard-*.jsonl"), lines("errors/shard-*.jsonl")
