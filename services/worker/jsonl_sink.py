"""The JSONL result sink: a part's results file lines and errors file lines, as one bytes
object each (not one per line: see ``json_codec.dumps_jsonl``)."""

from __future__ import annotations

from typing import Any

from services import json_codec
from services.worker.manifests import RecordFailure


def results(ids: list[Any], predictions: list[Any], keeps: list[dict[str, Any]] | None = None) -> bytes:
    """The results file's lines: ``{"id": ..., "prediction": ...}`` per record, and the kept
    values after them."""
    if keeps is None:
        return json_codec.dumps_jsonl(
            [{"id": i, "prediction": p} for i, p in zip(ids, predictions, strict=True)]
        )
    return json_codec.dumps_jsonl(
        [{"id": i, "prediction": p, **k} for i, p, k in zip(ids, predictions, keeps, strict=True)]
    )


def failures(found: list[RecordFailure]) -> bytes:
    """The errors file's lines."""
    return json_codec.dumps_jsonl([failure.model_dump(mode="json", exclude_none=False) for failure in found])
