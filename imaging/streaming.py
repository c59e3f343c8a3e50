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

__all__ = [
    "plan_slab",
    "map_slabs",
    "gaussian_to_store",
    "histogram_store",
    "otsu_threshold_store",
    "label_to_store",
    "smooth_threshold_label",
]

#: Memory assumed for the interpreter and libraries (~0.27 GiB measured with numpy/scipy/dask/numba/zarr
#: imported) plus the store's codec buffers and thread arenas (~0.3 GiB measured with zarr 3, lz4 chunks of
#: 8-16 MB), in bytes. The slab plan fits the working set into ``memory_budget_bytes - BASE_BYTES``.
BASE_BYTES = 600 * 2**20


def _check_store(x: Any, name: str, write: bool = False) -> None:
    for attr in ("shape", "dtype", "__getitem__") + (("__setitem__",) if write else ()):
        if not hasattr(x, attr):
            raise TypeError(f"{name} must be an array-like with {attr}, got {type(x).__name__}")
    if len(x.shape) != 3:
        raise ValueError(f"{name} must be 3-D, got shape {tuple(x.shape)!r}")


def _align(dst: Any) -> int:
    chunks = getattr(dst, "chunks", None)
    if isinstance(chunks, tuple) and chunks and isinstance(chunks[0], (int, np.integer)):
        return int(chunks[0])
    return 1


