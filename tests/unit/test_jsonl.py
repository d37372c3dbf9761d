"""The JSONL source: what a record is, how a shard reads its lines, how a line is parsed."""

from __future__ import annotations

import io
import json

import pytest

from services.errors import Code, RecordError, Stage
from services.worker import jsonl


def test_read_records_skips_blank_lines_and_flags_oversize_lines():
    data = b'{"id":1}\n\n{"id":2}\n' + b"x" * 50 + b"\n" + b'{"id":3}'
    fh = io.BytesIO(data)
    records, consumed, line = jsonl.read_records(fh, 10, 1, max_bytes=20)
    assert [(n, raw is None) for n, raw in records] == [(1, False), (3, False), (4, True), (5, False)]
    assert consumed == len(data) and line == 6


def test_read_records_resumes_exactly_where_it_stopped():
    data = b"".join(json.dumps({"id": i}).encode() + b"\n" for i in range(10))
    fh = io.BytesIO(data)
    first, consumed, line = jsonl.read_records(fh, 4, 1)
    fh2 = io.BytesIO(data)
    fh2.seek(consumed)
    rest, _, _ = jsonl.read_records(fh2, 100, line)
    ids = [json.loads(raw)["id"] for _, raw in first + rest]
    assert ids == list(range(10)) and rest[0][0] == 5


@pytest.mark.parametrize(
    ("raw", "reason", "code"),
    [
        (b"{bad json", "malformed JSON", Code.MALFORMED_JSON),
        (b'{"x": 1}', "no 'id'", Code.MISSING_ID),
        (b"[1, 2]", "must be a JSON object", Code.NOT_AN_OBJECT),
        (b'{"id": true}', "'id' must be", Code.BAD_ID),
        (b'{"id": "\xff"}', "not UTF-8", Code.NOT_UTF8),
    ],
)
def test_parse_line_reasons(raw, reason, code):
    with pytest.raises(RecordError, match=reason) as exc:
        jsonl.parse_line(raw)
    assert (exc.value.stage, exc.value.code) == (Stage.PARSE, code)


def test_model_input_is_input_field_or_record_without_id():
    assert jsonl.parse_line(b'{"id": 1, "input": [1, 2]}') == (1, [1, 2], None)
    assert jsonl.parse_line(b'{"id": "a", "features": [1]}') == ("a", {"features": [1]}, None)


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
    one_by_one = [jsonl.parse_line(raw) for raw in GOOD_LINES]
    assert jsonl.parse_lines(GOOD_LINES) == (
        [i for i, _, _ in one_by_one],
        [x for _, x, _ in one_by_one],
        None,
    )
    assert jsonl.parse_lines([*GOOD_LINES, bad]) is None


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
        records, consumed_a, line_a = jsonl.read_records(careful, count, line_a)
        lines, raws, consumed_b, line_b = jsonl.read_part(bulk, count, line_b, short_lines=True)
        assert (list(lines), raws) == ([n for n, _ in records], [raw for _, raw in records])
        assert (consumed_a, line_a, careful.tell()) == (consumed_b, line_b, bulk.tell())
        if not records:
            break


def test_read_part_without_short_lines_flags_an_overlong_line():
    data = b'{"id":1}\n' + b"x" * 50 + b"\n" + b'{"id":2}\n'
    lines, raws, consumed, line = jsonl.read_part(io.BytesIO(data), 10, 1, max_bytes=20)
    assert (list(lines), raws, consumed, line) == (
        [1, 2, 3],
        [b'{"id":1}\n', None, b'{"id":2}\n'],
        len(data),
        4,
    )
