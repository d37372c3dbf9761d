"""The JSONL result sink."""

from __future__ import annotations

from services.worker import jsonl_sink


def test_results_jsonl_is_one_json_line_per_record():
    text = jsonl_sink.results([1, "b", 3], [{"p": 0.5}, None, 123456789012345678901234567890])
    assert text == (
        b'{"id":1,"prediction":{"p":0.5}}\n'
        b'{"id":"b","prediction":null}\n'
        b'{"id":3,"prediction":123456789012345678901234567890}\n'
    )
    assert jsonl_sink.results([], []) == b""
