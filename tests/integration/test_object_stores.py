"""Batches whose input and output live on object stores, against servers that speak the real
protocols on loopback: moto's standalone S3 server (through s3fs) and fake-gcs-server (through
gcsfs), with the real Temporal dev server and Ray Serve. No rename there: every commit is one
PUT. Each test counts every id afterwards."""

from __future__ import annotations

import gzip
import json
import signal
import uuid
from collections import Counter

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from temporalio.client import WorkflowFailureError

from services import constants as c
from services.worker.contracts import BatchInferenceInput, Tuning
from tests.helpers.batches import execute_batch, start_batch
from tests.helpers.object_stores import fake_gcs, moto_s3, read_outputs_uri, s3_fault_proxy, write_jsonl_uri
from tests.helpers.proxy import CountingProxy
from tests.helpers.records import echo_records, iris_records
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.integration

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(scope="module")
def s3_server():
    pytest.importorskip("s3fs")
    with moto_s3() as url:
        yield url


@pytest.fixture
def s3_bucket(s3_server):
    bucket = f"batches-{uuid.uuid4().hex[:8]}"
    fsspec.filesystem("s3").mkdir(bucket)
    return f"s3://{bucket}"


@pytest.fixture(scope="module")
def gcs_server():
    pytest.importorskip("gcsfs")
    with fake_gcs() as url:
        yield url


def fs_of(uri: str):
    return fsspec.core.url_to_fs(uri)


def summary_of(output: str) -> dict:
    fs, path = fs_of(output)
    return json.loads(fs.cat(f"{path}/{c.SUMMARY_FILE}"))


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
    assert summary_of(output)["succeeded"] == 2_345
    fs, path = fs_of(output)
    assert not fs.exists(f"{path}/_parts"), "a completed batch leaves no parts"


async def test_a_parquet_batch_on_s3_with_partitions_kept(client, run_worker, s3_bucket):
    """Parquet files under a Hive-partitioned prefix, the four feature columns as the model
    input, Parquet results with a column and the partition key passed through."""
    fs, _ = fs_of(s3_bucket)
    ids = []
    for n in range(3):
        rows = 1_000
        table = pa.table(
            {
                "id": [f"p{n}-{i}" for i in range(rows)],
                **{f: [5.1 + (i % 7) / 10 for i in range(rows)] for f in FEATURES},
                "customer": [f"c{i % 5}" for i in range(rows)],
            }
        )
        with fs.open(f"{s3_bucket}/events/date=2026-12-01/part-{n}.parquet", "wb") as fh:
            pq.write_table(table, fh, row_group_size=300)
        ids += table.column("id").to_pylist()
    output = f"{s3_bucket}/scored/2026-12-01"
    batch = BatchInferenceInput(
        input_uri=f"{s3_bucket}/events/date=2026-12-01/",
        output_uri=output,
        model="iris",
        input_columns=FEATURES,
        keep_columns=["customer", "date"],
        output_format="parquet",
        tuning=Tuning(shard_size=1_000, max_concurrent_shards=2, checkpoint_every=400),
    )
    async with run_worker() as queue:
        result = await execute_batch(client, queue, batch, prefix="s3pq")
    assert (result.status, result.succeeded, result.failed) == ("completed", 3_000, 0)
    _, path = fs_of(output)
    table = pq.read_table(path, filesystem=fs)  # the folder reads as one table
    assert Counter(table.column("id").to_pylist()) == Counter(ids)
    assert set(table.column("date").to_pylist()) == {"2026-12-01"}
    first = table.slice(0, 1).to_pylist()[0]
    assert first["customer"] == "c0" and first["prediction"]["label"] in {"setosa", "versicolor", "virginica"}
    assert pa.types.is_struct(table.schema.field("prediction").type), "the model's objects as a struct column"
    assert summary_of(output)["output_format"] == "parquet"


async def test_many_jsonl_gz_files_on_gcs(client, run_worker, gcs_server):
    fs = fsspec.filesystem("gs")
    bucket = f"gcs-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    ids = []
    for n in range(12):
        records = iris_records(150, prefix=f"g{n}-")
        with fs.open(f"{bucket}/in/part-{n:02d}.jsonl.gz", "wb") as fh:
            fh.write(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in records)))
        ids += [r["id"] for r in records]
    output = f"gs://{bucket}/out"
    batch = BatchInferenceInput(
        input_uri=f"gs://{bucket}/in/*.jsonl.gz",
        output_uri=output,
        model="iris",
        tuning=Tuning(shard_size=500, max_concurrent_shards=2, checkpoint_every=200),
    )
    async with run_worker() as queue:
        result = await execute_batch(client, queue, batch, prefix="gcs")
    assert (result.status, result.total_records, result.failed) == ("completed", 1_800, 0)
    results, errors = read_outputs_uri(output)
    assert Counter(r["id"] for r in results) == Counter(ids) and errors == []
    assert summary_of(output)["status"] == "completed"


