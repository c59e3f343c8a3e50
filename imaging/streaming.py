"""Out-of-core processing with bounded memory: slabs along axis 0, a few in flight.

The functions here take *array-likes*: anything with ``shape``, ``dtype``,
``__getitem__`` and (for outputs) ``__setitem__`` -- a numpy array, a ``numpy.memmap``
or a zarr array (this module does not import zarr). They read one slab of whole
axis-0 planes (plus a halo for filters) at a time, compute it with the compiled
kernels of :mod:`imaging.kernels`, write the slab to the output and drop it.
At most ``max_in_flight`` slabs exist at once (each on its own worker thread), so
peak memory is about ``max_in_flight x slab bytes`` whatever the volume size -- the
threaded dask scheduler does not bound memory on its own.

If the output has a ``chunks`` attribute (zarr), slab boundaries are aligned to its
axis-0 chunk size so no two threads ever write the same chunk.

Pipeline: :func:`smooth_threshold_label` = Gaussian -> Otsu threshold from a chunked
histogram -> connected components with a union-find merge across slab faces.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from imaging import kernels as K
from imaging import segment as S
from imaging.voxelgrid import (
    BASE_BYTES,  # noqa: F401  (public: the slab plan's fixed allowance)
    _check_store,
    _resolve_slab,
    _sub_planes,
    label_to_store,
    plan_slab,
    sigma_voxels,
)

__all__ = [
    "plan_slab",
    "map_slabs",
    "gaussian_to_store",
    "histogram_store",
    "otsu_threshold_store",
    "label_to_store",
    "smooth_threshold_label",
]


def map_slabs(
    fn: Callable[[np.ndarray, int, int, int], tuple[np.ndarray | None, Any]],
    src: Any,
    dst: Any | None,
    *,
    slab: int,
    halo: int = 0,
    n_threads: int | None = None,
    max_in_flight: int | None = None,
    on_done: Callable[[int, int, int, Any], None] | None = None,
) -> None:
    """Run ``fn`` over axis-0 slabs with at most ``max_in_flight`` slabs alive.

    For slab ``[z0, z1)`` the worker reads ``block = src[lo:hi]`` with
    ``lo = max(0, z0 - halo)``, ``hi = min(n0, z1 + halo)`` and calls
    ``fn(block, lo, z0, z1) -> (out, extra)``; ``out`` (if not None) is written to
    ``dst[z0:z1]`` by the worker. ``on_done(k, z0, z1, extra)`` is then called in the
    caller's thread, in slab order.
    """
    _check_store(src, "src")
    if dst is not None:
        _check_store(dst, "dst", write=True)
    n0 = int(src.shape[0])
    if slab < 1:
        raise ValueError(f"slab must be >= 1, got {slab!r}")
    n_threads = K.default_threads() if n_threads is None else int(n_threads)
    max_in_flight = n_threads if max_in_flight is None else int(max_in_flight)
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight!r}")
    bounds = [(z0, min(n0, z0 + slab)) for z0 in range(0, n0, slab)]

    def work(z0: int, z1: int) -> Any:
        lo, hi = max(0, z0 - halo), min(n0, z1 + halo)
        block = np.asarray(src[lo:hi])
        out, extra = fn(block, lo, z0, z1)
        del block
        if out is not None:
            assert dst is not None
            dst[z0:z1] = out
        return extra

    pending: deque[tuple[int, int, int, Future[Any]]] = deque()
    with ThreadPoolExecutor(max_workers=min(n_threads, max_in_flight)) as ex:
        for k, (z0, z1) in enumerate(bounds):
            while len(pending) >= max_in_flight:
                kk, a, b, fut = pending.popleft()
                extra = fut.result()
                if on_done is not None:
                    on_done(kk, a, b, extra)
            pending.append((k, z0, z1, ex.submit(work, z0, z1)))
        while pending:
            kk, a, b, fut = pending.popleft()
            extra = fut.result()
            if on_done is not None:
                on_done(kk, a, b, extra)


def gaussian_to_store(
    src: Any,
    dst: Any,
    *,
    spacing: Sequence[float],
    sigma_mm: float | Sequence[float],
    truncate: float = 4.0,
    mode: str = "reflect",
    cval: float = 0.0,
    slab: int | None = None,
    memory_budget_bytes: int | None = None,
    n_threads: int | None = None,
    max_in_flight: int | None = None,
) -> tuple[float, float]:
    """Gaussian smoothing from one array-like to another, slab by slab (float32 output).

    Equals ``scipy.ndimage.gaussian_filter(src, sigma_mm / spacing, mode=mode)`` within
    float32 rounding. Returns ``(min, max)`` of the output (useful for histograms).
    """
    _check_store(src, "src")
    _check_store(dst, "dst", write=True)
    if tuple(src.shape) != tuple(dst.shape):
        raise ValueError(f"dst shape {tuple(dst.shape)} does not match src shape {tuple(src.shape)}")
    sig = sigma_voxels(spacing, sigma_mm)
    ws = [K.gaussian_weights(s, truncate) for s in sig]
    halo = len(ws[0]) // 2
    n0, n1, n2 = (int(v) for v in src.shape)
    if halo > n0:
        raise ValueError(f"volume has {n0} planes, fewer than the Gaussian radius {halo}")
    maps = [K.boundary_index(n, len(w) // 2, len(w) // 2, mode) for n, w in zip((n0, n1, n2), ws, strict=True)]
    n_threads = K.default_threads() if n_threads is None else int(n_threads)
    mif = n_threads if max_in_flight is None else int(max_in_flight)
    # memory per in-flight slab: the input block (slab + 2 halo planes) plus one float32 sub-slab
    # of `sub` planes being written (and the store's encoded copy of it)
    isz = np.dtype(src.dtype).itemsize
    sub = _sub_planes(dst)
    slab = _resolve_slab(src, dst, slab, memory_budget_bytes, isz, halo, mif, fixed_planes=sub * 8.0)
    lo_hi = [math.inf, -math.inf]

    def fn(block: np.ndarray, lo: int, z0: int, z1: int) -> tuple[None, tuple[float, float]]:
        blk = np.ascontiguousarray(block)
        out = np.empty((min(sub, z1 - z0), n1, n2), dtype=np.float32)
        mn, mx = math.inf, -math.inf
        for a in range(z0, z1, sub):
            b = min(z1, a + sub)
            o = out[: b - a]
            K.gaussian_slices(blk, lo, o, a, b, ws[0], maps[0], ws[1], maps[1], ws[2], maps[2], cval)
            mn, mx = min(mn, float(o.min())), max(mx, float(o.max()))
            dst[a:b] = o
        return None, (mn, mx)

    def done(k: int, z0: int, z1: int, mm: tuple[float, float]) -> None:
        lo_hi[0] = min(lo_hi[0], mm[0])
        lo_hi[1] = max(lo_hi[1], mm[1])

    map_slabs(fn, src, None, slab=slab, halo=halo, n_threads=n_threads, max_in_flight=mif, on_done=done)
    return float(lo_hi[0]), float(lo_hi[1])


def histogram_store(src: Any, *, bins: int = 256, mask: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`imaging.segment.histogram` of an array-like, read in bounded slabs."""
    _check_store(src, "src")
    return S.histogram(src, mask=mask, bins=bins)


