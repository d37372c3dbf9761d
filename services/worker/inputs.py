"""What ``input_uri`` names: one file, a folder or prefix, a glob, or a list of them, resolved to
the files a batch reads, each with its format, compression, size, version and Hive partition
keys. A folder or glob is listed in one bulk call (one paged listing on an object store), never
one request per file.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from services.errors import BatchError, Failure
from services.worker.manifests import Compression, InputFormat

FORMAT_SUFFIXES: dict[str, InputFormat] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
COMPRESSION_SUFFIXES: dict[str, Compression] = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}
_GLOB_CHARS = re.compile(r"[*?\[]")
_PARTITION = re.compile(r"^([^=/]+)=([^/]*)$")


class InputError(BatchError):
    """An input file cannot be found or read."""


@dataclass
class FoundFile:
    uri: str
    format: InputFormat
    compression: Compression | None
    size: int
    version: str | None
    partition: dict[str, str] = field(default_factory=dict)


def split_suffix(name: str) -> tuple[InputFormat | None, Compression | None]:
    """(format, compression) from a file name: ``a.jsonl.gz`` is gzip-compressed JSONL."""
    stem, ext = posixpath.splitext(name.lower())
    compression = COMPRESSION_SUFFIXES.get(ext)
    if compression is not None:
        stem, ext = posixpath.splitext(stem)
    return FORMAT_SUFFIXES.get(ext), compression


def partition_keys(relative: str) -> dict[str, str]:
    """Hive-style ``key=value`` folders of a path relative to what was listed."""
    folders = relative.split("/")[:-1]
    return {m.group(1): m.group(2) for part in folders if (m := _PARTITION.match(part))}


def _hidden(relative: str) -> bool:
    # Spark's and Hive's convention: _SUCCESS, _metadata, .crc files and folders are not data.
    return any(part.startswith(("_", ".")) for part in relative.split("/"))


def _version(info: dict[str, Any]) -> str | None:
    """The store's own version of an object, as fsspec's backends name it."""
    for key in ("ETag", "etag", "generation", "md5Hash", "mtime", "LastModified", "updated", "created"):
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return None


def resolve(input_uri: str | list[str], input_format: InputFormat | None = None) -> list[FoundFile]:
    """The files ``input_uri`` names, in order (each entry's files sorted by path), without
    repeats. Raises ``InputError`` when one matches nothing, cannot be read, or a file's format
    is unknown, or when the files are of more than one format."""
    uris = [input_uri] if isinstance(input_uri, str) else input_uri
    found: dict[str, FoundFile] = {}
    for uri in uris:
        for file in _resolve_one(uri, input_format):
            found.setdefault(file.uri, file)
    files = list(found.values())
    formats = sorted({f.format for f in files})
    if len(formats) > 1:
        raise InputError(
            Failure.INPUT_UNREADABLE,
            f"the input mixes formats ({', '.join(formats)}): a batch reads one format; narrow "
            "'input_uri' (e.g. a glob such as *.parquet) or set 'input_format'",
        )
    return files


def _resolve_one(uri: str, input_format: InputFormat | None) -> list[FoundFile]:
    fs, path = fsspec.core.url_to_fs(uri)
    try:
        if wildcard := _GLOB_CHARS.search(path):
            base = path[: wildcard.start()].rsplit("/", 1)[0]
            listed = fs.glob(path, detail=True)
        else:
            info = fs.info(path)
            if info["type"] == "directory":
                base, listed = path.rstrip("/"), fs.find(path, detail=True)
            else:
                return [_file(fs, info, input_format)]
    except FileNotFoundError:
        raise InputError(Failure.INPUT_NOT_FOUND, f"input not found: {uri}") from None
    except PermissionError:
        raise InputError(Failure.ACCESS_DENIED, f"access denied reading {uri}") from None
    files = []
    for name in sorted(listed):
        info = listed[name]
        relative = name[len(base) :].lstrip("/")
        if info["type"] != "file" or _hidden(relative):
            continue
        if input_format is None and split_suffix(name)[0] is None:
            continue  # a folder may hold other files: only data files by their suffix
        files.append(_file(fs, info, input_format))
    if not files:
        raise InputError(
            Failure.INPUT_NOT_FOUND,
            f"no input files match {uri} (looked for "
            f"{input_format or ', '.join(sorted(set(FORMAT_SUFFIXES.values())))} files, "
            "also compressed .gz/.bz2/.zst; names starting with _ or . are skipped)",
        )
    return files


def _file(fs: Any, info: dict[str, Any], input_format: InputFormat | None) -> FoundFile:
    name: str = info["name"]
    fmt, compression = split_suffix(name)
    fmt = input_format or fmt
    if fmt is None:
        raise InputError(
            Failure.INPUT_UNREADABLE,
            f"cannot tell the format of {_uri(fs, name)} from its name: set 'input_format' "
            f"({', '.join(sorted(set(FORMAT_SUFFIXES.values())))})",
        )
    if fmt == "parquet" and compression is not None:
        raise InputError(
            Failure.INPUT_UNREADABLE,
            f"{_uri(fs, name)}: a Parquet file compresses its own pages; an outer "
            f"{compression} layer is not supported",
        )
    return FoundFile(
        uri=_uri(fs, name),
        format=fmt,
        compression=compression,
        size=int(info.get("size") or 0),
        version=_version(info),
        partition=partition_keys(name),
    )


def _uri(fs: Any, name: str) -> str:
    return name if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(name)
