"""fsspec I/O: atomic writes."""

from __future__ import annotations

import uuid

import pytest

from services.worker import fs


def test_atomic_writer_leaves_old_content_on_failure(tmp_path):
    target = tmp_path / "out" / "f.jsonl"
    fs.write_bytes(str(target), b"old\n")
    with pytest.raises(RuntimeError), fs.atomic_writer(str(target)) as fh:
        fh.write(b"half")
        raise RuntimeError("crash")
    assert target.read_bytes() == b"old\n"
    assert [p.name for p in target.parent.iterdir()] == ["f.jsonl"]


def test_a_remote_input_reads_like_a_local_one() -> None:
    """fsspec's remote files have no ``readline(limit)``: the readers need the whole io API."""
    uri = f"memory://fs-{uuid.uuid4().hex[:8]}/in.jsonl"
    fs.write_bytes(uri, b'{"id":1}\n' + b"x" * 40 + b"\n" + b'{"id":2}\n')
    with fs.open_input(uri) as fh:
        assert fh.readline(5) == b'{"id"'
        fh.seek(0)
        assert [len(line) for line in fh] == [9, 41, 9]
        fh.seek(50)
        assert fh.readline() == b'{"id":2}\n' and fh.tell() == 59
