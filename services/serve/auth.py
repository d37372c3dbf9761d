"""Bearer-token check for the Serve ingress.

Ray Serve's HTTP port has no auth of its own. Valid tokens come from an env var
(comma-separated) and/or a mounted file (one per line, e.g. a Kubernetes Secret), so several
can be valid at once during a rotation. The file is re-read when it changes, so a rotated
Secret takes effect without a restart. Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field

from services.constants import AUTH_SCHEME, ENV_SERVE_TOKENS, ENV_SERVE_TOKENS_FILE
from services.errors import AuthCode
from services.token_file import TokenFile

EXPECTED = f"expected '{AUTH_SCHEME} <token>'"


class AuthError(Exception):
    """Raised with an HTTP status (401 missing/malformed, 403 wrong), a code and a token-free
    reason."""

    def __init__(self, status: int, code: AuthCode, reason: str):
        super().__init__(reason)
        self.status, self.code, self.reason = status, code, reason


def parse_tokens(text: str, sep: str | None = None) -> list[str]:
    return [t.strip() for t in text.split(sep) if t.strip() and not t.strip().startswith("#")]


@dataclass
class TokenStore:
    env_tokens: list[str] = field(default_factory=list, repr=False)
    token_file: str | None = None
    recheck_s: float = 1.0  # at most one stat of the file per interval, not one per request
    _file: TokenFile[list[str]] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.token_file:
            self._file = TokenFile(self.token_file, parse_tokens, [], self.recheck_s)

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

    def tokens(self) -> list[str]:
        return self.env_tokens + (self._file.get() if self._file else [])

    def check(self, header: str | None) -> None:
        if not header:
            raise AuthError(401, AuthCode.MISSING_HEADER, f"missing Authorization header: {EXPECTED}")
        scheme, _, presented = header.partition(" ")
        presented = presented.strip()
        if scheme.lower() != AUTH_SCHEME.lower() or not presented:
            raise AuthError(401, AuthCode.MALFORMED_HEADER, f"malformed Authorization header: {EXPECTED}")
        ok = False
        for token in self.tokens():  # check all: no early exit that times the match position
            ok |= hmac.compare_digest(presented.encode(), token.encode())
        if not ok:
            raise AuthError(403, AuthCode.INVALID_TOKEN, "invalid token")
