from __future__ import annotations

import os
import time

from services.token_file import TokenFile


def _touch(path, text: str, ahead_s: float) -> None:
    path.write_text(text)
    os.utime(path, (time.time() + ahead_s, time.time() + ahead_s))


def test_default_until_read_then_reread_on_change_and_kept_while_missing(tmp_path):
    path = tmp_path / "token"
    file = TokenFile(str(path), str.strip, "from-env")
    assert file.get() == "from-env"  # not there yet
    _touch(path, "one\n", 1)
    assert file.get() == "one"
    _touch(path, "two\n", 2)
    assert file.get() == "two"
    path.unlink()  # a Secret update swapping its symlink
    assert file.get() == "two"
    _touch(path, "three\n", 3)
    assert file.get() == "three"
    assert "three" not in repr(file)


def test_recheck_interval_limits_rereads(tmp_path):
    path = tmp_path / "token"
    _touch(path, "one", 1)
    file = TokenFile(str(path), str.strip, "", recheck_s=3600)
    assert file.get() == "one"
    _touch(path, "two", 2)
    assert file.get() == "one"  # not rechecked within the interval
