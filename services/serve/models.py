"""Models served by the app, loaded by import path (``package.module:Class``).

A model class has ``load()`` (called once per replica) and a batched ``predict(list) -> list``.
It may also have ``validate(record) -> value``, raising ``ValueError`` for a bad record: the
record then gets a per-record error instead of failing the whole batch.

A model may also take columns (``predict_columns``, see ``ColumnarModel``): a pyarrow Table of
the inputs in, one prediction per row out as an Arrow array, and per row why it was refused.
Serve then answers Arrow request bodies (services/arrow_wire.py) without a Python object per
record, and lists the model as columnar so workers send it Arrow.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BUILTIN_MODELS: dict[str, str] = {
    "echo": "services.serve.models:Echo",
    "iris": "services.serve.models:IrisClassifier",
}


@runtime_checkable
class Model(Protocol):
    def load(self) -> None: ...

    def predict(self, inputs: list[Any]) -> list[Any]: ...


@dataclass
class ColumnarPredictions:
    """``predict_columns``'s answer: a prediction per input row (null where refused) and, if
    any row was refused as invalid input, why (a string per row, null for the good ones)."""

    predictions: pa.Array
    invalid: pa.Array | None = None


@runtime_checkable
class ColumnarModel(Protocol):
    def predict_columns(self, table: pa.Table) -> ColumnarPredictions: ...


class Echo:
    """The original example's behaviour: the prediction is the input."""

    def load(self) -> None:
        pass

    def validate(self, record: Any) -> Any:
        return record

    def predict(self, inputs: list[Any]) -> list[Any]:
        return list(inputs)


class IrisClassifier:
    """A real scikit-learn classifier, fitted at replica start on the Iris data shipped with
    scikit-learn (no download). Input: ``{"features": [4 numbers]}``, a list of 4 numbers, or
    an object with the four named measurements in centimetres."""

    FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
    # What ``predict``'s dicts become in Arrow (as pyarrow infers them): the columnar answer's type.
    PREDICTION_TYPE = pa.struct(
        [("label", pa.string()), ("class_id", pa.int64()), ("probability", pa.float64())]
    )

    def load(self) -> None:
        from sklearn.datasets import load_iris
        from sklearn.linear_model import LogisticRegression

        data = load_iris()
        self._classes = [str(name) for name in data.target_names]
        self._model = LogisticRegression(max_iter=1000).fit(data.data, data.target)

    def validate(self, record: Any) -> list[float]:
        if isinstance(record, dict):
            if "features" in record:
                values = record["features"]
            elif all(name in record for name in self.FEATURES):
                values = [record[name] for name in self.FEATURES]
            else:
                raise ValueError("expected 'features' (4 numbers) or the fields " + ", ".join(self.FEATURES))
        else:
            values = record
        if not isinstance(values, list) or len(values) != len(self.FEATURES):
            raise ValueError(f"expected {len(self.FEATURES)} numeric features")
        out = []
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"feature {value!r} is not a number")
            if not math.isfinite(value):
                raise ValueError("features must be finite numbers")
            out.append(float(value))
        return out

    def _matrix(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray, str]:
        """(rows x 4 float64, rows of the wrong length) of a table with the four named columns or
        a ``features`` list column; or a reason that refuses every row (wrong columns)."""
        names, rows, width = table.column_names, table.num_rows, len(self.FEATURES)
        no_shape_errors = np.zeros(rows, dtype=bool)
        if all(name in names for name in self.FEATURES):
            columns = [table.column(name) for name in self.FEATURES]
            for name, column in zip(self.FEATURES, columns, strict=True):
                if not _numeric(column.type):
                    return np.empty((0, width)), no_shape_errors, f"feature {name!r} is not a number"
            # Nulls become NaN: refused below with the non-finite values.
            matrix = np.column_stack([c.cast(pa.float64()).to_numpy(zero_copy_only=False) for c in columns])
            return matrix.reshape(rows, width), no_shape_errors, ""
        if "features" in names and pa.types.is_list(table.column("features").type):
            features = table.column("features")
            if not _numeric(features.type.value_type):
                return np.empty((0, width)), no_shape_errors, "features are not numbers"
            fits = pc.fill_null(pc.list_value_length(features), 0).to_numpy() == width
            matrix = np.full((rows, width), np.nan)
            flat = pc.list_flatten(features.filter(pa.array(fits))).cast(pa.float64())
            matrix[fits] = flat.to_numpy(zero_copy_only=False).reshape(-1, width)
            return matrix, ~fits, ""
        reason = "expected 'features' (4 numbers) or the fields " + ", ".join(self.FEATURES)
        return np.empty((0, width)), no_shape_errors, reason

    def predict_columns(self, table: pa.Table) -> ColumnarPredictions:
        """Vectorised: the inputs as one float64 matrix, one ``predict_proba`` call, and the
        predictions built as Arrow arrays (the struct ``predict`` returns, column by column)."""
        rows = table.num_rows
        matrix, wrong_length, reason = self._matrix(table)
        if reason:
            return ColumnarPredictions(
                pa.nulls(rows, self.PREDICTION_TYPE), pa.array([reason] * rows, pa.string())
            )
        good = np.isfinite(matrix).all(axis=1)
        best = np.zeros(rows, dtype=np.int64)
        probability = np.zeros(rows)
        if good.any():
            probabilities = self._model.predict_proba(matrix if good.all() else matrix[good])
            picked = probabilities.argmax(axis=1)
            best[good] = picked
            probability[good] = np.round(probabilities[np.arange(len(picked)), picked], 6)
        if good.all():
            refused, invalid = None, None
        else:
            refused = pa.array(~good)
            why = np.where(
                wrong_length,
                f"expected {len(self.FEATURES)} numeric features",
                "features must be finite numbers (none missing)",
            )
            invalid = pa.array(np.where(good, None, why), pa.string(), from_pandas=True)
        predictions = pa.StructArray.from_arrays(
            [pa.array(self._classes, pa.string()).take(best), pa.array(best), pa.array(probability)],
            fields=list(self.PREDICTION_TYPE),
            mask=refused,
        )
        return ColumnarPredictions(predictions, invalid)

    def predict(self, inputs: list[list[float]]) -> list[dict[str, Any]]:
        probabilities = self._model.predict_proba(inputs)
        results = []
        for row in probabilities:
            best = int(row.argmax())
            results.append(
                {
                    "label": self._classes[best],
                    "class_id": best,
                    "probability": round(float(row[best]), 6),
                }
            )
        return results


def _numeric(type_: pa.DataType) -> bool:
    return pa.types.is_integer(type_) or pa.types.is_floating(type_)


def model_class(import_path: str) -> type:
    """The class at ``package.module:Class`` (imported, not instantiated)."""
    module_name, sep, attr = import_path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"model import path must look like 'package.module:Class', got {import_path!r}")
    return getattr(importlib.import_module(module_name), attr)


def is_columnar(import_path: str) -> bool:
    """Whether the model at ``import_path`` has a columnar predict (takes Arrow bodies)."""
    return callable(getattr(model_class(import_path), "predict_columns", None))


def load_model(import_path: str) -> Any:
    """Import ``package.module:Class``, instantiate it and call ``load()``."""
    model = model_class(import_path)()
    if not isinstance(model, Model):
        raise TypeError(f"{import_path} must define load() and predict(list) -> list")
    model.load()
    return model
