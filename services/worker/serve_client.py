"""Authenticated, pooled client for the Serve ingress, with error mapping by kind.

- 400/401/403/404/413/422: non-retryable ``ApplicationError`` saying what to fix.
- 429/503/other 5xx, timeouts, connection errors: retried here with exponential backoff that
  honours ``Retry-After`` (so one overloaded moment does not throw away a shard's in-flight
  work); after ``max_attempts`` a retryable ``ApplicationError`` hands over to Temporal's
  activity retry, which resumes the shard from its last checkpoint. Ray Serve's own plain-text
  404 (no application on the route yet, as while Serve restarts) counts as retryable too.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pyarrow as pa
from pydantic import BaseModel, ValidationError
from temporalio.exceptions import ApplicationError

from services import arrow_wire, json_codec
from services.constants import (
    ARROW_CONTENT_TYPE,
    AUTH_HEADER,
    AUTH_SCHEME,
    ENV_SERVE_TOKEN,
    ENV_SERVE_TOKEN_FILE,
    ENV_SERVE_WIRE,
    INFERENCE_ROUTE,
    JSON_CONTENT_TYPE,
    MODEL_INFERENCE_ROUTE,
    MODELS_ROUTE,
    ServeWire,
)
from services.errors import Code, Failure, RecordError, Stage
from services.token_file import TokenFile
from services.worker.concurrency import Limiter, NoLimit

NON_RETRYABLE = {400, 401, 403, 404, 413, 422}
ADVICE = {
    401: f"the worker sent no valid Authorization header: set {ENV_SERVE_TOKEN} or "
    f"{ENV_SERVE_TOKEN_FILE} on the worker",
    403: f"Serve rejected the worker's token: make {ENV_SERVE_TOKEN}/{ENV_SERVE_TOKEN_FILE} on "
    "the worker match a token Serve accepts",
    404: "unknown model or route: check the batch's 'model' against the Serve config",
    413: "micro-batch too large for Serve: lower tuning.micro_batch_size or tuning.max_request_bytes "
    "(below Serve's max_request_bytes)",
    # Serve listed the model as columnar when the shard started, and now refuses Arrow (redeployed).
    415: f"the model no longer takes Arrow bodies: retry the batch (it asks Serve again) or set "
    f"{ENV_SERVE_WIRE}=json on the worker",
}


class TokenSource:
    """The worker's Serve token, from an env var or a mounted file (re-read when it changes)."""

    def __init__(self, token: str | None = None, token_file: str | None = None):
        self._token = token
        # The file's token once read (the env token until then); checked on every request.
        self._file = TokenFile(token_file, _one_token, token) if token_file else None

    @classmethod
    def from_env(cls) -> TokenSource:
        return cls(os.environ.get(ENV_SERVE_TOKEN) or None, os.environ.get(ENV_SERVE_TOKEN_FILE) or None)

    def configured(self) -> bool:
        return bool(self._token or self._file)

    def get(self) -> str | None:
        return self._file.get() if self._file else self._token


def _one_token(text: str) -> str | None:
    return text.strip() or None


class ServeModels(BaseModel):
    """Serve's answer on ``MODELS_ROUTE``: the models it has and the one ``model: None`` gets."""

    models: list[str]
    default: str | None = None
    # Models with a columnar predict, which take Arrow bodies (absent from an older Serve: none).
    columnar: list[str] = []
    max_arrow_rows: int = 1024  # rows per Arrow request Serve takes (an older Serve: JSON's limit)


class ServeRecordError(BaseModel):
    """A record the model rejected, as Serve's batch route reports it."""

    code: str
    message: str


_MODEL_CODES = frozenset(Code)


def model_error(payload: Any) -> RecordError:
    """The ``RecordError`` for one entry of Serve's ``errors`` list; a code this worker does not
    know (a newer Serve) counts as ``other``, a malformed entry too."""
    try:
        error = ServeRecordError.model_validate(payload)
    except ValidationError:
        return RecordError(
            Stage.MODEL, Code.OTHER, f"Serve reported an error in an unknown form: {payload!r:.200}"
        )
    code = Code(error.code) if error.code in _MODEL_CODES else Code.OTHER
    return RecordError(Stage.MODEL, code, error.message)


@dataclass
class RetrySettings:
    max_attempts: int = 6
    initial_s: float = 0.5
    max_s: float = 15.0


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _detail(response: httpx.Response) -> str:
    try:
        detail = json_codec.loads(response.content).get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail if detail is not None else response.text[:200])


def _no_app_yet(response: httpx.Response) -> bool:
    """Ray Serve's proxy answers a plain-text 404 for a route no application serves, as while
    the application is still deploying; the application's own 404s (unknown model) are JSON."""
    return response.status_code == 404 and not response.headers.get("content-type", "").startswith(
        "application/json"
    )


