"""Resolving ``input_uri`` to files: one file, a folder, a glob, a list; formats by suffix;
Hive partition keys; what is skipped; what matches nothing."""

from __future__ import annotations

import pytest

from services.errors import Failure
from services.worker.inputs import InputError, partition_keys, resolve, split_suffix


@pytest.mark.parametrize(
    "name, expected",
    [
        ("a.jsonl", ("jsonl", None)),
        ("a.JSONL.GZ", ("jsonl", "gzip")),
        ("a.ndjson.zst", ("jsonl", "zstd")),
        ("a.csv.bz2", ("csv", "bz2")),
        ("a.parquet", ("parquet", None)),
        ("a.txt", (None, None)),
    ],
)
def test_format_and_compression_come_from_the_suffix(name, expected):
    assert split_suffix(name) == expected


def test_hive_partition_keys_come_from_the_folders():
    assert partition_keys("s3://b/events/date=2026-12-01/hour=03/part-0.parquet") == {
        "date": "2026-12-01",
        "hour": "03",
    }
    assert partition_keys("in/file.jsonl") == {}


@pytest.fixture
def tree(tmp_path):
    for name in [
        "b.jsonl",
        "a.jsonl.gz",
        "sub/c.jsonl",
        "_SUCCESS",
        ".hidden.jsonl",
        "notes.txt",
        "_tmp/x.jsonl",
    ]:
        path = tmp_path / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return tmp_path / "in"


def test_a_folder_lists_its_data_files_sorted_skipping_hidden_and_unknown(tree):
    found = resolve(str(tree))
    assert [f.uri.removeprefix(str(tree) + "/") for f in found] == ["a.jsonl.gz", "b.jsonl", "sub/c.jsonl"]
    assert [(f.format, f.compression) for f in found] == [("jsonl", "gzip"), ("jsonl", None), ("jsonl", None)]
    assert all(f.version for f in found), "a fingerprint of each file (mtime here)"


def test_a_glob_and_a_list_without_repeats(tree):
    assert [f.uri for f in resolve(str(tree / "*.jsonl"))] == [str(tree / "b.jsonl")]
    both = resolve([str(tree / "b.jsonl"), str(tree / "*.jsonl"), str(tree / "sub")])
    assert [f.uri for f in both] == [str(tree / "b.jsonl"), str(tree / "sub" / "c.jsonl")]


def test_input_format_reads_files_whatever_their_suffix(tree):
    (tree / "plain.txt").write_bytes(b"")
    assert [f.format for f in resolve(str(tree / "*.txt"), "csv")] == ["csv", "csv"]


@pytest.mark.parametrize("pattern", ["*.parquet", "nothing-here/", "missing.jsonl"])
def test_what_matches_nothing_is_input_not_found_naming_it(tree, pattern):
    with pytest.raises(InputError) as exc:
        resolve(str(tree / pattern))
    assert exc.value.failure == Failure.INPUT_NOT_FOUND and pattern.rstrip("/") in str(exc.value)


def test_mixed_formats_and_unknown_suffixes_are_refused(tree):
    (tree / "d.csv").write_bytes(b"")
    with pytest.raises(InputError, match="mixes formats"):
        resolve(str(tree))
    with pytest.raises(InputError, match="cannot tell the format") as exc:
        resolve(str(tree / "notes.txt"))
    assert exc.value.failure == Failure.INPUT_UNREADABLE
