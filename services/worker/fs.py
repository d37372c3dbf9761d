"""File I/O through fsspec: local paths or any fsspec URL (``s3://``, ``gs://``, ...).

Every write is atomic: temp file then rename on local disks, a single object PUT (committed on
close) on object stores, so a reader sees the old content or the whole new one.
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from collections.abc import Iterator
from typing import IO

import fsspec
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

COPY_CHUNK = 1 << 20


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def is_local(uri: str) -> bool:
    return isinstance(fsspec.core.url_to_fs(uri)[0], LocalFileSystem)


class AtomicFile:
    """A local file written over time and published whole by ``commit`` (synced, then renamed
    over ``uri`` from a temp file in ``temp_dir``, default beside it, on the same disk), or
    never (``discard``).

    With ``arrow`` the file is Arrow's own (``pa.OSFile``), for Arrow's writers: they write a
    Parquet file in many small pieces, and through a Python file each piece waits for the GIL,
    which the worker's event loop holds most of the time (the writes then took seconds)."""

    def __init__(self, uri: str, temp_dir: str | None = None, *, arrow: bool = False):
        path = fsspec.core.url_to_fs(uri)[1]
        folder = fsspec.core.url_to_fs(temp_dir)[1] if temp_dir else os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._path = path
        self._tmp = os.path.join(folder, f"{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
        self.file: IO[bytes] | pa.NativeFile = pa.OSFile(self._tmp, "wb") if arrow else open(self._tmp, "wb")

    def commit(self) -> None:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self._tmp, self._path)
        finally:
            self.discard()

    def discard(self) -> None:
        """Drop what was written (nothing, after ``commit``)."""
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


@contextlib.contextmanager
def atomic_writer(uri: str, *, arrow: bool = False) -> Iterator[IO[bytes] | pa.NativeFile]:
    """Open ``uri`` for writing so that readers see the old content or the whole new one;
    ``arrow``: for Arrow's writers (``AtomicFile``)."""
    if is_local(uri):
        file = AtomicFile(uri, arrow=arrow)
        try:
            yield file.file
            file.commit()
        finally:
            file.discard()
    else:
        fs, path = fsspec.core.url_to_fs(uri)
        with fs.open(path, "wb") as fh:  # object stores commit the object on close
            yield fh


def write_bytes(uri: str, data: bytes) -> None:
    with atomic_writer(uri) as fh:
        fh.write(data)


def read_bytes(uri: str) -> bytes:
    with fsspec.open(uri, "rb") as fh:
        return fh.read()


def concat(uri: str, sources: list[str], missing_ok: bool = False) -> None:
    """Write the concatenation of ``sources`` to ``uri`` atomically, streaming. With
    ``missing_ok`` a source that does not exist counts as empty."""
    with atomic_writer(uri) as out:
        for src in sources:
            try:
                fh = fsspec.open(src, "rb").open()
            except FileNotFoundError:
                if missing_ok:
                    continue
                raise
            with fh:
                while chunk := fh.read(COPY_CHUNK):
                    out.write(chunk)


def count_lines(uri: str) -> int:
    with fsspec.open(uri, "rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(COPY_CHUNK), b""))


def remove(uri: str, recursive: bool = False) -> None:
    fs, path = fsspec.core.url_to_fs(uri)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=recursive)


def exists(uri: str) -> bool:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs.exists(path)


def glob(uri: str, pattern: str) -> list[str]:
    """Paths under ``uri`` matching ``pattern``, as URIs of the same filesystem."""
    fs, path = fsspec.core.url_to_fs(uri)
    return [fs.unstrip_protocol(found) for found in fs.glob(join(path, pattern))]


def open_input(uri: str) -> IO[bytes]:
    """A binary file with the whole ``io`` reading API (``readline(limit)``, iteration, seek)."""
    fs, path = fsspec.core.url_to_fs(uri)
    if isinstance(fs, LocalFileSystem):
        # The built-in reader: fsspec's local wrapper adds a Python call to every readline.
        return open(path, "rb")
    # fsspec's remote files (S3, GCS, ...) have no readline(limit); io's buffer gives it, over
    # their own ranged reads.
    return io.BufferedReader(fs.open(path, "rb"), buffer_size=COPY_CHUNK)  # type: ignore[arg-type]


def open_arrow_input(uri: str) -> IO[bytes] | pa.NativeFile:
    """A file for Arrow's readers: a local one as Arrow's own, whose reads never wait for the
    GIL (see ``AtomicFile``); a remote one as ``open_input``'s."""
    fs, path = fsspec.core.url_to_fs(uri)
    if isinstance(fs, LocalFileSystem):
        return pa.OSFile(path)
    return open_input(uri)