class ServeClient:
    """One pooled ``httpx.AsyncClient`` per worker process, shared by all activities."""

    def __init__(
        self,
        base_url: str,
        tokens: TokenSource,
        *,
        timeout_s: float = 60.0,
        max_connections: int = 256,
        retry: RetrySettings | None = None,
        on_attempt: Callable[[str, float, str | None], None] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        limiter: Limiter | None = None,
        wire: ServeWire = "auto",
    ):
        self.base_url = base_url.rstrip("/")
        # "json": shards send JSON even where Arrow would do (arrow_path.use_arrow).
        self.wire = wire
        self._tokens = tokens
        self._retry = retry or RetrySettings()
        self._on_attempt = on_attempt  # (outcome, seconds, model) for metrics
        # Requests wait for a connection here, not in httpcore's pool: its queue is scanned in
        # full for every request, which cost the worker half its CPU with 100 requests waiting.
        self._slots = asyncio.Semaphore(max_connections)
        # The adaptive in-flight limit (concurrency.py), under the fixed one above.
        self.limiter = limiter or NoLimit()
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    @staticmethod
    def route(model: str | None) -> str:
        return MODEL_INFERENCE_ROUTE.format(model=model) if model else INFERENCE_ROUTE

    def _headers(self, content_type: str = JSON_CONTENT_TYPE) -> dict[str, str]:
        headers = {"Content-Type": content_type}
        if token := self._tokens.get():
            headers[AUTH_HEADER] = f"{AUTH_SCHEME} {token}"
        return headers

    def _backoff(self, attempt: int) -> float:
        delay = min(self._retry.max_s, self._retry.initial_s * 2 ** (attempt - 1))
        return delay * random.uniform(0.5, 1.0)

    @staticmethod
    def encode(inputs: list[Any]) -> bytes:
        """The request body for ``inputs``. A shard encodes each micro-batch as soon as it is
        parsed: a request waiting for its reply then holds these bytes, not Python objects."""
        return json_codec.dumps({"inputs": inputs})

    async def predict_arrow(self, model: str | None, body: bytes, count: int) -> pa.Table:
        """``predict`` of an Arrow body (``arrow_wire.encode`` of the inputs): the reply table
        (``arrow_wire.results``), ``count`` rows in order."""
        return await self.predict(model, body, count, arrow=True)  # type: ignore[return-value]

    async def predict(
        self, model: str | None, body: bytes, count: int, *, arrow: bool = False
    ) -> tuple[list[Any], list[Any]]:
        """Predictions for the ``count`` inputs in ``body`` (from ``encode``) in order and,
        beside them, each one's error (``model_error`` reads it) or None: two lists as Serve
        sends them, so a shard's hot path builds no pair per record. (``arrow``: see
        ``predict_arrow``.)"""
        url = self.route(model)
        headers = self._headers(ARROW_CONTENT_TYPE if arrow else JSON_CONTENT_TYPE)
        reason, delay = "", 0.0
        for attempt in range(1, self._retry.max_attempts + 1):
            try:
                async with self.limiter.slot() as slot, self._slots:  # time starts with the connection
                    started = time.monotonic()
                    try:
                        response = await self._client.post(url, content=body, headers=headers)
                    except httpx.TimeoutException:
                        slot.overloaded()
                        raise
                    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                    slot.answered(response.status_code, retry_after)
            except httpx.TimeoutException as exc:
                outcome, reason = "timeout", f"Serve timed out ({type(exc).__name__})"
                delay = self._backoff(attempt)
            except httpx.TransportError as exc:
                outcome, reason = (
                    "connection_error",
                    f"cannot reach Serve at {self.base_url} ({type(exc).__name__})",
                )
                delay = self._backoff(attempt)
            else:
                status = response.status_code
                outcome = str(status)
                if status == 200:
                    self._record(outcome, started, model)
                    if arrow:
                        return self._arrow_reply(response.content, count)  # type: ignore[return-value]
                    payload = json_codec.loads(response.content)
                    predictions, errors = payload["predictions"], payload["errors"]
                    if not len(predictions) == len(errors) == count:
                        raise ApplicationError(
                            f"Serve returned {len(predictions)} predictions and {len(errors)} errors "
                            f"for {count} inputs",
                            type=Failure.SERVE_PROTOCOL_ERROR,
                        )
                    return predictions, errors
                detail = _detail(response)
                if _no_app_yet(response):
                    # Serve is up but the application is not (yet) deployed: transient while
                    # Ray Serve restarts or redeploys, so retried like a 503.
                    reason = f"Serve has no application at {url} yet ({detail})"
                    delay = self._backoff(attempt)
                elif status in NON_RETRYABLE or (400 <= status < 500 and status != 429):
                    self._record(outcome, started, model)
                    advice = ADVICE.get(status, "the request was rejected")
                    raise ApplicationError(
                        f"Serve answered {status} ({detail}) at {url}: {advice}",
                        type=Failure.serve_http(status),
                        non_retryable=True,
                    )
                else:
                    reason = f"Serve answered {status} ({detail})"
                    delay = max(
                        retry_after_seconds(response.headers.get("Retry-After")) or 0.0,
                        self._backoff(attempt),
                    )
            self._record(outcome, started, model)
            if attempt < self._retry.max_attempts:
                await asyncio.sleep(delay)
        raise ApplicationError(
            f"{reason}; gave up after {self._retry.max_attempts} attempts in this activity attempt",
            type=Failure.SERVE_UNAVAILABLE,
            next_retry_delay=timedelta(seconds=delay) if delay else None,
        )

    @staticmethod
    def _arrow_reply(content: bytes, count: int) -> pa.Table:
        try:
            return arrow_wire.decode_results(content, count)
        except arrow_wire.WireError as exc:
            raise ApplicationError(
                f"Serve's Arrow reply does not fit the request: {exc}", type=Failure.SERVE_PROTOCOL_ERROR
            ) from None

    async def list_models(self, timeout_s: float = 10.0) -> ServeModels:
        """The models Serve has: one attempt, no retries (a check before a batch, not its work).
        Raises ``httpx.HTTPError`` (also for a non-200 answer) or ``ValidationError``."""
        response = await self._client.get(MODELS_ROUTE, headers=self._headers(), timeout=timeout_s)
        response.raise_for_status()
        return ServeModels.model_validate_json(response.content)

    def _record(self, outcome: str, started: float, model: str | None) -> None:
        if self._on_attempt:
            self._on_attempt(outcome, time.monotonic() - started, model)
