"""Batches whose input and output live on an object store, against a real S3 protocol server on
loopback (moto's standalone server) through s3fs: no rename there, so every commit is one PUT."""

from __future__ import annotations

import json
import uuid
from collections import Counter

import fsspec
import pytest

from services.worker.contracts import BatchInferenceInput, Tuning
from tests.helpers.batches import execute_batch
from tests.helpers.object_stores import moto_s3, read_outputs_uri, write_jsonl_uri
from tests.helpers.records import iris_records

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3_bucket():
    pytest.importorskip("s3fs")
    with moto_s3():
        bucket = f"batches-{uuid.uuid4().hex[:8]}"
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir(bucket)
        yield f"s3://{bucket}"


async def test_a_jsonl_batch_from_s3_to_s3_writes_every_id_once(client, run_worker, s3_bucket):
    records = iris_records(2_345, prefix="s3-")
    source = write_jsonl_uri(f"{s3_bucket}/in/part.jsonl", records)
    output = f"{s3_bucket}/out/run-1"
    batch = BatchInferenceInput(
        input_uri=source,
        output_uri=output,
        model="iris",
        tuning=Tuning(shard_size=1_000, max_concurrent_shards=2, checkpoint_every=400),
    )
    async with run_worker() as queue:
        result = await execute_batch(client, queue, batch, prefix="s3")
    assert (result.status, result.total_records, result.succeeded, result.failed) == (
        "completed",
        2_345,
        2_345,
        0,
    )
    results, errors = read_outputs_uri(output)
    assert Counter(r["id"] for r in results) == Counter(r["id"] for r in records) and errors == []
    fs, path = fsspec.core.url_to_fs(output)
    summary = json.loads(fs.cat(f"{path}/_summary.json"))
    assert (summary["status"], summary["succeeded"]) == ("completed", 2_345)
    assert json.loads(fs.cat(f"{path}/_plan.json"))["total_records"] == 2_345
    assert not fs.exists(f"{path}/_parts"), "a completed batch leaves no parts"
