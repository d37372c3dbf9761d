"""The workflow's input contract."""

from __future__ import annotations

import pytest

from services.worker.contracts import INLINE_LIMIT_BYTES, BatchInferenceInput


def test_oversize_inline_input_is_refused_with_advice():
    records = [{"id": i, "text": "x" * 1000} for i in range(INLINE_LIMIT_BYTES // 1000 + 10)]
    with pytest.raises(ValueError, match="Write them to a JSONL file"):
        BatchInferenceInput(records=records)
