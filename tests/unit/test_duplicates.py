"""Duplicate ids: keys, hashes and the bounded-memory finder."""

from __future__ import annotations

import io
import json
import random

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.worker import duplicates, jsonl_scan


@pytest.mark.parametrize(
    "line",
    [
        b'{"id":"r1","input":{"text":"a"}}\n',
        b' { "id" : "caf\xc3\xa9" , "x": 1}\n',
        b'{"id":42,"features":[1,2]}\n',
        b'{"id":-7}\n',
        b'{"id":0,"x":{"id":1}}\n',  # "id" twice: parsed
        b'{"id":"a\\u0041"}\n',  # an escape: parsed ("aA")
        b'{"id":"a","id":"b"}\n',  # the last wins, as in every parser
        b'{"id":123456789012345678901234}\n',
        b'{"x":1,"id":"later"}\n',
        b'{"id":007}\n',
        b'{"id":true}\n',
        b'{"id":"r1", broken\n',
        b"[1,2]\n",
    ],
)
def test_candidate_key_equals_record_key_for_valid_records(line: bytes) -> None:
    exact = duplicates.record_key(line)
    if exact is not None:
        assert duplicates.candidate_key(line) == exact
    assert duplicates.candidate_key(b'{"id":"aA"}') == duplicates.record_key(b'{"id":"a\\u0041"}')


def test_candidate_keys_of_many_lines_equal_line_by_line() -> None:
    usual = [f'{{"id":"r{i}","input":{{"n":{i}}}}}'.encode() for i in range(50)] + [b'{ "id" : 7 }']
    odd = [b'{"x":1,"id":"later"}', b'{"id":0,"x":{"id":1}}', b"[1]", None]
    for lines in (usual, usual[:10] + odd + usual[10:], odd):
        expected = [k for raw in lines if (k := duplicates.candidate_key(raw)) is not None]
        assert duplicates.candidate_keys(lines) == expected
    assert (
        duplicates.candidate_keys(usual)[:2] == [b'"r0"', b'"r1"']
        and duplicates.candidate_keys(usual)[-1] == b"7"
    )


@pytest.mark.parametrize("chunk_bytes", [7, 64, 1 << 20])
def test_chunk_keys_are_the_candidate_keys_of_the_chunks_lines(chunk_bytes: int) -> None:
    rng = random.Random(7)
    lines = []
    for i in range(300):
        kind = rng.random()
        if kind < 0.05:
            lines.append(b"")  # blank
        elif kind < 0.1:
            lines.append(b'{"x": 1, "id": "late"}')  # id not first: the careful path
        else:
            lines.append(json.dumps({"id": rng.choice([f"k{i}", i, f"k{i % 7}"]), "n": i}).encode())
    data = b"\n".join(lines) + b"\n"
    for chunk in jsonl_scan.scan_records(io.BytesIO(data), chunk_bytes=chunk_bytes):
        assert duplicates.chunk_keys(chunk) == duplicates.candidate_keys(chunk.raws)


def test_key_hashes_depend_on_the_key_alone() -> None:
    keys = [b'"a"', b"7", b'"7"', b'"' + b"x" * 40 + b'"', b'"ab"', b"", b'""', b'"a\x00"', b'"a"']
    one_by_one = [int(duplicates.key_hashes([key])[0]) for key in keys]
    together = duplicates.key_hashes(keys).tolist()
    assert together == one_by_one  # whatever else is hashed with a key, and however long
    assert together[0] == together[-1] and len(set(together)) == len(keys) - 1
    # a string and an integer of the same characters differ, and so do keys that differ in
    # their last byte, or only in length
    assert len(set(duplicates.key_hashes([b"12345678", b"12345679", b"1234567", b"123456780"]).tolist())) == 4


