"""The JSONL result sink: a part's results file lines and errors file lines, as one bytes
object each (not one per line: see ``json_codec.dumps_jsonl``)."""

from __future__ import annotations

from typing import Any

from services import json_codec
from services.worker.manifests import RecordFailure


def results(ids: list[Any], predictions: list[Any]) -> bytes:
    """The results file's lines: ``{"id": ..., "prediction": ...}`` per record."""
    return json_codec.dumps_jsonl([{"id": i, "prediction": p} for i, p in zip(ids, predictions, strict=True)])


def failures(found: list[RecordFailure]) -> bytes:
    """The errors file's lines."""
    return json_codec.dumps_jsonl([failure.model_dump(mode="json") for failure in found])
