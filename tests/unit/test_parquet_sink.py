"""The Parquet results writer: dictionaries only for columns with few distinct values."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from services.worker import parquet_sink


def results(rows: int) -> pa.Table:
    classes = np.arange(rows) % 3
    prediction = pa.StructArray.from_arrays(
        [pa.array(np.array(["setosa", "versicolor", "virginica"])[classes]), pa.array(classes),
         pa.array(np.linspace(0, 1, rows))],
        names=["label", "class_id", "probability"],
    )  # fmt: skip
    return pa.table(
        {
            "id": pa.array([f"r{i}" for i in range(rows)]),
            "prediction": prediction,
            "tags": pa.array([["a"]] * rows),
            "note": pa.nulls(rows),
            "team": pa.array(["x", "y"] * (rows // 2)).dictionary_encode(),
        }
    )


def test_only_columns_with_few_distinct_values_get_a_dictionary() -> None:
    table = results(1000)
    assert parquet_sink.dictionary_columns(table) == ["prediction.label", "prediction.class_id", "team"]
    out = io.BytesIO()
    with parquet_sink.results_writer(out, table) as writer:
        writer.write_table(table)
        writer.write_table(table)  # later row groups follow the first rows' choice
    file = pq.ParquetFile(io.BytesIO(out.getvalue()))
    assert file.read().equals(pa.concat_tables([table, table]))
    for group in range(2):
        meta = file.metadata.row_group(group)
        dictionary = {
            meta.column(i).path_in_schema
            for i in range(meta.num_columns)
            if "RLE_DICTIONARY" in meta.column(i).encodings
        }
        assert dictionary == {"prediction.label", "prediction.class_id", "team"}
