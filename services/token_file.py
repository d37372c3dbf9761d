"""A small secret file (e.g. a mounted Kubernetes Secret) re-read when it changes.

Both ends of the worker-to-Serve auth read their tokens this way, so a rotated Secret takes
effect without a restart. Stdlib only: the Serve image imports it too. Never logs the content.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class TokenFile(Generic[T]):
    """``get()`` is ``parse(content)`` of the file at ``path``, re-read when its mtime changes and
    at most every ``recheck_s`` seconds (0: on every call); ``default`` until it is first read.

    A missing file keeps the last content read: a Secret update swaps symlinks, so the file is
    briefly absent. Other errors (e.g. no permission) are raised."""

    def __init__(self, path: str, parse: Callable[[str], T], default: T, recheck_s: float = 0.0):
        self.path = path
        self._parse = parse
        self._value = default
        self._recheck_s = recheck_s
        self._mtime: float | None = None
        self._checked_at: float | None = None

    def get(self) -> T:
        now = time.monotonic()
        if self._checked_at is None or now - self._checked_at >= self._recheck_s:
            self._checked_at = now
            self._reload()
        return self._value

    def _reload(self) -> None:
        try:
            mtime = os.stat(self.path).st_mtime
            if mtime == self._mtime:
                return
            with open(self.path, encoding="utf-8") as fh:
                self._value = self._parse(fh.read())
            self._mtime = mtime
        except FileNotFoundError:
            pass  # keep the last good content (see the class docstring)

    def __repr__(self) -> str:
        return f"TokenFile({self.path!r})"  # the path, never the content
