from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest

from services.worker import storage
from services.worker.models import INLINE_LIMIT_BYTES, BatchInferenceInput


def test_read_records_skips_blank_lines_and_flags_oversize_lines():
    data = b'{"id":1}\n\n{"id":2}\n' + b"x" * 50 + b"\n" + b'{"id":3}'
    fh = io.BytesIO(data)
    records, consumed, line = storage.read_records(fh, 10, 1, max_bytes=20)
    assert [(n, raw is None) for n, raw in records] == [(1, False), (3, False), (4, True), (5, False)]
    assert consumed == len(data) and line == 6


def test_read_records_resumes_exactly_where_it_stopped():
    data = b"".join(json.dumps({"id": i}).encode() + b"\n" for i in range(10))
    fh = io.BytesIO(data)
    first, consumed, line = storage.read_records(fh, 4, 1)
    fh2 = io.BytesIO(data)
    fh2.seek(consumed)
    rest, _, _ = storage.read_records(fh2, 100, line)
    ids = [json.loads(raw)["id"] for _, raw in first + rest]
    assert ids == list(range(10)) and rest[0][0] == 5


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{bad json", "malformed JSON"),
        (b'{"x": 1}', "no 'id'"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"id": true}', "'id' must be"),
        (b'{"id": "\xff"}', "not UTF-8"),
    ],
)
def test_parse_line_reasons(raw, reason):
    with pytest.raises(storage.BadRecord, match=reason):
        storage.parse_line(raw)


def test_model_input_is_input_field_or_record_without_id():
    assert storage.parse_line(b'{"id": 1, "input": [1, 2]}') == (1, [1, 2])
    assert storage.parse_line(b'{"id": "a", "features": [1]}') == ("a", {"features": [1]})


def test_atomic_writer_leaves_old_content_on_failure(tmp_path):
    target = tmp_path / "out" / "f.jsonl"
    storage.write_bytes(str(target), b"old\n")
    with pytest.raises(RuntimeError), storage.atomic_writer(str(target)) as fh:
        fh.write(b"half")
        raise RuntimeError("crash")
    assert target.read_bytes() == b"old\n"
    assert [p.name for p in target.parent.iterdir()] == ["f.jsonl"]


