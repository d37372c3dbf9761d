"""fsspec I/O: atomic writes."""

from __future__ import annotations

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
