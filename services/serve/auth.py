"""Bearer-token check for the Serve ingress.

Ray Serve's HTTP port has no auth of its own. Valid tokens come from an env var
(comma-separated) and/or a mounted file (one per line, e.g. a Kubernetes Secret), so several
can be valid at once during a rotation. The file is re-read when it changes, so a rotated
Secret takes effect without a restart. Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import os
import time
from dataclasses import dataclass, field

from services.constants import AUTH_SCHEME, ENV_SERVE_TOKENS, ENV_SERVE_TOKENS_FILE


class AuthError(Exception):
    """Raised with an HTTP status (401 missing/malformed, 403 wrong) and a token-free reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def parse_tokens(text: str, sep: str | None = None) -> list[str]:
    return [t.strip() for t in text.split(sep) if t.strip() and not t.strip().startswith("#")]


@dataclass
class TokenStore:
    env_tokens: list[str] = field(default_factory=list)
    token_file: str | None = None
    recheck_s: float = 1.0
    _file_tokens: list[str] = field(default_factory=list)
    _file_mtime: float | None = None
    _checked_at: float = 0.0

    @classmethod
    def from_env(cls) -> TokenStore:
        store = cls(
            env_tokens=parse_tokens(os.environ.get(ENV_SERVE_TOKENS, ""), ","),
            token_file=os.environ.get(ENV_SERVE_TOKENS_FILE) or None,
        )
        if not store.tokens():
            raise RuntimeError(
                f"no Serve auth tokens configured: set {ENV_SERVE_TOKENS} or {ENV_SERVE_TOKENS_FILE}"
            )
        return store

    def _reload_file(self) -> None:
        now = time.monotonic()
        if not self.token_file or now - self._checked_at < self.recheck_s:
            return
        self._checked_at = now
        try:
            mtime = os.stat(self.token_file).st_mtime
        except FileNotFoundError:
            return  # keep the last good tokens: a Secret update swaps symlinks atomically
        if mtime != self._file_mtime:
            with open(self.token_file, encoding="utf-8") as fh:
                self._file_tokens = parse_tokens(fh.read())
            self._file_mtime = mtime

    def tokens(self) -> list[str]:
        self._reload_file()
        return self.env_tokens + self._file_tokens

    def check(self, header: str | None) -> None:
        if not header:
            raise AuthError(401, f"missing Authorization header: expected '{AUTH_SCHEME} <token>'")
        scheme, _, presented = header.partition(" ")
        presented = presented.strip()
        if scheme.lower() != AUTH_SCHEME.lower() or not presented:
            raise AuthError(401, f"malformed Authorization header: expected '{AUTH_SCHEME} <token>'")
        ok = False
        for token in self.tokens():  # check all: no early exit that times the match position
            ok |= hmac.compare_digest(presented.encode(), token.encode())
        if not ok:
            raise AuthError(403, "invalid token")