def otsu_threshold_store(src: Any, *, bins: int = 256, mask: Any = None, value_range: tuple[float, float] | None = None) -> float:
    """:func:`imaging.segment.otsu_threshold` of an array-like, read in bounded slabs."""
    _check_store(src, "src")
    return S.otsu_threshold(src, mask=mask, bins=bins, value_range=value_range)


def smooth_threshold_label(
    src: Any,
    smoothed: Any,
    labels: Any,
    *,
    spacing: Sequence[float],
    sigma_mm: float,
    connectivity: int = 1,
    min_size: int = 0,
    bins: int = 256,
    memory_budget_bytes: int | None = None,
    n_threads: int | None = None,
    max_in_flight: int | None = None,
) -> dict[str, Any]:
    """Out-of-core pipeline: Gaussian -> Otsu (chunked histogram) -> labels, all slab-streamed.

    Parameters
    ----------
    src : array-like (n0, n1, n2)
        Input volume (e.g. an int16 zarr array).
    smoothed : writable array-like float32 (n0, n1, n2)
    labels : writable array-like int32 (n0, n1, n2)
    spacing, sigma_mm :
        Voxel size and Gaussian sigma in mm.
    memory_budget_bytes : int, optional
        Slab thickness is chosen so that the working set stays under this budget.

    Returns
    -------
    dict
        ``threshold``, ``n_labels``, ``smoothed_range`` and per-stage ``seconds``.
    """
    t0 = time.perf_counter()
    rng = gaussian_to_store(src, smoothed, spacing=spacing, sigma_mm=sigma_mm, memory_budget_bytes=memory_budget_bytes,
                            n_threads=n_threads, max_in_flight=max_in_flight)
    t1 = time.perf_counter()
    thr = otsu_threshold_store(smoothed, bins=bins, value_range=rng)
    t2 = time.perf_counter()
    n = label_to_store(smoothed, labels, connectivity=connectivity, min_size=min_size, threshold=thr,
                       memory_budget_bytes=memory_budget_bytes, n_threads=n_threads, max_in_flight=max_in_flight)
    t3 = time.perf_counter()
    return {
        "threshold": thr,
        "n_labels": n,
        "smoothed_range": rng,
        "seconds": {"gaussian": t1 - t0, "otsu": t2 - t1, "label": t3 - t2, "total": t3 - t0},
    }