def _sub_planes(dst: Any) -> int:
    """Planes written per store call: a multiple of the store's axis-0 chunk, at least 8."""
    align = _align(dst)
    return align * max(1, -(-8 // align))


def plan_slab(
    shape: Sequence[int],
    *,
    bytes_per_voxel: float,
    halo: int = 0,
    memory_budget_bytes: int,
    max_in_flight: int = 2,
    base_bytes: int = 0,
    align: int = 1,
    halo_bytes_per_voxel: float | None = None,
) -> int:
    """Largest slab thickness (planes) whose in-flight working set fits the budget.

    ``base_bytes + max_in_flight * plane_voxels * (slab * bytes_per_voxel + 2 * halo *
    halo_bytes_per_voxel) <= memory_budget_bytes`` (``halo_bytes_per_voxel`` defaults to
    ``bytes_per_voxel``), rounded down to a multiple of ``align`` (at least ``align``).

    Raises
    ------
    ValueError
        If not even one aligned slab fits.
    """
    plane = math.prod(int(s) for s in shape[1:])
    hb = bytes_per_voxel if halo_bytes_per_voxel is None else halo_bytes_per_voxel
    avail = memory_budget_bytes - base_bytes
    s = int((avail / (max_in_flight * plane) - 2 * halo * hb) // bytes_per_voxel)
    s = min(s, int(shape[0]))
    if align > 1 and s < int(shape[0]):
        s = (s // align) * align
    if s < 1:
        need = base_bytes + max_in_flight * plane * (align * bytes_per_voxel + 2 * halo * hb)
        raise ValueError(
            f"memory_budget_bytes={memory_budget_bytes} is too small for {max_in_flight} slab(s) of {align} planes "
            f"of {tuple(shape[1:])} (needs about {int(need)} bytes)"
        )
    return s


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


def _resolve_slab(
    src: Any, dst: Any | None, slab: int | None, memory_budget_bytes: int | None, bytes_per_voxel: float, halo: int,
    max_in_flight: int, halo_bytes_per_voxel: float | None = None, fixed_planes: float = 0.0,
) -> int:
    """Slab thickness: explicit, or planned from the budget (``fixed_planes`` = plane-voxel bytes per slab
    that do not grow with the slab, e.g. a sub-slab output buffer)."""
    align = _align(dst) if dst is not None else 1
    if slab is not None:
        if slab < 1:
            raise ValueError(f"slab must be >= 1, got {slab!r}")
        if align > 1 and slab % align and slab < int(src.shape[0]):
            raise ValueError(f"slab={slab} must be a multiple of the output's axis-0 chunk size {align}")
        return int(slab)
    if memory_budget_bytes is None:
        # default: about 256 MiB per slab
        plane = math.prod(int(s) for s in src.shape[1:])
        s = max(1, int(256 * 2**20 // (plane * bytes_per_voxel)))
        return max(align, (s // align) * align)
    plane = math.prod(int(v) for v in src.shape[1:])
    base = BASE_BYTES + int(max_in_flight * fixed_planes * plane)
    return plan_slab(src.shape, bytes_per_voxel=bytes_per_voxel, halo=halo, memory_budget_bytes=memory_budget_bytes,
                     max_in_flight=max_in_flight, base_bytes=base, align=align, halo_bytes_per_voxel=halo_bytes_per_voxel)


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
    from imaging.preprocess import sigma_voxels

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


def label_to_store(
    src: Any,
    dst: Any,
    *,
    connectivity: int = 1,
    min_size: int = 0,
    threshold: float | None = None,
    slab: int | None = None,
    memory_budget_bytes: int | None = None,
    n_threads: int | None = None,
    max_in_flight: int | None = None,
) -> int:
    """Connected components of ``src > threshold`` (or ``src != 0``) written to ``dst`` (int32).

    Pass 1, per slab: read ``src`` in sub-slabs into a boolean mask, label the mask
    into a compact run table (compiled run-length union-find), give its labels a
    global offset, write them to ``dst`` sub-slab by sub-slab, and unite labels across
    each pair of facing planes (union-find over all provisional labels). Pass 2
    rewrites ``dst`` through one lookup table (slabs whose labels do not change are
    skipped). The result equals ``scipy.ndimage.label`` of the whole mask (raster-order
    numbering), with components smaller than ``min_size`` removed.

    Returns
    -------
    int
        Number of components.
    """
    _check_store(src, "src")
    _check_store(dst, "dst", write=True)
    if tuple(src.shape) != tuple(dst.shape):
        raise ValueError(f"dst shape {tuple(dst.shape)} does not match src shape {tuple(src.shape)}")
    if np.dtype(dst.dtype) != np.dtype(np.int32):
        raise TypeError(f"dst must have dtype int32, got {dst.dtype}")
    n0, n1, n2 = (int(v) for v in src.shape)
    n_threads = K.default_threads() if n_threads is None else int(n_threads)
    mif = n_threads if max_in_flight is None else int(max_in_flight)
    sub = _sub_planes(dst)
    isz = np.dtype(src.dtype).itemsize
    # per slab plane: bool mask (1) + run table (~1); fixed: one src sub-slab + one int32 sub-slab (+ encode copy)
    slab = _resolve_slab(src, dst, slab, memory_budget_bytes, 2.0, 0, mif, fixed_planes=sub * (isz + 8.0))
    merger = S.ComponentMerger(connectivity)
    faces: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    ranges: dict[int, tuple[int, int]] = {}

    def pass1(z0: int, z1: int) -> tuple[int, int, int, tuple[np.ndarray, np.ndarray]]:
        mask = np.empty((z1 - z0, n1, n2), dtype=bool)
        for a in range(z0, z1, sub):
            b = min(z1, a + sub)
            blk = np.asarray(src[a:b])
            if threshold is not None:
                np.greater(blk, threshold, out=mask[a - z0 : b - z0])
            else:
                np.not_equal(blk, 0, out=mask[a - z0 : b - z0])
            del blk
        (row_ptr, rs, re, rl), lut, n = K.label_slab_runs(mask, merger.connectivity)
        del mask
        counts, first = K.runs_stats(row_ptr, rs, re, rl, lut, n, z0, n1, n2)
        offset = merger.add_block(n, counts, first)
        if offset + n >= 2**31:
            raise ValueError("more than 2**31 provisional labels; use a coarser mask")
        buf = np.empty((min(sub, z1 - z0), n1, n2), dtype=np.int32)
        for a in range(z0, z1, sub):
            b = min(z1, a + sub)
            K.runs_to_planes(buf[: b - a], a - z0, row_ptr, rs, re, rl, lut, offset)
            dst[a:b] = buf[: b - a]
        f0 = np.empty((1, n1, n2), dtype=np.int32)
        f1 = np.empty((1, n1, n2), dtype=np.int32)
        K.runs_to_planes(f0, 0, row_ptr, rs, re, rl, lut, offset)
        K.runs_to_planes(f1, z1 - z0 - 1, row_ptr, rs, re, rl, lut, offset)
        return z0, offset, n, (f0[0], f1[0])

    pending: deque[tuple[int, Future[Any]]] = deque()
    bounds = [(z0, min(n0, z0 + slab)) for z0 in range(0, n0, slab)]

    def done1(k: int, res: tuple[int, int, int, tuple[np.ndarray, np.ndarray]]) -> None:
        _, offset, n, face = res
        ranges[k] = (offset, n)
        faces[k] = face
        if k - 1 in faces:
            merger.union_planes(faces[k - 1][1], face[0])
            del faces[k - 1]

    with ThreadPoolExecutor(max_workers=min(n_threads, mif)) as ex:
        for k, (z0, z1) in enumerate(bounds):
            while len(pending) >= mif:
                kk, fut = pending.popleft()
                done1(kk, fut.result())
            pending.append((k, ex.submit(pass1, z0, z1)))
        while pending:
            kk, fut = pending.popleft()
            done1(kk, fut.result())
    lut_g, n_final = merger.finish(int(min_size))

    def pass2(k: int) -> None:
        z0, z1 = bounds[k]
        offset, n = ranges[k]
        if n == 0 or np.array_equal(lut_g[offset + 1 : offset + n + 1], np.arange(offset + 1, offset + n + 1)):
            return  # nothing to rewrite
        buf = np.empty((min(sub, z1 - z0), n1, n2), dtype=np.int32)
        for a in range(z0, z1, sub):
            b = min(z1, a + sub)
            blk = np.ascontiguousarray(dst[a:b])
            K.apply_lut(blk.reshape(-1), 0, lut_g, buf[: b - a].reshape(-1))
            dst[a:b] = buf[: b - a]

    with ThreadPoolExecutor(max_workers=n_threads) as ex:
        for f in [ex.submit(pass2, k) for k in range(len(bounds))]:
            f.result()
    return n_final


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
