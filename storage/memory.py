"""The process's memory: the allocator (glibc ``mallopt`` / ``malloc_trim``; a no-op on other C libraries) and the cyclic garbage collector.

Used by the flows (volume buffers go back to the operating system, :func:`configure_allocator`,
:func:`release_memory`; the start-up heap kept out of the collector's full passes,
:func:`freeze_startup_heap`), by the command line (:func:`pause_collector` while it imports and
starts Prefect) and by the guard's decode workers (every large block a mapping of its own, so
that their ``RLIMIT_AS`` cap sees it).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["configure_allocator", "release_memory", "pause_collector", "resume_collector", "collector_paused",
           "freeze_startup_heap"]

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


#: Whether :func:`pause_collector` turned the cyclic collector off (and :func:`freeze_startup_heap` is to turn it on).
_PAUSED = False


def pause_collector() -> bool:
    """Turn the cyclic garbage collector off until the first flow starts (:func:`freeze_startup_heap`).

    The command line imports Prefect, pydantic, SQLAlchemy and the science stack and starts
    Prefect's API before a flow's body runs: hundreds of thousands of long-lived objects, and
    every full collection walks them all (4-7 of them, 0.02-0.20 s each and growing, before a
    ``medflow ingest`` reached its flow). Objects made while importing are not garbage. Returns
    whether it paused the collector: False when it was off already (the caller's choice is kept).
    """
    global _PAUSED
    if not gc.isenabled():
        return False
    gc.disable()
    _PAUSED = True
    return True


def resume_collector() -> None:
    """Turn the collector back on if :func:`pause_collector` turned it off (and nothing resumed it since)."""
    global _PAUSED
    if _PAUSED:
        _PAUSED = False
        gc.enable()


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """:func:`pause_collector` for the block; on leaving it (a flow never started, an error) the collector runs again."""
    paused = pause_collector()
    try:
        yield
    finally:
        if paused:
            resume_collector()


def freeze_startup_heap() -> None:
    """Keep every object alive now out of the cyclic collector's full passes (``gc.freeze``), once per process.

    Called when a flow starts: what exists then (modules, classes, Prefect's and the libraries'
    state) lives as long as the process, yet every full collection walked it again (0.24 s each
    in a ``medflow ingest`` process, one of them inside its 3.3 s flow). Frozen objects are
    still freed by reference counting; only cycles among them are never collected (what is
    unreachable at this moment: a bounded, one-time amount per process). Then resumes a
    collector :func:`pause_collector` paused.
    """
    if gc.get_freeze_count() == 0:
        gc.freeze()
    resume_collector()


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
