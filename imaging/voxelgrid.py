"""The lowest per-voxel layer: grid spacing helpers, slab planning and out-of-core labelling.

:mod:`imaging.preprocess`, :mod:`imaging.segment` and :mod:`imaging.streaming` all build on
these helpers; this module imports only numpy and :mod:`imaging.kernels`, so the science
modules above it form no import cycle (``tests/test_boundaries.py`` checks).

Array-likes are anything with ``shape``, ``dtype``, ``__getitem__`` (and ``__setitem__``
for outputs): numpy arrays, memmaps, zarr arrays (this module does not import zarr).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from imaging import kernels as K

__all__ = ["sigma_voxels", "spacing3", "plan_slab", "label_to_store", "ComponentMerger", "block_depth"]

#: Memory assumed for the interpreter and libraries (~0.27 GiB measured with numpy/scipy/dask/numba/zarr
#: imported) plus the store's codec buffers and thread arenas (~0.3 GiB measured with zarr 3, lz4 chunks of
#: 8-16 MB), in bytes. The slab plan fits the working set into ``memory_budget_bytes - BASE_BYTES``.
BASE_BYTES = 600 * 2**20


def spacing3(spacing: Any, name: str = "spacing") -> tuple[float, float, float]:
    try:
        sp = tuple(float(s) for s in spacing)
    except TypeError:
        sp = (float(spacing),) * 3
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"{name} must be 3 positive finite mm values, got {spacing!r}")
    return sp  # type: ignore[return-value]



def sigma_voxels(spacing: Sequence[float], sigma_mm: float | Sequence[float]) -> tuple[float, float, float]:
    """Gaussian sigma in voxels per axis from a sigma in mm (scalar or per axis)."""
    sp = spacing3(spacing)
    try:
        sm = tuple(float(s) for s in sigma_mm)  # type: ignore[union-attr]
    except TypeError:
        sm = (float(sigma_mm),) * 3  # type: ignore[arg-type]
    if len(sm) != 3 or not all(math.isfinite(s) and s >= 0 for s in sm) or not any(s > 0 for s in sm):
        raise ValueError(f"sigma_mm must be > 0 (scalar or 3 values >= 0), got {sigma_mm!r}")
    return tuple(s / p for s, p in zip(sm, sp, strict=True))  # type: ignore[return-value]



def _connectivity(connectivity: int, ndim: int = 3) -> int:
    if connectivity not in range(1, ndim + 1):
        raise ValueError(f"connectivity must be in 1..{ndim}, got {connectivity!r}")
    return int(connectivity)



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


def _plane_offsets(connectivity: int) -> np.ndarray:
    """In-plane offsets (d1, d2) of neighbours one step across a face, for scipy connectivity 1..3."""
    offs = [(d1, d2) for d1 in (-1, 0, 1) for d2 in (-1, 0, 1) if 1 + (d1 != 0) + (d2 != 0) <= connectivity]
    return np.asarray(offs, dtype=np.int64)


class ComponentMerger:
    """Union-find over the provisional labels of many blocks (thread-safe).

    Each block registers its local label count, per-label voxel counts and global
    raster index of the first voxel (:func:`imaging.kernels.label_stats`) and gets
    an offset: its global provisional labels are ``local + offset``. Facing planes
    across block boundaries are united with :meth:`union_planes`. :meth:`finish`
    returns the lookup table ``provisional -> final`` where final labels are
    numbered in raster order of first voxels (scipy's order) and components smaller
    than ``min_size`` map to 0.
    """

    def __init__(self, connectivity: int) -> None:
        self.connectivity = _connectivity(connectivity)
        self.offsets2d = _plane_offsets(self.connectivity)
        self._lock = threading.Lock()
        self.parent = np.arange(1024, dtype=np.int64)
        self.total = 0
        self._counts: list[tuple[int, np.ndarray]] = []
        self._first: list[tuple[int, np.ndarray]] = []

    def add_block(self, n: int, counts: np.ndarray, first: np.ndarray) -> int:
        with self._lock:
            offset = self.total
            need = offset + n + 1
            if need > self.parent.size:
                size = max(need, 2 * self.parent.size)
                self.parent = np.concatenate([self.parent, np.arange(self.parent.size, size, dtype=np.int64)])
            self.total += n
            self._counts.append((offset, counts[1:]))
            self._first.append((offset, first[1:]))
            return offset

    def union_planes(self, left: np.ndarray, right: np.ndarray) -> int:
        """Unite provisional labels of ``left[i, j]`` with ``right[i + d1, j + d2]`` (global labels, 0 = background)."""
        if left.shape != right.shape:
            raise ValueError(f"facing planes differ in shape: {left.shape} vs {right.shape}")
        with self._lock:
            return int(K.uf_union_planes(self.parent, np.ascontiguousarray(left, dtype=np.int64),
                                         np.ascontiguousarray(right, dtype=np.int64), self.offsets2d))

    def finish(self, min_size: int = 0) -> tuple[np.ndarray, int]:
        """Return ``(lut, n)``: ``lut[provisional]`` is the final label (int32), ``n`` the component count."""
        n_prov = self.total
        counts = np.zeros(n_prov + 1, dtype=np.int64)
        first = np.full(n_prov + 1, np.iinfo(np.int64).max, dtype=np.int64)
        for off, c in self._counts:
            counts[off + 1 : off + 1 + c.size] = c
        for off, f in self._first:
            first[off + 1 : off + 1 + f.size] = np.where(f < 0, np.iinfo(np.int64).max, f)
        roots = K.uf_flatten(self.parent[: n_prov + 1].copy())
        root_size = np.bincount(roots, weights=counts, minlength=n_prov + 1)
        root_first = np.full(n_prov + 1, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(root_first, roots, first)
        cand = np.flatnonzero((roots == np.arange(n_prov + 1)) & (root_size > 0))
        cand = cand[cand > 0]
        if min_size > 0:
            cand = cand[root_size[cand] >= min_size]
        order = cand[np.argsort(root_first[cand], kind="stable")]
        final_of_root = np.zeros(n_prov + 1, dtype=np.int64)
        final_of_root[order] = np.arange(1, order.size + 1)
        lut = final_of_root[roots]
        lut[0] = 0
        if order.size >= 2**31:
            raise ValueError(f"{order.size} components do not fit int32 labels")
        return lut.astype(np.int32), int(order.size)


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
    merger = ComponentMerger(connectivity)
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


def block_depth(numblocks: Sequence[int], depth: Sequence[int]) -> dict[int, int]:
    """``map_overlap`` depth per axis, 0 along axes held in one block.

    Where each block applies the operation's own border rule (``boundary="none"``, or
    ``"periodic"`` for a wrapping rule), a block spanning a whole axis needs no neighbour data
    along it: depth 0 gives the same values, and dask refuses a depth larger than the axis
    (a one-slice volume with a depth-2 opening failed the pipeline).

    Parameters
    ----------
    numblocks : sequence of int
        Blocks per axis (``dask.array.Array.numblocks``).
    depth : sequence of int
        Voxels of overlap wanted per axis.
    """
    if len(numblocks) != len(depth):
        raise ValueError(f"depth must give one value per axis ({len(numblocks)}), got {list(depth)!r}")
    return {a: 0 if int(n) == 1 else int(d) for a, (n, d) in enumerate(zip(numblocks, depth, strict=True))}
