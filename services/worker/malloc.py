"""glibc's allocator, set for a long-lived worker whose batches allocate and free the same
buffers over and over: one arena, the heap's free pages handed back every few parts, and Arrow
allocating from the same heap.

The glibc calls are no-ops where the C library is not glibc (nothing to tune there)."""

from __future__ import annotations

import ctypes
import functools
import os
import sys

from services.constants import ENV_ARROW_DEFAULT_MEMORY_POOL

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def limit_malloc_arenas(arenas: int = 1) -> bool:
    """One glibc malloc arena unless ``MALLOC_ARENA_MAX`` says otherwise. glibc gives threads
    arenas of their own (up to 8 per core); the worker's file-I/O threads and the Temporal
    core's each kept freed memory apart, and peak RSS grew with the batch. False where the C
    library is not glibc (nothing to do)."""
    if "MALLOC_ARENA_MAX" in os.environ:  # glibc reads it itself
        return False
    libc = _glibc()
    return libc is not None and libc.mallopt(M_ARENA_MAX, arenas) == 1


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the OS (``malloc_trim``). A shard's request bodies,
    replies and result lines (60-250 KB each, under glibc's mmap threshold) are freed in an
    order that leaves free memory scattered through the heap, where glibc keeps it, and RSS
    creeps up over a long batch. The shard pipeline calls it every few parts
    (``TRIM_EVERY_PARTS``). True if memory was released."""
    libc = _glibc()
    return libc is not None and libc.malloc_trim(0) == 1


def arrow_pool_before_import() -> bool:
    """Every Arrow buffer from malloc, the C++ library's own too, unless
    ``ARROW_DEFAULT_MEMORY_POOL`` says otherwise: sets that variable, which Arrow reads once,
    when ``pyarrow`` is imported. ``arrow_on_system_allocator`` after the import changes only
    the pool pyarrow's Python calls pass; Parquet decoding and IPC writing still took Arrow's
    bundled allocator (mimalloc), whose freed pages stayed resident apart from the heap
    ``release_free_memory`` trims. For the worker's entry point, before anything imports
    ``pyarrow``; True if the variable was set (False: the user's, or pyarrow already loaded)."""
    if ENV_ARROW_DEFAULT_MEMORY_POOL in os.environ or "pyarrow" in sys.modules:
        return False
    os.environ[ENV_ARROW_DEFAULT_MEMORY_POOL] = "system"
    return True


def arrow_on_system_allocator() -> bool:
    """Arrow's buffers (Parquet pages, record batches) from malloc unless
    ``ARROW_DEFAULT_MEMORY_POOL`` says otherwise, for a worker started without
    ``arrow_pool_before_import`` (in-process, or by a command that loaded pyarrow first): then
    only for pyarrow's Python calls. Arrow's bundled allocator keeps freed pages for reuse by
    its own arenas, apart from the heap ``release_free_memory`` trims: a Parquet worker's peak
    RSS then grew with the batch. True if the pool was changed."""
    import pyarrow as pa  # here: importing it chooses Arrow's pool (arrow_pool_before_import)

    if ENV_ARROW_DEFAULT_MEMORY_POOL in os.environ:  # Arrow reads it itself
        return False
    if pa.default_memory_pool().backend_name == "system":
        return False
    pa.set_memory_pool(pa.system_memory_pool())
    return True
