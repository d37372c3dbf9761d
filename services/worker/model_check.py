"""Check a batch's model against the models Serve has, before any shard starts.

Only a definite answer fails the batch: when Serve cannot say (down, redeploying, refusing the
worker's token), the check logs why and lets the batch go on, and the shards meet that problem
as they always did (retried, or failing with Serve's own advice).
"""

from __future__ import annotations

import logging

import httpx
from pydantic import ValidationError

from services.errors import BatchError, Failure
from services.worker.serve_client import ServeClient

log = logging.getLogger(__name__)


class UnknownModel(BatchError):
    def __init__(self, model: str, known: list[str]):
        super().__init__(Failure.UNKNOWN_MODEL, f"unknown model {model!r}; Serve has: {', '.join(known)}")
        self.model, self.known = model, known


async def check_model(serve: ServeClient, model: str | None) -> None:
    """Raise ``UnknownModel`` if Serve answers and has no ``model``; None (Serve's default model)
    needs no check."""
    if model is None:
        return
    try:
        listing = await serve.list_models()
    except (httpx.HTTPError, ValidationError) as exc:
        reason = (
            f"HTTP {exc.response.status_code}"
            if isinstance(exc, httpx.HTTPStatusError)
            else type(exc).__name__
        )
        log.warning("could not check model %r against Serve (%s); the shards will meet it", model, reason)
        return
    if model not in listing.models:
        raise UnknownModel(model, sorted(listing.models))
