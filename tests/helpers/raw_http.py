"""HTTP/1.1 by hand, for bodies an HTTP client will not send as asked: a Content-Length the body
never fills, a chunked body that never ends."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class RawResponse:
    status_code: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


def _connect(url: str) -> tuple[socket.socket, str]:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=30)
    return sock, parts.netloc


def _read_response(sock: socket.socket) -> RawResponse:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a response: {data[:200]!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        body = rest[:length]
    else:  # chunked reply
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += sock.recv(65536)
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                rest += sock.recv(65536)
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2 :]
    return RawResponse(int(status_line.split()[1]), headers, body)


def post_declaring(url: str, path: str, headers: dict[str, str], declared: int, sent: bytes) -> RawResponse:
    """POST that declares ``declared`` bytes of body but sends only ``sent``, then waits for the
    answer: a server that reads the body whole before deciding never answers (a timeout)."""
    sock, host = _connect(url)
    with sock:
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {declared}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + sent)
        return _read_response(sock)


def post_chunked_unfinished(
    url: str, path: str, headers: dict[str, str], chunk: bytes, count: int
) -> RawResponse:
    """POST ``count`` chunks of a chunked body that never ends (no last chunk), then wait for
    the answer: a server that reads the body whole before deciding never answers (a timeout)."""
    sock, host = _connect(url)
    with sock:
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Transfer-Encoding: chunked"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        for _ in range(count):
            sock.sendall(frame)
        return _read_response(sock)
