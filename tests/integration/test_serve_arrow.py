"""The batch route's Arrow body on the real local Ray Serve (auth on), and a real batch of
Parquet in and Parquet out through it."""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services import arrow_wire
from services import constants as c
from services.errors import RequestCode
from services.serve.models import IrisClassifier
from services.worker.contracts import BatchInferenceInput, Tuning
from tests.helpers.batches import assert_exactly_once, execute_batch
from tests.helpers.serve_config import serve_app_args

pytestmark = pytest.mark.integration

FEATURES = list(IrisClassifier.FEATURES)
IRIS = c.MODEL_INFERENCE_ROUTE.format(model="iris")
ARGS = serve_app_args()


def features(rows: list[list[float | None]]) -> pa.Table:
    return pa.table(
        {name: pa.array([row[i] for row in rows], pa.float64()) for i, name in enumerate(FEATURES)}
    )


def post_arrow(stack, path: str, body: bytes, token: str | None) -> httpx.Response:
    headers = {"Content-Type": c.ARROW_CONTENT_TYPE}
    if token is not None:
        headers[c.AUTH_HEADER] = f"{c.AUTH_SCHEME} {token}"
    return httpx.post(stack.url + path, content=body, headers=headers, timeout=30)


def test_the_listing_names_the_columnar_models_and_the_arrow_row_limit(serve_stack, serve_token):
    listed = httpx.get(
        serve_stack.url + c.MODELS_ROUTE, headers={c.AUTH_HEADER: f"Bearer {serve_token}"}, timeout=10
    ).json()
    assert (listed["columnar"], listed["max_arrow_rows"]) == (["iris"], ARGS.max_arrow_rows_per_request)


def test_an_arrow_body_gets_an_arrow_reply_with_a_rejected_row_as_its_own_error(serve_stack, serve_token):
    rows = [[5.1, 3.5, 1.4, 0.2], [6.0, None, 5.0, 1.5], [6.3, 3.3, 6.0, 2.5]]
    response = post_arrow(serve_stack, IRIS, arrow_wire.encode(features(rows)), serve_token)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == c.ARROW_CONTENT_TYPE
    reply = arrow_wire.decode_results(response.content, 3)
    iris = IrisClassifier()
    iris.load()
    expected = iris.predict([rows[0], rows[2]])
    assert reply.column("prediction").to_pylist() == [expected[0], None, expected[1]]
    assert reply.column("error_code").to_pylist() == [None, "invalid_input", None]
    assert "finite" in reply.column("error_message")[1].as_py()


@pytest.mark.parametrize(("token", "status"), [(None, 401), ("wrong-token", 403)])
def test_an_arrow_body_needs_the_token(serve_stack, serve_token, token, status):
    response = post_arrow(serve_stack, IRIS, arrow_wire.encode(features([[5.1, 3.5, 1.4, 0.2]])), token)
    assert response.status_code == status
    assert serve_token not in response.text


@pytest.mark.parametrize("body", [b"garbage, not Arrow", b'{"inputs": [[5.1, 3.5, 1.4, 0.2]]}'])
def test_a_malformed_arrow_body_is_a_400_saying_so(serve_stack, serve_token, body):
    response = post_arrow(serve_stack, IRIS, body, serve_token)
    assert response.status_code == 400
    assert response.json()["code"] == RequestCode.MALFORMED_ARROW
    assert "not a valid Arrow IPC stream" in response.json()["detail"]


def test_limits_in_rows_and_bytes_are_413s(serve_stack, serve_token):
    rows = ARGS.max_arrow_rows_per_request
    assert rows > ARGS.max_records_per_request, "an Arrow request takes more rows than a JSON one"
    too_many = features([[5.1, 3.5, 1.4, 0.2]] * (rows + 1))
    response = post_arrow(serve_stack, IRIS, arrow_wire.encode(too_many), serve_token)
    assert response.status_code == 413 and str(rows) in response.json()["detail"]
    assert response.json()["code"] == RequestCode.TOO_MANY_INPUTS
    huge = b"\x00" * (
        ARGS.max_request_bytes + 1
    )  # over the app's max_request_bytes: refused unread, as JSON is
    response = post_arrow(serve_stack, IRIS, huge, serve_token)
    assert response.status_code == 413 and response.json()["code"] == RequestCode.BODY_TOO_LARGE


def test_a_model_without_a_columnar_predict_refuses_arrow_and_json_is_unchanged(serve_stack, serve_token):
    echo = c.MODEL_INFERENCE_ROUTE.format(model="echo")
    response = post_arrow(serve_stack, echo, arrow_wire.encode(pa.table({"x": [1]})), serve_token)
    assert response.status_code == 415 and "send JSON" in response.json()["detail"]
    assert response.json()["code"] == RequestCode.NOT_COLUMNAR
    as_json = httpx.post(
        serve_stack.url + IRIS,
        json={"inputs": [[5.1, 3.5, 1.4, 0.2], "bad"]},
        headers={c.AUTH_HEADER: f"Bearer {serve_token}"},
        timeout=30,
    )
    assert as_json.headers["content-type"] == "application/json"
    body = as_json.json()
    assert body["predictions"][1] is None and body["errors"][0] is None
    assert body["errors"][1]["code"] == "invalid_input"


async def test_a_parquet_batch_goes_as_arrow_every_id_once(client, run_worker, tmp_path):
    """Parquet in, Parquet out, the iris model: the worker sends Arrow (the rejected row's
    message is the columnar predict's) and the output passes ``verify``."""
    rows = 3_000
    table = pa.table(
        {
            "id": [f"a{i}" for i in range(rows)],
            **{f: [4.5 + ((i * (j + 3)) % 30) / 10 for i in range(rows)] for j, f in enumerate(FEATURES)},
            "customer": [f"c{i % 4}" for i in range(rows)],
        }
    )
    widths = table.column("petal_width").to_pylist()
    widths[1234] = None
    table = table.set_column(table.schema.get_field_index("petal_width"), "petal_width", pa.array(widths))
    source = tmp_path / "in.parquet"
    pq.write_table(table, source, row_group_size=700)
    output = tmp_path / "out"
    batch = BatchInferenceInput(
        input_uri=str(source),
        output_uri=str(output),
        model="iris",
        input_columns=FEATURES,
        keep_columns=["customer"],
        output_format="parquet",
        max_error_ratio=0.01,
        tuning=Tuning(shard_size=1_000, max_concurrent_shards=2, checkpoint_every=400, micro_batch_size=128),
    )
    async with run_worker() as queue:
        result = await execute_batch(client, queue, batch, prefix="arrow")
    ids = table.column("id").to_pylist()
    assert_exactly_once(output, ids, result)
    results = pq.read_table(output).to_pylist()
    assert Counter(r["id"] for r in results) == Counter(i for i in ids if i != "a1234")
    assert {r["customer"] for r in results} == {"c0", "c1", "c2", "c3"}
    (error,) = [
        json.loads(line) for f in (output / c.PARQUET_ERRORS_DIR).glob("*.jsonl") for line in f.open()
    ]
    assert (error["id"], error["line"], error["code"]) == ("a1234", 1235, "invalid_input")
    assert "features must be finite numbers" in error["reason"], "the columnar predict's message: Arrow went"
