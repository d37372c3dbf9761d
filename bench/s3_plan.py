"""Planning many small files on an object store: how long ``make_plan`` takes for ``--files``
small JSONL files under one S3 prefix, and which S3 requests it makes (the listing must be bulk:
one paged ListObjectsV2, not a request per file).

    python -m bench.s3_plan [--files 1000] [--records 10] [--runs 3]

moto's S3 server runs in a process of its own (S3 is elsewhere: its CPU is not the planner's),
behind a WSGI wrapper that logs every request it receives. Each run plans with a fresh s3fs
filesystem (no cached listing), output on the same S3 bucket. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

from services import constants as c
from services.local.processes import LOOPBACK, free_port, terminate, wait_for_port

BUCKET = "bench"
INPUT = "small-files"
LOG_PATH = "/_bench/requests"  # the wrapper's own route: the request log, not an S3 request
# moto checks no credentials; these only let botocore sign its requests. Never real ones.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    c.ENV_AWS_DEFAULT_REGION: "us-east-1",
}
IRIS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5], [6.3, 2.5, 4.9, 1.5]]


# --- the server (its own process) ------------------------------------------------------------


def serve(port: int) -> None:
    """moto's S3 server on ``port``, logging (method, path, query) of every request."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    moto = DomainDispatcherApplication(create_backend_app)
    log: list[tuple[str, str, str]] = []
    lock = threading.Lock()

    def app(environ: dict, start_response: Any) -> Any:
        if environ.get("PATH_INFO") == LOG_PATH:
            with lock:
                body = json.dumps(log).encode()
                if environ["REQUEST_METHOD"] == "DELETE":
                    log.clear()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        entry = (environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""))
        with lock:
            log.append(entry)
        return moto(environ, start_response)

    class Quiet(MotoRequestHandler):
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    make_server(LOOPBACK, port, app, threaded=True, request_handler=Quiet).serve_forever()


# --- the client side ------------------------------------------------------------------------


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """The counting moto server in a child process, and this process's environment pointed at
    it meanwhile (as a worker's would be); yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.s3_plan", "--serve", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://{LOOPBACK}:{port}"
    values = {**S3_ENV, c.ENV_AWS_ENDPOINT_URL_S3: url}
    saved = {name: os.environ.get(name) for name in values}
    try:
        wait_for_port(port, 60, proc)
        os.environ.update(values)
        forget_filesystems()
        yield url
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        forget_filesystems()
        terminate(proc)


def forget_filesystems() -> None:
    """Drop fsspec's cached S3 filesystems (and their listings): the next plan starts cold, and
    botocore reads the endpoint again."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


def request_log(url: str, clear: bool = False) -> list[tuple[str, str, str]]:
    request = urllib.request.Request(url + LOG_PATH, method="DELETE" if clear else "GET")
    with urllib.request.urlopen(request, timeout=30) as response:
        return [tuple(entry) for entry in json.loads(response.read())]


def kind(method: str, path: str, query: str) -> str:
    """An S3 request's operation, and whether it was about the input or the output."""
    params = urllib.parse.parse_qs(query)
    key = urllib.parse.unquote(path).removeprefix(f"/{BUCKET}").lstrip("/")
    where = "input" if (params.get("prefix", [""])[0] or key).startswith(INPUT) else "output"
    if method == "GET" and "list-type" in params:
        operation = "ListObjectsV2"
    elif method == "GET" and not key:
        operation = "ListObjects"
    else:
        operation = {"GET": "GetObject", "HEAD": "HeadObject", "PUT": "PutObject"}.get(method, method)
    return f"{operation} {where}"


def upload(files: int, records: int) -> int:
    """``files`` JSONL files of ``records`` iris records each under ``INPUT/``; returns the
    records written."""
    import fsspec

    fs = fsspec.filesystem("s3")
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    contents = {}
    for f in range(files):
        lines = [
            json.dumps({"id": f"f{f:05d}-{i}", "features": IRIS[(f + i) % len(IRIS)]}) + "\n"
            for i in range(records)
        ]
        contents[f"{BUCKET}/{INPUT}/part-{f:05d}.jsonl"] = "".join(lines).encode()
    fs.pipe(contents)
    return files * records


def measure(files: int = 1000, records: int = 10, runs: int = 3) -> dict[str, Any]:
    """Median plan time of ``runs`` cold plans of the small files, the listing alone timed
    apart, and the S3 requests of one plan by operation."""
    from services.worker.contracts import PlanInput
    from services.worker.inputs import resolve
    from services.worker.manifests import DataSpec
    from services.worker.plan import make_plan

    out: dict[str, Any] = {"files": files, "records": files * records}
    try:
        with s3_server() as url:
            upload(files, records)
            uri = f"s3://{BUCKET}/{INPUT}/"
            listing, planning, cpu, counts = [], [], [], []
            for _ in range(runs):
                forget_filesystems()
                started = time.perf_counter()
                found = resolve(uri)
                listing.append(time.perf_counter() - started)
                assert len(found) == files, len(found)
                forget_filesystems()
                request_log(url, clear=True)
                started, cpu_started = time.perf_counter(), time.process_time()
                plan = make_plan(
                    PlanInput(
                        input_uri=uri,
                        output_uri=f"s3://{BUCKET}/out-{uuid.uuid4().hex[:8]}",
                        spec=DataSpec(),
                        shard_size=50_000,
                        max_concurrent_shards=4,
                    )
                )
                planning.append(time.perf_counter() - started)
                cpu.append(time.process_time() - cpu_started)
                counts.append(Counter(kind(*entry) for entry in request_log(url)))
                assert plan.total_records == files * records and len(plan.files) == files
    except Exception as exc:  # a figure that fails says how, and the rest of the bench goes on
        return {**out, "error": f"{type(exc).__name__}: {exc}"[:300]}
    last = counts[-1]
    return {
        **out,
        "runs": runs,
        "seconds": round(statistics.median(planning), 3),
        "seconds_min": round(min(planning), 3),
        "seconds_max": round(max(planning), 3),
        "cpu_seconds": round(statistics.median(cpu), 3),  # the planner's process, all threads
        "list_seconds": round(statistics.median(listing), 3),
        "requests": sum(last.values()),
        "requests_by_kind": dict(sorted(last.items())),
        "requests_per_run": [sum(n.values()) for n in counts],
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.s3_plan", description=__doc__)
    p.add_argument("--files", type=int, default=1000)
    p.add_argument("--records", type=int, default=10, help="records per file")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the server process
    args = p.parse_args()
    if args.serve:
        serve(args.serve)
        return
    print(json.dumps(measure(args.files, args.records, args.runs)), flush=True)


if __name__ == "__main__":
    main()