async def test_a_worker_killed_mid_shard_on_s3_resumes_with_nothing_lost_or_doubled(
    client, temporal_server, serve_stack, serve_token_file, spawn_worker, s3_bucket
):
    total = 4_000
    records = echo_records(total, "k")
    source = write_jsonl_uri(f"{s3_bucket}/in/records.jsonl", records)
    output = f"{s3_bucket}/out"
    batch = BatchInferenceInput(
        input_uri=source,
        output_uri=output,
        model="echo",
        tuning=Tuning(
            shard_size=1_000, max_concurrent_shards=2, checkpoint_every=100, micro_batch_size=10,
            max_in_flight=1, parts_in_flight=1, heartbeat_timeout_s=3,
        ),
    )  # fmt: skip
    queue = f"s3-kill-{uuid.uuid4().hex[:8]}"
    with CountingProxy(serve_stack.url) as proxy:
        worker = await spawn_worker(temporal_server.address, queue, proxy.url, serve_token_file).polling()
        handle = await start_batch(client, queue, batch, "s3-kill")
        await wait_until(lambda: proxy.records >= 0.4 * total, 300, "40% sent")
        worker.signal(signal.SIGKILL)
        await worker.exited(30)
        await spawn_worker(temporal_server.address, queue, proxy.url, serve_token_file).polling()
        result = await handle.result()
    results, errors = read_outputs_uri(output)
    assert Counter(r["id"] for r in results) == Counter(r["id"] for r in records) and errors == []
    assert (result.status, result.succeeded) == ("completed", total)
    assert result.resumed_records > 0, "the killed shards resumed from their committed parts on S3"
    assert proxy.records - total <= 2 * 100, "at most the parts in flight are sent again"


async def test_s3_answering_503_slowdown_for_a_while_and_the_batch_completes(client, run_worker, s3_bucket):
    records = echo_records(3_000, "sd")
    source = write_jsonl_uri(f"{s3_bucket}/in/records.jsonl", records)
    output = f"{s3_bucket}/out"
    batch = BatchInferenceInput(
        input_uri=source,
        output_uri=output,
        model="echo",
        tuning=Tuning(shard_size=750, max_concurrent_shards=2, checkpoint_every=100, micro_batch_size=50),
    )
    with s3_fault_proxy() as proxy:
        async with run_worker() as queue:
            handle = await start_batch(client, queue, batch, "slowdown")
            await wait_until(lambda: proxy.requests >= 20, 300, "the batch under way on S3")
            # Counted in requests, not seconds, so a slow machine sees the same faults.
            proxy.slow_down(40, fraction=0.5)
            await wait_until(lambda: not proxy.window_open, 300, "40 requests, half refused")
            proxy.slow_down(10)  # then everything refused for a moment
            result = await handle.result()
    assert proxy.slowed >= 20, f"S3 refused {proxy.slowed} requests"
    assert (result.status, result.succeeded, result.failed) == ("completed", 3_000, 0)
    results, errors = read_outputs_uri(output)
    assert Counter(r["id"] for r in results) == Counter(r["id"] for r in records) and errors == []


async def test_missing_bucket_denied_access_and_unwritable_output_fail_at_once(client, run_worker, s3_bucket):
    source = write_jsonl_uri(f"{s3_bucket}/in/records.jsonl", echo_records(10, "b"))
    denied = f"denied-{uuid.uuid4().hex[:8]}"
    fsspec.filesystem("s3").mkdir(denied)
    write_jsonl_uri(f"s3://{denied}/in/records.jsonl", echo_records(10, "d"))
    cases = [
        (
            f"s3://no-such-{uuid.uuid4().hex[:8]}/in/",
            f"{s3_bucket}/out-1",
            "InputNotFound",
            "input not found",
        ),
        (
            f"s3://{denied}/in/",
            f"{s3_bucket}/out-2",
            "AccessDenied",
            f"access denied reading s3://{denied}/in/",
        ),
        (source, f"s3://no-such-{uuid.uuid4().hex[:8]}/out", "OutputNotWritable", "cannot write to output"),
    ]
    with s3_fault_proxy() as proxy:
        proxy.deny(denied)
        async with run_worker() as queue:
            for input_uri, output_uri, failure, message in cases:
                batch = BatchInferenceInput(input_uri=input_uri, output_uri=output_uri, model="echo")
                with pytest.raises(WorkflowFailureError) as err:
                    await execute_batch(client, queue, batch, prefix="bad-s3")
                cause = err.value.cause
                while getattr(cause, "cause", None) is not None and not getattr(cause, "type", None):
                    cause = cause.cause
                assert getattr(cause, "type", None) == failure and message in str(cause), str(cause)
                assert "testing" not in str(cause), "never a credential in the message"
