"""fsspec I/O: atomic writes."""

from __future__ import annotations

import contextlib
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
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


@pytest.mark.parametrize("fails", [False, True])
def test_an_arrow_atomic_file_publishes_whole_or_nothing(tmp_path, fails) -> None:
    """Arrow's writers get Arrow's own file (no GIL per write); it is published like any other."""
    target = tmp_path / "out" / "r.parquet"
    fs.write_bytes(str(target), b"old")
    table = pa.table({"id": list(range(5)), "prediction": ["a"] * 5})
    with contextlib.suppress(RuntimeError), fs.atomic_writer(str(target), arrow=True) as out:
        assert isinstance(out, pa.NativeFile)
        with pq.ParquetWriter(out, table.schema) as writer:
            writer.write_table(table)
        if fails:
            raise RuntimeError("crash")
    if fails:
        assert target.read_bytes() == b"old"
    else:
        with fs.open_arrow_input(str(target)) as fh:
            assert pq.read_table(fh).equals(table)
    assert [p.name for p in target.parent.iterdir()] == ["r.parquet"]


def test_arrow_input_is_arrow_own_file_locally_and_fsspec_remotely(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        fs.open_arrow_input(str(tmp_path / "missing.parquet"))
    fs.write_bytes(str(tmp_path / "x"), b"PAR1")
    with fs.open_arrow_input(str(tmp_path / "x")) as fh:
        assert isinstance(fh, pa.NativeFile) and fh.read(4) == b"PAR1"
    uri = f"memory://fs-{uuid.uuid4().hex[:8]}/x"
    fs.write_bytes(uri, b"PAR1")
    with fs.open_arrow_input(uri) as fh:
        assert not isinstance(fh, pa.NativeFile) and fh.read(4) == b"PAR1"
