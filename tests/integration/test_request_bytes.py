"""Micro-batches stay under the request byte limit as well as the count limit (real Temporal,
worker and local Serve, whose ingress refuses bodies over its max_request_bytes with 413)."""

from __future__ import annotations

from collections import Counter

import pytest

from services.errors import Code, Stage
from services.worker.contracts import Tuning
from tests.helpers.batches import jsonl_batch, run_and_read
from tests.helpers.records import echo_records
from tests.helpers.serve_config import serve_app_args

pytestmark = pytest.mark.integration
SERVE_LIMIT = serve_app_args().max_request_bytes


async def test_a_part_larger_than_serves_limit_goes_in_several_requests(client, run_worker, tmp_path):
    """1,000 records of 10 KB: one count-sized request would be ~10 MB, over Serve's 8 MiB; with
    the default tuning every record goes through."""
    records = [{"id": i, "input": {"text": f"{i:05d}" + "x" * 10_000}} for i in range(1000)]
    assert len(records) * 10_000 > SERVE_LIMIT
    _, _, batch = jsonl_batch(tmp_path, records, "echo")
    assert batch.tuning.micro_batch_size >= len(records) and batch.tuning.max_request_bytes < SERVE_LIMIT
    result, results, errors = await run_and_read(client, run_worker, batch, prefix="bytes")
    assert (result.succeeded, result.failed, errors) == (1000, 0, [])
    assert sorted(r["id"] for r in results) == list(range(1000))
    assert all(r["prediction"] == records[r["id"]]["input"] for r in results)


async def test_a_record_too_large_for_one_request_is_its_own_error(client, run_worker, tmp_path):
    small = [{"id": f"s{i}", "input": {"text": "y" * (i % 7) * 300}} for i in range(60)]
    huge = {"id": "huge", "input": {"text": "z" * 20_000}}
    records = [*small[:30], huge, *small[30:]]
    _, _, batch = jsonl_batch(
        tmp_path,
        records,
        "echo",
        Tuning(max_request_bytes=8192, micro_batch_size=1000, checkpoint_every=25),
        max_error_ratio=0.1,
    )
    result, results, errors = await run_and_read(client, run_worker, batch, prefix="bytes")
    assert (result.succeeded, result.failed) == (60, 1)
    assert Counter(r["id"] for r in results) == Counter(r["id"] for r in small)
    (error,) = errors
    assert (error["id"], error["line"], error["stage"], error["code"]) == (
        "huge",
        31,
        Stage.PARSE,
        Code.TOO_LARGE,
    )
    assert "tuning.max_request_bytes (8192)" in error["reason"]


async def test_a_record_nested_too_deep_for_serve_is_its_own_error(client, run_worker, tmp_path):
    """orjson reads a line nested 300 levels (up to 1,024), Serve refuses such a body (400): the
    record is an error, the others go."""
    deep: object = 1
    for _ in range(300):
        deep = [deep]
    records = [*echo_records(20), {"id": "deep", "input": deep}, *echo_records(20, prefix="f")]
    _, _, batch = jsonl_batch(tmp_path, records, "echo", max_error_ratio=0.1)
    result, results, errors = await run_and_read(client, run_worker, batch, prefix="deep")
    assert (result.succeeded, result.failed) == (40, 1)
    assert sorted(r["id"] for r in results) == sorted(r["id"] for r in records if r["id"] != "deep")
    (error,) = errors
    assert (error["id"], error["line"], error["stage"], error["code"]) == (
        "deep",
        21,
        Stage.PARSE,
        Code.TOO_DEEP,
    )
