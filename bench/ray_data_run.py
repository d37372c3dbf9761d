"""Baseline D, run as its own driver: Ray Data ``map_batches`` with the same model class.

Usage: python -m bench.ray_data_run <gcs address> <model import path> <input.jsonl> <output dir>
Prints one JSON line with the figures.
"""

from __future__ import annotations

import json
import sys
import time

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


def main() -> None:
    address, import_path, source, output = sys.argv[1:5]
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    started = time.perf_counter()
    # Serve's replicas hold ~1 of the 2 CPUs: size the tasks to fit beside them.
    small = {"num_cpus": 0.25}
    ds = ray.data.read_text(source, ray_remote_args=small).map_batches(
        Predict, fn_constructor_args=(import_path,), batch_size=1024, concurrency=1, num_cpus=0.5
    )
    ds.write_json(output, ray_remote_args=small)
    seconds = time.perf_counter() - started
    written = sum(1 for _ in ray.data.read_json(output).iter_rows())
    print(
        json.dumps(
            {"records": written, "seconds": round(seconds, 2), "records_per_s": round(written / seconds)}
        )
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