def test_oversize_inline_input_is_refused_with_advice():
    records = [{"id": i, "text": "x" * 1000} for i in range(INLINE_LIMIT_BYTES // 1000 + 10)]
    with pytest.raises(ValueError, match="Write them to a JSONL file"):
        BatchInferenceInput(records=records)


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
    exact = storage.record_key(line)
    if exact is not None:
        assert storage.candidate_key(line) == exact
    assert storage.candidate_key(b'{"id":"aA"}') == storage.record_key(b'{"id":"a\\u0041"}')


def _records_by_line(data: bytes, max_bytes: int) -> list[tuple[int, int, bytes | None]]:
    fh, out, offset, line = io.BytesIO(data), [], 0, 1
    while True:
        fh.seek(offset)
        records, consumed, next_line = storage.read_records(fh, 1, line, max_bytes)
        if not records:
            return out
        # the record's own offset: blank lines before it are part of ``consumed``
        (number, raw), skipped = records[0], 0
        fh.seek(offset)
        for _ in range(number - line):
            skipped += len(fh.readline())
        out.append((number, offset + skipped, raw))
        offset, line = offset + consumed, next_line


@pytest.mark.parametrize("chunk_bytes", [1, 3, 7, 16, 1 << 20])
@pytest.mark.parametrize(
    "data",
    [
        b'{"id":1}\n{"id":2}\n',
        b'{"id":1}\n\n  \n{"id":2}',  # blank lines, no final newline
        b"\n\n" + b"x" * 40 + b"\n" + b'{"id":3}\r\n' + b" \t\n",
        b"y" * 25 + b"\n" + b"z" * 24 + b"\n" + b"w" * 26,  # around the limit, last line long
        b"a" * 100,
        b"",
        b"   ",
        b'{"id":"a"}\n' * 5 + b"q" * 60 + b"\n" + b'{"id":"b"}',
    ],
)
def test_scan_records_finds_what_read_records_finds(data: bytes, chunk_bytes: int) -> None:
    expected = _records_by_line(data, max_bytes=24)
    chunks = list(storage.scan_records(io.BytesIO(data), max_bytes=24, chunk_bytes=chunk_bytes))
    assert all(chunk.raws for chunk in chunks)
    got = [record for chunk in chunks for record in zip(chunk.lines, chunk.offsets, chunk.raws, strict=True)]
    assert got == [(line, offset, raw and raw.removesuffix(b"\n")) for line, offset, raw in expected]
    index = storage.RecordIndex(stride=2)
    for chunk in chunks:
        index.add(chunk)
    assert index.total == len(expected)
    fh = io.BytesIO(data)
    assert [index.locate(fh, i, max_bytes=24) for i in range(len(expected))] == [r[:2] for r in expected]


@pytest.mark.parametrize(
    ("total", "shard_size", "window", "sizes"),
    [
        (100_000, 10_000, 4, [8334] * 4 + [8333] * 8),
        (10_000, 10_000, 4, [2500] * 4),
        (1_000_000, 10_000, 4, [10_000] * 100),
        (10, 4, 4, [3, 3, 2, 2]),
        (3, 10, 4, [1, 1, 1]),
        (25, 10, 1, [9, 8, 8]),
    ],
)
def test_shard_sizes_are_equal_and_fill_the_window(total, shard_size, window, sizes):
    assert storage.shard_sizes(total, shard_size, window) == sizes


@pytest.mark.parametrize("seed", range(5))
def test_shard_sizes_cover_every_record_within_the_limit(seed):
    rng = random.Random(seed)
    for _ in range(2000):
        total, window = rng.randint(1, 10**6), rng.randint(1, 20)
        shard_size = rng.randint(1, total + 5)
        sizes = storage.shard_sizes(total, shard_size, window)
        assert sum(sizes) == total and 1 <= min(sizes) and max(sizes) - min(sizes) <= 1
        assert max(sizes) <= shard_size and len(sizes) >= -(-total // shard_size)
        assert len(sizes) % window == 0 or len(sizes) == total  # fills the window when it can


def test_candidate_keys_of_many_lines_equal_line_by_line() -> None:
    usual = [f'{{"id":"r{i}","input":{{"n":{i}}}}}'.encode() for i in range(50)] + [b'{ "id" : 7 }']
    odd = [b'{"x":1,"id":"later"}', b'{"id":0,"x":{"id":1}}', b"[1]", None]
    for lines in (usual, usual[:10] + odd + usual[10:], odd):
        expected = [k for raw in lines if (k := storage.candidate_key(raw)) is not None]
        assert storage.candidate_keys(lines) == expected
    assert (
        storage.candidate_keys(usual)[:2] == [b'"r0"', b'"r1"'] and storage.candidate_keys(usual)[-1] == b"7"
    )


GOOD_LINES = [b'{"id": 1, "input": [1, 2]}\n', b'{"id": "a", "features": [1]}\n', b'{"id":-3,"input":null}']


@pytest.mark.parametrize(
    "bad",
    [
        b"{bad json\n",
        b'{"x": 1}\n',
        b"[1, 2]\n",
        b'{"id": true}\n',
        b'{"id": 1.5}\n',
        b'{"id": "\xff"}\n',
        b'{"id": 1, "x": NaN}\n',
        b'{"id": 1, "n": 123456789012345678901234567890}\n',
    ],
)
def test_parse_lines_is_parse_line_in_bulk_or_declines(bad):
    """The bulk path gives parse_line's values for good lines and declines (None) whenever a
    line needs parse_line's own answer: an error, or json's value of a long integer."""
    one_by_one = [storage.parse_line(raw) for raw in GOOD_LINES]
    assert storage.parse_lines(GOOD_LINES) == ([i for i, _ in one_by_one], [x for _, x in one_by_one])
    assert storage.parse_lines([*GOOD_LINES, bad]) is None


def test_results_jsonl_is_one_json_line_per_record():
    text = storage.results_jsonl([1, "b", 3], [{"p": 0.5}, None, 123456789012345678901234567890])
    assert text == (
        b'{"id":1,"prediction":{"p":0.5}}\n'
        b'{"id":"b","prediction":null}\n'
        b'{"id":3,"prediction":123456789012345678901234567890}\n'
    )
    assert storage.results_jsonl([], []) == b""


@pytest.mark.parametrize("count", [1, 2, 3, 100])
@pytest.mark.parametrize(
    "data",
    [
        b'{"id":1}\n{"id":2}\n{"id":3}\n',
        b'{"id":1}\n\n  \n{"id":2}\n\n{"id":3}',  # blank lines, no final newline
        b'\n\n{"id":1}\r\n \t\n{"id":2}\n',
        b"",
        b"   \n\n",
    ],
)
def test_read_part_reads_what_read_records_reads(data: bytes, count: int) -> None:
    """The bulk reader a shard uses when the plan saw no overlong line: the same records, line
    numbers and offsets as the careful reader, part after part."""
    careful, bulk = io.BytesIO(data), io.BytesIO(data)
    line_a = line_b = 1
    while True:
        records, consumed_a, line_a = storage.read_records(careful, count, line_a)
        lines, raws, consumed_b, line_b = storage.read_part(bulk, count, line_b, short_lines=True)
        assert (list(lines), raws) == ([n for n, _ in records], [raw for _, raw in records])
        assert (consumed_a, line_a, careful.tell()) == (consumed_b, line_b, bulk.tell())
        if not records:
            break


def test_read_part_without_short_lines_flags_an_overlong_line():
    data = b'{"id":1}\n' + b"x" * 50 + b"\n" + b'{"id":2}\n'
    lines, raws, consumed, line = storage.read_part(io.BytesIO(data), 10, 1, max_bytes=20)
    assert (list(lines), raws, consumed, line) == (
        [1, 2, 3],
        [b'{"id":1}\n', None, b'{"id":2}\n'],
        len(data),
        4,
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
    for chunk in storage.scan_records(io.BytesIO(data), chunk_bytes=chunk_bytes):
        assert storage.chunk_keys(chunk) == storage.candidate_keys(chunk.raws)


def test_key_hashes_depend_on_the_key_alone() -> None:
    keys = [b'"a"', b"7", b'"' + b"x" * 40 + b'"', b'"ab"', b"", b'"a\x00"', b'"a"']
    one_by_one = [int(storage.key_hashes([key])[0]) for key in keys]
    together = storage.key_hashes(keys).tolist()
    assert together == one_by_one  # whatever else is hashed with a key, and however long
    assert together[0] == together[-1] and len(set(together)) == len(keys) - 1
    # keys that differ in their last byte, or only in length, differ
    assert len(set(storage.key_hashes([b"12345678", b"12345679", b"1234567", b"123456780"]).tolist())) == 4


@pytest.mark.parametrize("chunk_bytes", [7, 64, 1 << 20])
def test_chunk_key_hashes_are_the_hashes_of_the_chunks_keys(chunk_bytes: int) -> None:
    tricky = [
        b'{"id":"a,b}c","n":1}',  # a comma and a brace inside the id
        b'{"id":"esc\\"q","n":1}',  # an escaped quote: the fast path steps aside
        b'{"id":"caf\xc3\xa9"}',  # UTF-8
        b'{"id":"\\u0041","n":1}',  # an escape: the key is its canonical form, "A"
        b'{"id":"a\tb","n":1}',  # a raw control byte: not valid JSON, no key
        b'{"id" : "spaced"}',
        b'{"id":"twice","id":"later"}',
        b'{"id":"x"   ,"n":1}',
        b'{"id":12,"n":1}',
        b'{"id":"' + b"L" * 300 + b'"}',  # longer than the fast path takes
        b'{"id":"',  # broken
    ]
    plain = [b'{"id":"r%d","input":{"n":%d}}' % (i, i) for i in range(400)]
    for lines in [plain, plain + tricky] + [[*plain[:50], line, *plain[50:]] for line in tricky]:
        data = b"\n".join(lines) + b"\n"
        for chunk in storage.scan_records(io.BytesIO(data), chunk_bytes=chunk_bytes):
            expected = storage.key_hashes(storage.candidate_keys(chunk.raws)).tolist()
            assert storage.chunk_key_hashes(chunk).tolist() == expected
    # the fast path really runs on the usual layout (whole chunks of plain string ids)
    chunk = next(storage.scan_records(io.BytesIO(b"\n".join(plain) + b"\n")))
    starts = np.asarray(chunk.offsets) - chunk.offsets[0]
    assert storage._string_id_hashes(chunk.text, starts) is not None


@pytest.mark.parametrize("spill_at", [3, 1 << 17])
def test_duplicate_ids_finds_every_repeat_in_memory_or_spilled(spill_at: int, monkeypatch) -> None:
    monkeypatch.setattr(storage.DuplicateIds, "SPILL_AT", spill_at)
    keys = [f'"id{i}"'.encode() for i in range(5000)] + [b'"id7"', b'"id7"', b'"id4999"']
    ids = storage.DuplicateIds()
    for start in range(0, len(keys), 100):
        ids.add(storage.key_hashes(keys[start : start + 100]))
    assert bool(ids._spilled) == (spill_at == 3)
    repeated, extra = ids.repeated_hashes(limit=100)
    ids.close()
    assert repeated == set(storage.key_hashes([b'"id7"', b'"id4999"']).tolist()) and extra == 3


def test_duplicate_ids_keep_hashes_in_memory_without_a_temp_dir(monkeypatch) -> None:
    monkeypatch.setattr(storage.DuplicateIds, "SPILL_AT", 3)

    def no_temp_dir():
        raise OSError("read-only file system")

    monkeypatch.setattr(storage.tempfile, "TemporaryFile", no_temp_dir)
    ids = storage.DuplicateIds()
    ids.add(storage.key_hashes([b"1", b"2", b"3", b"4"]))
    ids.add(storage.key_hashes([b"2", b"5"]))
    assert ids.repeated_hashes(limit=10) == (set(storage.key_hashes([b"2"]).tolist()), 1)
