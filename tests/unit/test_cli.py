"""``batch-inference submit``'s arguments become the batch input: several ``--input``s, data
options and tuning through ``--set``."""

from __future__ import annotations

import argparse

import pytest
from temporalio.common import Priority

from services.cli import build_input, parser


def args(**given) -> argparse.Namespace:
    defaults = {
        "inline": None,
        "set": [],
        "input": None,
        "output": "/out",
        "model": None,
        "max_error_ratio": 0.0,
        "priority": None,
        "fairness_key": None,
        "fairness_weight": None,
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


def test_priority_and_fairness_flags_become_the_batchs_temporal_priority():
    argv = ["submit", "--input", "in.jsonl", "--output", "out", "--priority", "1", "--fairness-key", "team-a"]
    batch = build_input(parser().parse_args(argv))
    assert (batch.priority, batch.fairness_key, batch.fairness_weight) == (1, "team-a", None)
    assert batch.temporal_priority() == Priority(priority_key=1, fairness_key="team-a")
    plain = build_input(parser().parse_args(["submit", "--input", "in.jsonl", "--output", "out"]))
    assert plain.temporal_priority() is Priority.default, "none given: the workflow's own (default 3)"


@pytest.mark.parametrize(
    ("flags", "key"),
    [
        (["--priority", "0"], "priority"),
        (["--priority", "6"], "priority"),
        (["--fairness-weight", "0"], "fairness_weight"),
        (["--fairness-key", "é" * 33], "fairness_key"),  # 66 bytes: over Temporal's 64
    ],
)
def test_a_priority_out_of_range_is_refused_naming_it(flags: list[str], key: str):
    with pytest.raises(ValueError, match=key):
        build_input(parser().parse_args(["submit", "--input", "in.jsonl", "--output", "out", *flags]))
