"""Baseline D, run as its own driver: Ray Data ``map_batches`` with the same model class.

Usage: python -m bench.ray_data_run <gcs address> <model import path> <input> <output dir> [columns]

JSON Lines in and out; with ``columns`` (``id,col1,col2,...``: the id, then the model input's
columns) Parquet in (``read_parquet`` of only those columns) and out (``write_parquet``: ``id``
and ``prediction``, as the project's Parquet results). Prints one JSON line with the figures.
"""

from __future__ import annotations

import json
import sys
import time

import pyarrow as pa
import ray


class Predict:
    def __init__(self, import_path: str):
        from services.serve.models import load_model

        self.model = load_model(import_path)
        self.validate = getattr(self.model, "validate", None)

    def __call__(self, batch: dict) -> dict:
        ids, inputs = [], []
        for line in batch["text"]:
            record = json.loads(line)
            ids.append(str(record.pop("id")))
            value = record.get("input", record)
            inputs.append(self.validate(value) if self.validate else value)
        predictions = self.model.predict(inputs)
        return {"id": ids, "prediction": [json.dumps(p) for p in predictions]}


class PredictColumns:
    """Parquet rows: the model input of each is the object of its input columns (as the
    project's ``input_columns`` makes it), validated as Serve does."""

    def __init__(self, import_path: str, id_column: str, columns: list[str]):
        from services.serve.models import load_model

        self.model = load_model(import_path)
        self.validate = getattr(self.model, "validate", None)
        self.id_column, self.columns = id_column, columns

    def __call__(self, batch: pa.Table) -> pa.Table:
        values = zip(*(batch.column(name).to_pylist() for name in self.columns), strict=True)
        inputs = [dict(zip(self.columns, row, strict=True)) for row in values]
        if self.validate:
            inputs = [self.validate(value) for value in inputs]
        predictions = self.model.predict(inputs)
        return pa.table({"id": batch.column(self.id_column), "prediction": pa.array(predictions)})


def main() -> None:
    address, import_path, source, output = sys.argv[1:5]
    columns = sys.argv[5].split(",") if len(sys.argv) > 5 else None
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    started = time.perf_counter()
    # Serve's replicas hold ~1 of the 2 CPUs: size the tasks to fit beside them.
    small = {"num_cpus": 0.25}
    if columns:
        # Ray 2.60's new Parquet reader lists files in a task of a whole CPU, which never
        # starts beside Serve on two cores: the previous reader takes ray_remote_args.
        ray.data.DataContext.get_current().use_datasource_v2 = False
        ds = ray.data.read_parquet(source, columns=columns, ray_remote_args=small).map_batches(
            PredictColumns,
            fn_constructor_args=(import_path, columns[0], columns[1:]),
            batch_size=1024,
            batch_format="pyarrow",
            concurrency=1,
            num_cpus=0.5,
        )
        ds.write_parquet(output, ray_remote_args=small)
    else:
        ds = ray.data.read_text(source, ray_remote_args=small).map_batches(
            Predict, fn_constructor_args=(import_path,), batch_size=1024, concurrency=1, num_cpus=0.5
        )
        ds.write_json(output, ray_remote_args=small)
    seconds = time.perf_counter() - started
    if columns:
        written = ray.data.read_parquet(output).count()
    else:
        written = sum(1 for _ in ray.data.read_json(output).iter_rows())
    print(
        json.dumps(
            {"records": written, "seconds": round(seconds, 2), "records_per_s": round(written / seconds)}
        )
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
