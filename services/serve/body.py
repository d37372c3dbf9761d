"""The batch routes' request bodies: read within a byte limit, parsed as strict JSON.

Both refuse with ``BodyRefused`` (a status, a ``RequestCode`` and a message that never quotes
the body), which the ingress answers as ``{"detail": ..., "code": ...}``: never a 500.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from services import json_codec
from services.errors import RequestCode


class BodyRefused(Exception):
    def __init__(self, status: int, code: RequestCode, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _too_large(limit: int) -> BodyRefused:
    return BodyRefused(
        413,
        RequestCode.BODY_TOO_LARGE,
        f"request body over {limit} bytes (the app's max_request_bytes): send fewer or smaller inputs",
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or ``BodyRefused`` (413) as soon as it is known to pass ``limit``: from
    Content-Length before reading any of it, else (a chunked body) at the chunk passing it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise BodyRefused(400, RequestCode.BAD_CONTENT_LENGTH, "Content-Length is not a number")
        if int(declared) > limit:
            raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(data: bytes) -> Any:
    """Strict JSON (no NaN/Infinity), UTF-8, nested at most ``json_codec.MAX_DEPTH`` levels."""
    try:
        value = json_codec.loads_strict(data)
    except UnicodeDecodeError as exc:
        raise BodyRefused(
            400, RequestCode.NOT_UTF8, f"request body is not UTF-8 (byte {exc.start})"
        ) from None
    except ValueError as exc:  # JSONDecodeError, orjson's too
        raise BodyRefused(400, RequestCode.MALFORMED_JSON, f"request body is not valid JSON: {exc}") from None
    if json_codec.too_deep(value):
        raise BodyRefused(
            400,
            RequestCode.MALFORMED_JSON,
            f"request body nests arrays/objects deeper than {json_codec.MAX_DEPTH} levels",
        )
    return value
