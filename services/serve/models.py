"""Models served by the app, loaded by import path (``package.module:Class``).

A model class has ``load()`` (called once per replica) and a batched ``predict(list) -> list``.
It may also have ``validate(record) -> value``, raising ``ValueError`` for a bad record: the
record then gets a per-record error instead of failing the whole batch.
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Protocol, runtime_checkable

BUILTIN_MODELS: dict[str, str] = {
    "echo": "services.serve.models:Echo",
    "iris": "services.serve.models:IrisClassifier",
}


@runtime_checkable
class Model(Protocol):
    def load(self) -> None: ...

    def predict(self, inputs: list[Any]) -> list[Any]: ...


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


def load_model(import_path: str) -> Any:
    """Import ``package.module:Class``, instantiate it and call ``load()``."""
    module_name, sep, attr = import_path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"model import path must look like 'package.module:Class', got {import_path!r}")
    cls = getattr(importlib.import_module(module_name), attr)
    model = cls()
    if not isinstance(model, Model):
        raise TypeError(f"{import_path} must define load() and predict(list) -> list")
    model.load()
    return model
