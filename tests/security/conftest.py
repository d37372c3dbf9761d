"""Security tests reuse the fault tier's worker-process fixture."""

from tests.faults.conftest import spawn_worker

__all__ = ["spawn_worker"]
