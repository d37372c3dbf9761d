"""Repository paths the local stack, tests and benchmarks read.

Computed from this file (``services/local/``), so they hold wherever the repository is checked out.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DATASET = Path(__file__).resolve().parents[1] / "samples" / "iris-10k.jsonl"
