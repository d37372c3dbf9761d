from __future__ import annotations

import os
import time

import pytest

from services.serve.auth import AuthError, TokenStore


def test_missing_malformed_and_wrong_tokens():
    store = TokenStore(env_tokens=["alpha", "beta"])
    for header, status in [
        (None, 401),
        ("", 401),
        ("Basic alpha", 401),
        ("Bearer", 401),
        ("Bearer nope", 403),
    ]:
        with pytest.raises(AuthError) as err:
            store.check(header)
        assert err.value.status == status
        assert "alpha" not in err.value.reason and "nope" not in err.value.reason
    store.check("Bearer alpha")
    store.check("bearer beta")


def test_rotation_through_the_mounted_file(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("old\n")
    store = TokenStore(token_file=str(path), recheck_s=0)
    store.check("Bearer old")
    path.write_text("old\nnew\n")  # both valid during the rotation
    os.utime(path, (time.time() + 1, time.time() + 1))
    store.check("Bearer old")
    store.check("Bearer new")
    path.write_text("new\n")
    os.utime(path, (time.time() + 2, time.time() + 2))
    with pytest.raises(AuthError):
        store.check("Bearer old")
    store.check("Bearer new")


def test_no_tokens_configured_is_an_error(monkeypatch):
    monkeypatch.delenv("SERVE_AUTH_TOKENS", raising=False)
    monkeypatch.delenv("SERVE_AUTH_TOKENS_FILE", raising=False)
    with pytest.raises(RuntimeError, match="no Serve auth tokens"):
        TokenStore.from_env()
