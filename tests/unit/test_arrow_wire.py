"""The Arrow wire format (services/arrow_wire.py) and the iris model's columnar predict."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from services import arrow_wire
from services.serve.models import BUILTIN_MODELS, IrisClassifier, is_columnar, load_model

FEATURES = list(IrisClassifier.FEATURES)


@pytest.fixture(scope="module")
def iris() -> IrisClassifier:
    return load_model(BUILTIN_MODELS["iris"])


def features(rows: list[list[float | None]]) -> pa.Table:
    return pa.table({name: [row[i] for row in rows] for i, name in enumerate(FEATURES)})


def test_a_table_round_trips_with_its_types_and_nulls():
    table = pa.table(
        {
            "f": pa.array([1.5, None, -0.0], pa.float64()),
            "n": pa.array([1, 2, None], pa.int32()),
            "s": ["a", None, "ü"],
            "l": pa.array([[1.0, 2.0], None, []], pa.list_(pa.float64())),
        }
    )
    back = arrow_wire.decode(arrow_wire.encode(table))
    assert back.schema == table.schema and back.equals(table)


def test_several_record_batches_in_one_stream_read_as_one_table():
    batch = pa.record_batch({"x": [1.0, 2.0]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write(batch)
        writer.write(batch)
    assert arrow_wire.decode(sink.getvalue().to_pybytes()).column("x").to_pylist() == [1.0, 2.0] * 2


@pytest.mark.parametrize(
    "body",
    [b"", b"not arrow at all", b'{"inputs": [[1, 2, 3, 4]]}', b"\xff\xff\xff\xff" + b"\x00" * 64],
    ids=["empty", "text", "json", "bad-header"],
)
def test_a_body_that_is_not_an_ipc_stream_is_a_wire_error(body):
    with pytest.raises(arrow_wire.WireError, match="not an Arrow IPC stream"):
        arrow_wire.decode(body)


def test_a_truncated_stream_is_a_wire_error():
    body = arrow_wire.encode(features([[5.1, 3.5, 1.4, 0.2]] * 100))
    with pytest.raises(arrow_wire.WireError):
        arrow_wire.decode(body[: len(body) // 2])


def test_rows_over_the_limit_are_refused_before_use():
    body = arrow_wire.encode(pa.table({"x": list(range(11))}))
    assert arrow_wire.decode(body, max_rows=11).num_rows == 11
    with pytest.raises(arrow_wire.TooManyRows, match="the limit is 10"):
        arrow_wire.decode(body, max_rows=10)


def test_a_reply_of_the_wrong_length_or_columns_is_refused():
    empty = pa.nulls(2, pa.string())
    reply = arrow_wire.encode(arrow_wire.results(pa.array([1, 2]), empty, empty))
    assert arrow_wire.decode_results(reply, 2).column(arrow_wire.PREDICTION).to_pylist() == [1, 2]
    with pytest.raises(arrow_wire.WireError, match="expected 3 rows"):
        arrow_wire.decode_results(reply, 3)
    with pytest.raises(arrow_wire.WireError, match="expected 1 rows"):
        arrow_wire.decode_results(arrow_wire.encode(pa.table({"prediction": [1]})), 1)


def test_iris_is_columnar_and_echo_is_not():
    assert is_columnar(BUILTIN_MODELS["iris"]) and not is_columnar(BUILTIN_MODELS["echo"])


def test_the_columnar_predict_equals_the_per_record_one(iris):
    rows = [
        [5.1, 3.5, 1.4, 0.2],
        [6.0, 2.2, 5.0, 1.5],
        [6.3, 3.3, 6.0, 2.5],
        [5.9, 3.0, 4.2, 1.5],
        [1, 2, 3, 4],
    ]
    answer = iris.predict_columns(features(rows))
    assert answer.invalid is None
    assert answer.predictions.type == IrisClassifier.PREDICTION_TYPE
    assert answer.predictions.to_pylist() == iris.predict([iris.validate(r) for r in rows])
    # the type pyarrow infers from the per-record answer: the Parquet output's schema either way
    assert pa.array(iris.predict([rows[0]])).type == IrisClassifier.PREDICTION_TYPE


def test_a_features_list_column_is_taken_too(iris):
    answer = iris.predict_columns(pa.table({"features": [[5.1, 3.5, 1.4, 0.2], [1.0, 2.0], None]}))
    assert answer.predictions.to_pylist()[0] == iris.predict([[5.1, 3.5, 1.4, 0.2]])[0]
    assert answer.predictions.to_pylist()[1:] == [None, None]
    assert answer.invalid.to_pylist() == [None, "expected 4 numeric features", "expected 4 numeric features"]


def test_rows_with_a_missing_or_non_finite_feature_are_refused_alone(iris):
    answer = iris.predict_columns(
        features([[5.1, 3.5, 1.4, 0.2], [None, 3.0, 1.4, 0.2], [6.0, math.inf, 5.0, 1.5]])
    )
    assert answer.predictions.to_pylist()[0] == iris.predict([[5.1, 3.5, 1.4, 0.2]])[0]
    assert answer.predictions.to_pylist()[1:] == [None, None]
    assert [m is None for m in answer.invalid.to_pylist()] == [True, False, False]


@pytest.mark.parametrize(
    ("table", "reason"),
    [
        (pa.table({"x": [1.0, 2.0]}), "expected 'features'"),
        (pa.table({name: ["a", "b"] for name in FEATURES}), "is not a number"),
    ],
)
def test_inputs_of_the_wrong_columns_refuse_every_row(iris, table, reason):
    answer = iris.predict_columns(table)
    assert answer.predictions.null_count == 2
    assert all(reason in message for message in answer.invalid.to_pylist())
