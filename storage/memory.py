"""The process's memory allocator (glibc ``mallopt`` / ``malloc_trim``; a no-op on other C libraries).

Used by the flows (volume buffers go back to the operating system, :func:`configure_allocator`,
:func:`release_memory`) and by the guard's decode workers (every large block a mapping of its own,
so that their ``RLIMIT_AS`` cap sees it).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

__all__ = ["configure_allocator", "release_memory"]

#: glibc ``mallopt`` parameters (``malloc.h``): ``M_MMAP_THRESHOLD`` and ``M_ARENA_MAX``.
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8


def configure_allocator(*, mmap_threshold: int = 1 << 20, arena_max: int | None = None) -> bool:
    """Make freed volume-sized buffers go back to the operating system at once (glibc; a no-op elsewhere).

    By default glibc raises its mmap threshold each time a large mmapped block is freed (up to
    32 MiB): after the first volume, array buffers below that size come from the heap's arenas,
    one per thread, and what a busy moment (two volume chains and the Dask threads at once)
    puts there stays mapped at its high-water mark until ``malloc_trim`` finds it, piece by
    piece. A fixed threshold turns that adjustment off, so every buffer of at least
    ``mmap_threshold`` bytes is its own mapping and is unmapped when freed; ``arena_max``
    bounds the per-thread arenas (default: 2 per core). Called once per process, by the flows.

    Parameters
    ----------
    mmap_threshold : int, keyword-only
        Bytes; buffers of at least this size are mapped individually (glibc ``M_MMAP_THRESHOLD``).
    arena_max : int or None, keyword-only
        Most malloc arenas (glibc ``M_ARENA_MAX``); None is ``2 * os.cpu_count()``.

    Returns
    -------
    bool
        Whether the allocator took the settings (False where glibc is absent).
    """
    if mmap_threshold <= 0:
        raise ValueError(f"mmap_threshold must be a positive byte count, got {mmap_threshold!r}")
    if arena_max is not None and arena_max < 1:
        raise ValueError(f"arena_max must be at least 1, got {arena_max!r}")
    libc = _libc()
    if libc is None:
        return False
    arenas = arena_max if arena_max is not None else 2 * (os.cpu_count() or 1)
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) & bool(libc.mallopt(_M_ARENA_MAX, arenas))


def release_memory() -> None:
    """Hand the heap's free pages back to the operating system (glibc ``malloc_trim``; a no-op elsewhere).

    A volume's arrays are freed when its step ends, but glibc keeps the freed pages in its
    arenas: a long-lived process (a served worker, a soak) would otherwise stay at the
    high-water mark of the largest volume it ever held (soak: 790 -> 1,297 MiB after the first
    run on a larger patient, flat afterwards). Called after each computed volume chain and at the
    end of each flow.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    """The C library when it is glibc (has ``malloc_trim`` and ``mallopt``), looked up once, else None.

    Once: ``ctypes.util.find_library`` runs ``ldconfig`` on every call.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):  # not glibc
        return None
    return libc


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None when absent."""
    libc = _libc()
    return None if libc is None else libc.malloc_trim
