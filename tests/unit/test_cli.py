"""``batch-inference submit``'s arguments become the batch input: several ``--input``s, data
options and tuning through ``--set``."""

from __future__ import annotations

import argparse

import pytest

from services.cli import build_input


def args(**given) -> argparse.Namespace:
    defaults = {
        "inline": None,
        "set": [],
        "input": None,
        "output": "/out",
        "model": None,
        "max_error_ratio": 0.0,
    }
    return argparse.Namespace(**{**defaults, **given})


def test_inputs_data_options_and_tuning():
    batch = build_input(
        args(
            input=["data/a.parquet", "s3://bucket/prefix/"],
            set=["output_format=parquet", 'input_columns=["f1","f2"]', "micro_batch_size=64"],
        )
    )
    assert isinstance(batch.input_uri, list) and batch.input_uri[0].endswith("/data/a.parquet")
    assert batch.input_uri[1] == "s3://bucket/prefix/", "URLs stay as given, local paths become absolute"
    assert (batch.output_format, batch.input_columns, batch.tuning.micro_batch_size) == (
        "parquet",
        ["f1", "f2"],
        64,
    )
    assert build_input(args(input=["s3://b/one.csv"])).input_uri == "s3://b/one.csv", "one input is a string"


def test_an_unknown_option_or_value_is_refused_naming_it():
    with pytest.raises(ValueError, match="output_format"):
        build_input(args(input=["in.jsonl"], set=["output_format=xml"]))
    with pytest.raises(ValueError, match="no_such_option"):
        build_input(args(input=["in.jsonl"], set=["no_such_option=1"]))
