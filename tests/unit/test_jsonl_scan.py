"""The planning scan finds the records the shard reader finds."""

from __future__ import annotations

import io

import pytest

from services.worker import jsonl, jsonl_scan


def _records_by_line(data: bytes, max_bytes: int) -> list[tuple[int, int, bytes | None]]:
    fh, out, offset, line = io.BytesIO(data), [], 0, 1
    while True:
        fh.seek(offset)
        records, consumed, next_line = jsonl.read_records(fh, 1, line, max_bytes)
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
    chunks = list(jsonl_scan.scan_records(io.BytesIO(data), max_bytes=24, chunk_bytes=chunk_bytes))
    assert all(chunk.raws for chunk in chunks)
    got = [record for chunk in chunks for record in zip(chunk.lines, chunk.offsets, chunk.raws, strict=True)]
    assert got == [(line, offset, raw and raw.removesuffix(b"\n")) for line, offset, raw in expected]
    index = jsonl_scan.RecordIndex(stride=2)
    for chunk in chunks:
        index.add(chunk)
    assert index.total == len(expected)
    fh = io.BytesIO(data)
    assert [index.locate(fh, i, max_bytes=24) for i in range(len(expected))] == [r[:2] for r in expected]