@pytest.mark.parametrize(
    "column",
    [
        pa.array(["r0", None, "café", "", "x" * 40, "r0"]),
        pa.array(["plain", 'with "quote"', "back\\slash", "tab\t"]),  # escaped: value by value
        pa.array(["a", "b"], pa.large_string()),
        pa.array([7, None, -3, 0, 2**63 - 1], pa.int64()),
        pa.array([1, 2], pa.uint8()),
        pa.array([1.5, 2.0, None]),  # not an id type: no valid ids
        pa.array([True, False]),
        pa.array(["a", "b", "c", "d"]).slice(1, 2),  # a slice: Arrow's offsets do not start at 0
        pa.array(['q"', "c", "d\n"]).slice(1, 1),  # what JSON escapes only outside the slice
        pa.array([], pa.string()),
        pa.array(["", ""]),  # no bytes at all
    ],
)
def test_column_key_hashes_are_the_hashes_of_each_valid_ids_key(column: pa.Array) -> None:
    """A Parquet id column hashed from Arrow's buffers keys every id as the JSON Lines path
    does (a string in quotes, an integer as written), skipping nulls and ids of other types."""
    keys = [k for v in column.to_pylist() if (k := duplicates.id_key(v)) is not None]
    assert duplicates.column_key_hashes(column).tolist() == duplicates.key_hashes(keys).tolist()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(st.text(max_size=30), st.none()), max_size=40),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=40),
    st.booleans(),
)
def test_column_key_hashes_match_the_keys_for_any_ids(texts, numbers, large) -> None:
    """Any string or integer column, hashed from Arrow's buffers, gives each id the hash of its
    key, and a string never collides with the integer of the same digits."""
    column = pa.array(texts, pa.large_string() if large else pa.string())
    keys = [k for v in texts if (k := duplicates.id_key(v)) is not None]
    assert duplicates.column_key_hashes(column).tolist() == duplicates.key_hashes(keys).tolist()
    ints = pa.array(numbers, pa.int64())
    assert (
        duplicates.column_key_hashes(ints).tolist()
        == duplicates.key_hashes([duplicates.id_key(n) for n in numbers]).tolist()
    )
    as_text = duplicates.column_key_hashes(pa.array([str(n) for n in numbers]))
    assert not set(as_text.tolist()) & set(duplicates.column_key_hashes(ints).tolist())


@pytest.mark.parametrize("chunk_bytes", [7, 64, 1 << 20])
def test_chunk_key_hashes_are_the_hashes_of_the_chunks_keys(chunk_bytes: int) -> None:
    tricky = [
        b'{"id":"a,b}c","n":1}',  # a comma and a brace inside the id
        b'{"id":"esc\\"q","n":1}',  # an escaped quote
        b'{"id":"caf\xc3\xa9"}',  # UTF-8
        b'{"id":"\\u0041","n":1}',  # an escape: the key is its canonical form, "A"
        b'{"id":"a\tb","n":1}',  # a raw control byte: not valid JSON, no key
        b'{"id" : "spaced"}',
        b'{"id":"twice","id":"later"}',
        b'{"id":"x"   ,"n":1}',
        b'{"id":12,"n":1}',
        b'{"id":"' + b"L" * 300 + b'"}',  # a long id
        b'{"id":"',  # broken
    ]
    plain = [b'{"id":"r%d","input":{"n":%d}}' % (i, i) for i in range(400)]
    for lines in [plain, plain + tricky] + [[*plain[:50], line, *plain[50:]] for line in tricky]:
        data = b"\n".join(lines) + b"\n"
        for chunk in jsonl_scan.scan_records(io.BytesIO(data), chunk_bytes=chunk_bytes):
            expected = duplicates.key_hashes(duplicates.candidate_keys(chunk.raws)).tolist()
            assert duplicates.chunk_key_hashes(chunk).tolist() == expected


@pytest.mark.parametrize("spill_at", [3, 1 << 17])
def test_duplicate_ids_finds_every_repeat_in_memory_or_spilled(spill_at: int, monkeypatch) -> None:
    monkeypatch.setattr(duplicates.DuplicateIds, "SPILL_AT", spill_at)
    keys = [f'"id{i}"'.encode() for i in range(5000)] + [b'"id7"', b'"id7"', b'"id4999"']
    ids = duplicates.DuplicateIds()
    for start in range(0, len(keys), 100):
        ids.add(duplicates.key_hashes(keys[start : start + 100]))
    assert bool(ids._spilled) == (spill_at == 3)
    repeated, extra = ids.repeated_hashes(limit=100)
    ids.close()
    assert repeated == set(duplicates.key_hashes([b'"id7"', b'"id4999"']).tolist()) and extra == 3


def test_duplicate_ids_keep_hashes_in_memory_without_a_temp_dir(monkeypatch) -> None:
    monkeypatch.setattr(duplicates.DuplicateIds, "SPILL_AT", 3)

    def no_temp_dir():
        raise OSError("read-only file system")

    monkeypatch.setattr(duplicates.tempfile, "TemporaryFile", no_temp_dir)
    ids = duplicates.DuplicateIds()
    ids.add(duplicates.key_hashes([b"1", b"2", b"3", b"4"]))
    ids.add(duplicates.key_hashes([b"2", b"5"]))
    assert ids.repeated_hashes(limit=10) == (set(duplicates.key_hashes([b"2"]).tolist()), 1)
