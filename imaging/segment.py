"""Segmentation: histogram thresholds, connected components, morphology, region growing.

All functions accept numpy or dask arrays. Histogram-based functions never load a
whole dask volume: they reduce each chunk to a histogram and add the histograms.
Connected-component labelling has two paths with identical results (labels are
numbered in raster order of each component's first voxel, exactly like
``scipy.ndimage.label``):

* **in core** (the volume fits ``memory_budget_bytes``, or no budget is given):
  the compiled run-length union-find labeller of :mod:`imaging.kernels` on the
  whole array (GIL-free, axis-0 slabs on threads, merged across slab faces);
* **out of core**: label each chunk (dask) or slab (numpy), give every chunk's
  labels a global offset, union labels that touch across chunk faces with a
  union-find, then relabel each chunk with one lookup table. Only the chunk faces
  and per-label statistics are held in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dask
import dask.array as da
import numpy as np
import scipy.ndimage as ndi

from imaging import kernels as K
from imaging.voxelgrid import (
    ComponentMerger,
    _connectivity,
    _plane_offsets,  # noqa: F401  (re-exported: kernels tests use it)
    block_depth,
    label_to_store,
    plan_slab,
)

__all__ = [
    "histogram",
    "percentile",
    "otsu_threshold",
    "multi_otsu_thresholds",
    "label",
    "remove_small_objects",
    "region_grow",
    "watershed",
    "binary_opening",
    "binary_closing",
    "binary_fill_holes",
    "pet_isocontour",
    "label_memory_bytes",
]

#: Bytes of working memory per voxel of in-core labelling (bool mask copy, int32 output, run tables).
LABEL_BYTES_PER_VOXEL = 6
_MAX_INTEGER_BINS = 1 << 20
_EXTRACT_LIMIT = 1 << 21


#: Slab size (bytes) in which out-of-core array-likes (zarr arrays) are read by the reductions.
STORE_SLAB_BYTES = 128 * 2**20


def _is_dask(x: Any) -> bool:
    return isinstance(x, da.Array)


def _is_store(x: Any) -> bool:
    """An array-like that is neither numpy nor dask but can be sliced (e.g. a zarr array)."""
    return not isinstance(x, (np.ndarray, da.Array)) and hasattr(x, "__getitem__") and hasattr(x, "shape") and hasattr(x, "dtype")


def _is_lazy(x: Any) -> bool:
    return _is_dask(x) or _is_store(x)


def _check_volume(volume: Any, name: str = "volume") -> None:
    if not hasattr(volume, "shape") or not hasattr(volume, "dtype"):
        raise TypeError(f"{name} must be a numpy or dask array (or a zarr-like array-like), got {type(volume).__name__}")
    if len(volume.shape) not in (2, 3):
        raise ValueError(f"{name} must be 2-D or 3-D, got shape {tuple(volume.shape)!r}")


def _check_mask(mask: Any, volume: Any) -> Any:
    if mask is None:
        return None
    if tuple(mask.shape) != tuple(volume.shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match volume shape {tuple(volume.shape)}")
    return mask


# ---------------------------------------------------------------------------------------------
# Chunked reductions
# ---------------------------------------------------------------------------------------------


def _blockwise(volume: Any, mask: Any, fn: Callable[[np.ndarray, np.ndarray | None], Any], n_threads: int | None = None) -> list[Any]:
    """Apply ``fn(block, mask_block)`` to every chunk (dask) or axis-0 slab (numpy); return the list of results."""
    if _is_dask(volume) or _is_dask(mask):
        vol = da.asarray(volume)
        if vol.ndim == 0:
            raise ValueError("volume must not be a scalar")
        vblocks = vol.to_delayed().ravel()
        if mask is None:
            tasks = [dask.delayed(fn)(b, None) for b in vblocks]
        else:
            m = da.asarray(mask).rechunk(vol.chunks)
            tasks = [dask.delayed(fn)(b, mb) for b, mb in zip(vblocks, m.to_delayed().ravel(), strict=True)]
        return list(dask.compute(*tasks))
    n_threads = K.default_threads() if n_threads is None else n_threads
    if not isinstance(volume, np.ndarray) and _is_store(volume):
        # an out-of-core array-like (e.g. a zarr array): read bounded slabs along axis 0
        plane = math.prod(int(s) for s in volume.shape[1:]) * np.dtype(volume.dtype).itemsize
        step = max(1, STORE_SLAB_BYTES // max(1, plane))
        ranges = [(a, min(a + step, int(volume.shape[0]))) for a in range(0, int(volume.shape[0]), step)]

        def read(a: int, b: int) -> Any:
            blk = np.asarray(volume[a:b])
            return fn(blk, None if mask is None else np.asarray(mask[a:b], dtype=bool))

        with ThreadPoolExecutor(max_workers=n_threads) as ex:
            return list(ex.map(lambda r: read(*r), ranges))
    vol = np.asarray(volume)
    msk = None if mask is None else np.asarray(mask, dtype=bool)
    ranges = K.slab_ranges(vol.shape[0], 2 * n_threads)
    if n_threads == 1 or len(ranges) == 1:
        return [fn(vol[a:b], None if msk is None else msk[a:b]) for a, b in ranges]
    with ThreadPoolExecutor(max_workers=n_threads) as ex:
        futs = [ex.submit(fn, vol[a:b], None if msk is None else msk[a:b]) for a, b in ranges]
        return [f.result() for f in futs]


def _minmax_count(volume: Any, mask: Any) -> tuple[float, float, int]:
    def f(b: np.ndarray, m: np.ndarray | None) -> tuple[float, float, int]:
        vals = b if m is None else b[m]
        if vals.size == 0:
            return math.inf, -math.inf, 0
        return vals.min(), vals.max(), int(vals.size)

    parts = _blockwise(volume, mask, f)
    lo = min(p[0] for p in parts)
    hi = max(p[1] for p in parts)
    n = sum(p[2] for p in parts)
    if n == 0:
        raise ValueError("no voxels selected (empty volume or empty mask)")
    return lo, hi, n


def histogram(volume: Any, *, mask: Any = None, bins: int = 256, value_range: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of a (masked) volume from per-chunk histograms, with scikit-image's bins.

    Integer volumes get one bin per integer value from the minimum to the maximum
    (``skimage.exposure.histogram`` convention; ``bins`` is ignored) as long as the
    range is at most 2**20 values; otherwise, and for floats, ``bins`` equal-width
    bins over ``[min, max]`` (``numpy.histogram`` semantics).

    Parameters
    ----------
    volume : ndarray or dask array
    mask : bool array of the same shape, optional
        Only voxels where ``mask`` is True are counted.
    bins : int
        Number of bins for floating-point data.
    value_range : (min, max), optional
        The exact minimum and maximum of the (masked) data if already known (e.g.
        from the pass that produced it): saves one pass over non-int16 data.

    Returns
    -------
    counts : ndarray of int64, shape (nb,)
    centers : ndarray, shape (nb,)
        Bin centres (the integer values for per-value bins).
    """
    _check_volume(volume)
    mask = _check_mask(mask, volume)
    if not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    dtype = np.dtype(volume.dtype)
    if dtype in (np.dtype(np.int16), np.dtype(np.int8), np.dtype(np.uint8)):
        parts = _blockwise(volume, mask, lambda b, m: K.bincount_int16(b, m))
        counts = np.sum(parts, axis=0)
        nz = np.flatnonzero(counts)
        if nz.size == 0:
            raise ValueError("no voxels selected (empty volume or empty mask)")
        a, b = int(nz[0]), int(nz[-1]) + 1
        return counts[a:b], np.arange(a - 32768, b - 32768, dtype=np.int64)
    if value_range is not None:
        lo, hi = dtype.type(value_range[0]), dtype.type(value_range[1])
        if not hi >= lo:
            raise ValueError(f"value_range must be (min, max) with max >= min, got {value_range!r}")
    else:
        lo, hi, _ = _minmax_count(volume, mask)
    if np.issubdtype(dtype, np.integer) and int(hi) - int(lo) < _MAX_INTEGER_BINS:
        ilo, ihi = int(lo), int(hi)

        def fint(b: np.ndarray, m: np.ndarray | None) -> np.ndarray:
            vals = (b if m is None else b[m]).ravel()
            return np.bincount((vals.astype(np.int64) - ilo), minlength=ihi - ilo + 1)

        counts = np.sum(_blockwise(volume, mask, fint), axis=0)
        return counts, np.arange(ilo, ihi + 1, dtype=np.int64)
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise TypeError(f"volume must be real-valued, got dtype {dtype}")
    # keep the range in the data's dtype: numpy.histogram then builds the same edges as scikit-image does,
    # and the compiled counter assigns every value to the same bin as numpy.histogram
    flo, fhi = dtype.type(lo), dtype.type(hi)
    edges = np.histogram_bin_edges(np.array([flo, fhi], dtype=dtype), bins=int(bins), range=(flo, fhi))
    if np.issubdtype(dtype, np.floating) and edges.dtype == dtype and fhi > flo:

        def ffloat(b: np.ndarray, m: np.ndarray | None) -> np.ndarray:
            return K.histogram_uniform(b, edges, m)

    else:

        def ffloat(b: np.ndarray, m: np.ndarray | None) -> np.ndarray:
            vals = b if m is None else b[m]
            return np.histogram(vals, bins=int(bins), range=(flo, fhi))[0]

    counts = np.sum(_blockwise(volume, mask, ffloat), axis=0)
    return counts.astype(np.int64), (edges[:-1] + edges[1:]) / 2


def otsu_threshold(volume: Any, *, mask: Any = None, bins: int = 256, value_range: tuple[float, float] | None = None) -> float:
    """Otsu's threshold from a chunked histogram (equals ``skimage.filters.threshold_otsu``).

    Foreground is ``volume > threshold`` (scikit-image convention).

    Parameters
    ----------
    volume : ndarray or dask array
    mask : bool array, optional
        Restrict the histogram to these voxels.
    bins : int
        Bins for floating-point data (integers use one bin per value; see :func:`histogram`).
    value_range : (min, max), optional
        Exact data range if known (see :func:`histogram`).

    Returns
    -------
    float
        Threshold in the units of ``volume``.
    """
    from skimage.filters import threshold_otsu

    counts, centers = histogram(volume, mask=mask, bins=bins, value_range=value_range)
    return float(threshold_otsu(hist=(counts, centers)))


def multi_otsu_thresholds(volume: Any, *, classes: int = 3, mask: Any = None, bins: int = 256) -> np.ndarray:
    """Multi-level Otsu thresholds from a chunked histogram (equals ``skimage.filters.threshold_multiotsu``).

    Returns
    -------
    ndarray of float64, shape (classes - 1,)
    """
    from skimage.filters import threshold_multiotsu

    if not isinstance(classes, (int, np.integer)) or classes < 2:
        raise ValueError(f"classes must be an int >= 2, got {classes!r}")
    counts, centers = histogram(volume, mask=mask, bins=bins)
    if counts.size < classes:
        raise ValueError(f"the histogram has {counts.size} non-empty bins, fewer than classes={classes}")
    return np.asarray(threshold_multiotsu(hist=(counts, centers), classes=int(classes)), dtype=np.float64)


def _bin_index(vals: np.ndarray, edges: np.ndarray, closed: bool) -> np.ndarray:
    """Bin of each value for equal-width ``edges`` (-1 = outside); the last bin is closed if ``closed``."""
    nb = edges.size - 1
    idx = np.searchsorted(edges, vals, side="right") - 1
    if closed:
        idx[vals == edges[-1]] = nb - 1
    idx[(idx >= nb) | (vals < edges[0])] = -1
    return idx


def _order_statistics_float(volume: Any, mask: Any, ks: list[int], lo: float, hi: float) -> list[float]:
    """Exact k-th smallest values (0-based ranks) of a float volume by histogram refinement.

    Each pending rank keeps a subset ``[a, b]`` / ``[a, b)`` of values and its rank inside
    it. One pass histograms every distinct subset into 65536 equal bins; the bin that
    holds the rank becomes the new subset. When a bin holds few values (or cannot be
    split further) one more pass extracts and sorts them. All ranks share passes.
    """
    nb = 1 << 16
    state = {k: (lo, hi, True, k) for k in ks}  # k -> (a, b, closed, rank within subset)
    result: dict[int, float] = {}
    while state:
        for k, (a, b, _c, _r) in list(state.items()):
            if a == b:
                result[k] = a
                del state[k]
        if not state:
            break
        subsets = sorted({(a, b, c) for a, b, c, _ in state.values()})
        edge_sets = []
        for a, b, _ in subsets:
            e = np.linspace(a, b, nb + 1)
            e[0], e[-1] = a, b
            edge_sets.append(e)

        def hist(blk: np.ndarray, m: np.ndarray | None, subsets: list = subsets, edge_sets: list = edge_sets) -> list[np.ndarray]:
            vals = (blk if m is None else blk[m]).ravel().astype(np.float64)
            out = []
            for (_a, _b, c), e in zip(subsets, edge_sets, strict=True):
                idx = _bin_index(vals, e, c)
                out.append(np.bincount(idx[idx >= 0], minlength=nb))
            return out

        parts = _blockwise(volume, mask, hist)
        counts = [np.sum([p[i] for p in parts], axis=0) for i in range(len(subsets))]
        extract: dict[int, tuple[np.ndarray, bool, int, int]] = {}
        for k, (a, b, c, r) in list(state.items()):
            i = subsets.index((a, b, c))
            cum = np.cumsum(counts[i])
            j = int(np.searchsorted(cum, r, side="right"))
            r_in = r - (int(cum[j - 1]) if j > 0 else 0)
            e = edge_sets[i]
            na, nbd, ncl = float(e[j]), float(e[j + 1]), bool(c and j == nb - 1)
            splittable = float(np.nextafter(na, np.inf)) < nbd
            if not splittable and not ncl:  # the bin holds the single value na
                state[k] = (na, na, True, 0)
            elif int(counts[i][j]) <= _EXTRACT_LIMIT or not splittable:
                extract[k] = (e, c, j, r_in)
            else:
                state[k] = (na, nbd, ncl, r_in)
        if extract:
            keys = list(extract)
            wanted = [extract[k][:3] for k in keys]

            def grab(blk: np.ndarray, m: np.ndarray | None, wanted: list = wanted) -> list[np.ndarray]:
                vals = (blk if m is None else blk[m]).ravel().astype(np.float64)
                return [vals[_bin_index(vals, e, c) == j] for e, c, j in wanted]

            got = _blockwise(volume, mask, grab)
            for t, k in enumerate(keys):
                vals = np.sort(np.concatenate([g[t] for g in got]))
                result[k] = float(vals[extract[k][3]])
                del state[k]
    return [result[k] for k in ks]


def percentile(volume: Any, q: float | Sequence[float], *, mask: Any = None) -> np.ndarray:
    """Exact percentiles (``numpy.percentile``, linear method) of a numpy or dask volume.

    Dask volumes are never loaded whole: integers use the per-value chunked
    histogram; floats use histogram refinement (a few passes over the chunks) until
    the wanted order statistics can be extracted.

    Parameters
    ----------
    volume : ndarray or dask array
    q : float or sequence of float in [0, 100]
    mask : bool array, optional

    Returns
    -------
    ndarray of float64 with the shape of ``q``
    """
    qs = np.atleast_1d(np.asarray(q, dtype=np.float64))
    if np.any((qs < 0) | (qs > 100)) or not np.all(np.isfinite(qs)):
        raise ValueError(f"q must be in [0, 100], got {q!r}")
    _check_volume(volume)
    mask = _check_mask(mask, volume)
    if not _is_lazy(volume) and not _is_lazy(mask):
        vals = np.asarray(volume) if mask is None else np.asarray(volume)[np.asarray(mask, dtype=bool)]
        if vals.size == 0:
            raise ValueError("no voxels selected (empty volume or empty mask)")
        return np.asarray(np.percentile(vals, qs), dtype=np.float64).reshape(np.shape(q))
    dtype = np.dtype(volume.dtype)
    if np.issubdtype(dtype, np.integer):
        counts, centers = histogram(volume, mask=mask)
        if counts.size != centers.size or (centers.size > 1 and centers[1] - centers[0] != 1):
            raise ValueError("integer range too wide for an exact chunked percentile")
        n = int(counts.sum())
        cum = np.cumsum(counts)

        def kth(k: int) -> float:
            return float(centers[int(np.searchsorted(cum, k, side="right"))])

    else:
        lo, hi, n = _minmax_count(volume, mask)
        h = (n - 1) * qs / 100.0
        ks = sorted({int(np.floor(v)) for v in h} | {min(n - 1, int(np.floor(v)) + 1) for v in h})
        vals = dict(zip(ks, _order_statistics_float(volume, mask, ks, float(lo), float(hi)), strict=True))

        def kth(k: int) -> float:
            return vals[k]

    res = []
    for v in (n - 1) * qs / 100.0:
        k = int(np.floor(v))
        k1 = min(n - 1, k + 1)
        x0, x1 = kth(k), kth(k1)
        res.append(x0 + (v - k) * (x1 - x0))
    return np.asarray(res, dtype=np.float64).reshape(np.shape(q))


# ---------------------------------------------------------------------------------------------
# Connected components
# ---------------------------------------------------------------------------------------------


def label_memory_bytes(shape: Sequence[int]) -> int:
    """Working memory (bytes) the in-core labelling path needs for a volume of ``shape``."""
    return LABEL_BYTES_PER_VOXEL * math.prod(int(s) for s in shape)


def _label_local(mask: np.ndarray, connectivity: int, n_threads: int | None = 1, min_size: int = 0) -> tuple[np.ndarray, int]:
    """Raster-ordered int32 labels of an in-memory block (same numbering as ``scipy.ndimage.label``).

    3-D masks use the compiled run-based labeller (GIL-free, ``n_threads`` slabs);
    2-D masks use scipy.
    """
    mask = np.asarray(mask)
    if mask.ndim == 3:
        return K.label_runs(mask, connectivity, min_size=min_size, n_threads=n_threads)
    lab, n = ndi.label(mask.astype(bool, copy=False), structure=ndi.generate_binary_structure(mask.ndim, connectivity))
    lab = lab.astype(np.int32, copy=False)
    if min_size > 0:
        return _relabel_min_size(lab, int(n), min_size)
    return lab, int(n)


def _block_summary(block: np.ndarray, connectivity: int, origin: tuple[int, ...], shape: tuple[int, ...]) -> dict[str, Any]:
    lab, n = _label_local(block, connectivity)
    counts, first = K.label_stats(lab, n, origin[0], origin[1], origin[2], shape[1], shape[2])
    faces = {a: (np.take(lab, 0, axis=a).copy(), np.take(lab, -1, axis=a).copy()) for a in range(3)}
    return {"n": n, "counts": counts, "first": first, "faces": faces}


def _relabel_block(block: np.ndarray, connectivity: int, offsets: np.ndarray, lut: np.ndarray, block_id: tuple[int, ...] | None = None) -> np.ndarray:
    lab, _ = _label_local(block, connectivity)
    assert block_id is not None
    off = int(offsets[block_id])
    out = np.empty(lab.shape, dtype=np.int32)
    K.apply_lut(lab.reshape(-1), off, lut, out.reshape(-1))
    return out


def _label_dask_chunked(mask: da.Array, connectivity: int, min_size: int) -> tuple[da.Array, int]:
    """Out-of-core labelling of a dask mask: per-chunk labels merged across faces (see module doc)."""
    shape = tuple(int(s) for s in mask.shape)
    chunks = mask.chunks
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in chunks]
    grid = tuple(len(c) for c in chunks)
    blocks = mask.to_delayed()
    ids = list(np.ndindex(*grid))
    tasks = [
        dask.delayed(_block_summary)(blocks[i], connectivity, tuple(int(starts[a][i[a]]) for a in range(3)), shape)
        for i in ids
    ]
    summaries = dict(zip(ids, dask.compute(*tasks), strict=True))
    merger = ComponentMerger(connectivity)
    offsets = np.zeros(grid, dtype=np.int64)
    for i in ids:  # C order: deterministic offsets
        s = summaries[i]
        offsets[i] = merger.add_block(s["n"], s["counts"], s["first"])
    for a in range(3):
        others = [b for b in range(3) if b != a]
        pshape = (shape[others[0]], shape[others[1]])
        for t in range(1, grid[a]):
            left = np.zeros(pshape, dtype=np.int64)
            right = np.zeros(pshape, dtype=np.int64)
            for i in ids:
                if i[a] not in (t - 1, t):
                    continue
                s = summaries[i]
                face = s["faces"][a][1] if i[a] == t - 1 else s["faces"][a][0]
                g = np.where(face != 0, face.astype(np.int64) + offsets[i], 0)
                o1, o2 = (int(starts[others[0]][i[others[0]]]), int(starts[others[1]][i[others[1]]]))
                dst = left if i[a] == t - 1 else right
                dst[o1 : o1 + g.shape[0], o2 : o2 + g.shape[1]] = g
            merger.union_planes(left, right)
    lut, n = merger.finish(min_size)
    labels = da.map_blocks(
        _relabel_block, mask, connectivity, offsets, lut, dtype=np.int32, meta=np.empty((0, 0, 0), dtype=np.int32)
    )
    return labels, n


def _relabel_min_size(lab: np.ndarray, n: int, min_size: int) -> tuple[np.ndarray, int]:
    counts = np.bincount(lab.reshape(-1), minlength=n + 1)
    keep = counts >= min_size
    keep[0] = False
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    out = np.empty(lab.shape, dtype=np.int32)
    K.apply_lut(lab.reshape(-1), 0, lut, out.reshape(-1))
    return out, int(keep.sum())


def label(
    mask: Any,
    *,
    connectivity: int = 1,
    min_size: int = 0,
    memory_budget_bytes: int | None = None,
    n_threads: int | None = None,
) -> tuple[Any, int]:
    """Connected components of a boolean mask, in core or out of core.

    A compiled run-length two-pass union-find labeller (GIL-free, parallel over
    axis-0 slabs) does the work on both paths; it returns the same labels as
    ``scipy.ndimage.label`` with the structure of ``connectivity``.

    Parameters
    ----------
    mask : bool ndarray or dask array, shape (n0, n1, n2)
        Non-zero voxels are foreground.
    connectivity : {1, 2, 3}
        scipy.ndimage convention: 1 = faces (6-neighbourhood), 2 = +edges (18),
        3 = +corners (26).
    min_size : int
        Components with fewer voxels are removed (set to 0) and the rest renumbered.
    memory_budget_bytes : int, optional
        If the in-core path's working memory (:func:`label_memory_bytes`) exceeds
        this, label per chunk (dask) or per axis-0 slab (numpy) and merge labels
        across faces with a union-find. ``None`` = always in core.
    n_threads : int, optional
        Threads of the in-core labeller (run-based union-find on axis-0 slabs,
        :func:`imaging.kernels.label_runs`); default all cores.

    Returns
    -------
    labels : int32 ndarray (numpy input) or dask array (dask input)
        0 = background, components numbered 1..n in raster order of their first
        voxel -- identical to ``scipy.ndimage.label`` on both paths.
    n : int
        Number of components.
    """
    _check_volume(mask, "mask")
    if len(mask.shape) != 3:
        raise ValueError(f"mask must be 3-D, got shape {tuple(mask.shape)!r}")
    connectivity = _connectivity(connectivity)
    if not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise ValueError(f"min_size must be an int >= 0, got {min_size!r}")
    if memory_budget_bytes is not None and memory_budget_bytes <= 0:
        raise ValueError(f"memory_budget_bytes must be > 0, got {memory_budget_bytes!r}")
    fits = memory_budget_bytes is None or label_memory_bytes(mask.shape) <= memory_budget_bytes
    if _is_dask(mask):
        if fits:
            lab, n = _label_local(np.asarray(mask.compute()), connectivity, n_threads, int(min_size))
            return da.from_array(lab, chunks=mask.chunks), n
        return _label_dask_chunked(mask, connectivity, int(min_size))
    arr = np.asarray(mask)
    if fits:
        return _label_local(arr, connectivity, n_threads, int(min_size))
    slab = plan_slab(arr.shape, bytes_per_voxel=LABEL_BYTES_PER_VOXEL, halo=0,
                     memory_budget_bytes=int(memory_budget_bytes or 0), max_in_flight=1)
    out = np.zeros(arr.shape, dtype=np.int32)
    n = label_to_store(arr, out, connectivity=connectivity, min_size=int(min_size), slab=slab, max_in_flight=1)
    return out, n


def remove_small_objects(
    mask: Any, *, min_size: int, connectivity: int = 1, memory_budget_bytes: int | None = None
) -> Any:
    """Remove connected components with fewer than ``min_size`` voxels; bool mask out.

    Equals ``skimage.morphology.remove_small_objects(mask, max_size=min_size - 1, connectivity=...)``.
    """
    if not isinstance(min_size, (int, np.integer)) or min_size < 1:
        raise ValueError(f"min_size must be an int >= 1, got {min_size!r}")
    lab, _ = label(mask, connectivity=connectivity, min_size=int(min_size), memory_budget_bytes=memory_budget_bytes)
    return lab > 0


def _seed_labels(labels: Any, seeds: Any) -> np.ndarray:
    if hasattr(seeds, "shape") and tuple(seeds.shape) == tuple(labels.shape):
        vals = labels[da.asarray(seeds) if _is_dask(labels) else np.asarray(seeds, dtype=bool)]
        vals = vals.compute() if _is_dask(vals) else vals
        return np.unique(np.asarray(vals))
    pts = np.atleast_2d(np.asarray(seeds, dtype=np.int64))
    if pts.ndim != 2 or pts.shape[1] != labels.ndim:
        raise ValueError(f"seeds must be an (n, {labels.ndim}) array of voxel indices or a mask, got shape {pts.shape}")
    for p in pts:
        if np.any(p < 0) or np.any(p >= np.asarray(labels.shape)):
            raise ValueError(f"seed {tuple(p)} lies outside the volume of shape {tuple(labels.shape)}")
    if _is_dask(labels):
        vals = dask.compute(*[labels[tuple(p)] for p in pts])
    else:
        vals = [labels[tuple(p)] for p in pts]
    return np.unique(np.asarray(vals, dtype=np.int64))


def region_grow(
    volume: Any,
    *,
    seeds: Any,
    lower: float,
    upper: float,
    connectivity: int = 1,
    memory_budget_bytes: int | None = None,
) -> Any:
    """Voxels with ``lower <= value <= upper`` connected to any seed (ITK ``ConnectedThreshold``).

    Parameters
    ----------
    volume : ndarray or dask array, shape (n0, n1, n2)
    seeds : (n, 3) int array of voxel indices, or bool mask of the volume's shape
    lower, upper : float
        Inclusive intensity interval.
    connectivity : {1, 2, 3}
    memory_budget_bytes : int, optional
        Passed to :func:`label`.

    Returns
    -------
    bool ndarray or dask array
    """
    if not upper >= lower:
        raise ValueError(f"upper must be >= lower, got lower={lower!r}, upper={upper!r}")
    inside = (volume >= lower) & (volume <= upper)
    labels, _ = label(inside, connectivity=connectivity, memory_budget_bytes=memory_budget_bytes)
    keep = _seed_labels(labels, seeds)
    keep = keep[keep > 0]
    if _is_dask(labels):
        return da.isin(labels, keep)
    return np.isin(labels, keep)


def watershed(
    volume: Any, *, markers: Any, mask: Any = None, connectivity: int = 1, compactness: float = 0.0
) -> np.ndarray:
    """Marker-based watershed (``skimage.segmentation.watershed``), in core.

    Dask inputs are computed first (watershed is a global flooding; there is no
    exact chunked form).
    """
    from skimage.segmentation import watershed as _ws

    def load(x: Any) -> Any:
        return None if x is None else (np.asarray(x.compute()) if _is_dask(x) else np.asarray(x))

    vol = load(volume)
    mk = load(markers)
    if vol.shape != mk.shape:
        raise ValueError(f"markers shape {mk.shape} does not match volume shape {vol.shape}")
    return np.asarray(_ws(vol, markers=mk, mask=load(mask), connectivity=_connectivity(connectivity), compactness=compactness))


# ---------------------------------------------------------------------------------------------
# Morphology (dask via map_overlap with boundary="none": each block applies scipy's own border rule)
# ---------------------------------------------------------------------------------------------


def _structure(structure: Any, connectivity: int) -> np.ndarray:
    if structure is None:
        return ndi.generate_binary_structure(3, _connectivity(connectivity))
    s = np.asarray(structure, dtype=bool)
    if s.ndim != 3 or any(v % 2 == 0 for v in s.shape):
        raise ValueError(f"structure must be a 3-D array with odd sides, got shape {s.shape}")
    return s


def _morph(mask: Any, op: Callable[..., np.ndarray], structure: np.ndarray, iterations: int) -> Any:
    if not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
    if not _is_dask(mask):
        return op(np.asarray(mask, dtype=bool), structure=structure, iterations=int(iterations))
    depth = block_depth(mask.numblocks, [2 * int(iterations) * (structure.shape[a] // 2) for a in range(3)])
    return da.map_overlap(
        lambda b: op(b.astype(bool), structure=structure, iterations=int(iterations)),
        mask,
        depth=depth,
        boundary="none",
        dtype=bool,
        meta=np.empty((0, 0, 0), dtype=bool),
    )


def binary_opening(mask: Any, *, structure: Any = None, connectivity: int = 1, iterations: int = 1) -> Any:
    """Morphological opening (equals ``scipy.ndimage.binary_opening``, outside = False)."""
    return _morph(mask, ndi.binary_opening, _structure(structure, connectivity), iterations)


def binary_closing(mask: Any, *, structure: Any = None, connectivity: int = 1, iterations: int = 1) -> Any:
    """Morphological closing (equals ``scipy.ndimage.binary_closing``, outside = False, so border voxels may erode)."""
    return _morph(mask, ndi.binary_closing, _structure(structure, connectivity), iterations)


def binary_fill_holes(mask: Any, *, connectivity: int = 1, memory_budget_bytes: int | None = None) -> Any:
    """Fill background components that do not touch the volume border.

    Equals ``scipy.ndimage.binary_fill_holes(mask, structure)`` with the structure
    of ``connectivity`` (which defines background connectivity). Dask masks are
    processed by labelling the background (:func:`label`, chunk-merged when over
    budget) and keeping the components that touch a face of the volume.
    """
    if not _is_dask(mask):
        return ndi.binary_fill_holes(np.asarray(mask, dtype=bool), structure=ndi.generate_binary_structure(3, _connectivity(connectivity)))
    m = mask.astype(bool)
    bg, _ = label(~m, connectivity=connectivity, memory_budget_bytes=memory_budget_bytes)
    faces = dask.compute(bg[0], bg[-1], bg[:, 0], bg[:, -1], bg[:, :, 0], bg[:, :, -1])
    outside = np.unique(np.concatenate([np.asarray(f).ravel() for f in faces]))
    outside = outside[outside > 0]
    return m | ((bg > 0) & ~da.isin(bg, outside))


# ---------------------------------------------------------------------------------------------
# PET
# ---------------------------------------------------------------------------------------------


def pet_isocontour(
    volume: Any,
    *,
    fraction: float = 0.4,
    roi: Any = None,
    background: float | None = None,
    connected: bool = True,
    connectivity: int = 1,
) -> Any:
    """Fixed-fraction isocontour of SUVmax (e.g. 40% or 50% of SUVmax) inside a region.

    ``threshold = background + fraction * (SUVmax - background)`` (``background``
    None means 0, i.e. the plain ``fraction * SUVmax`` rule); voxels of ``roi`` with
    ``value >= threshold`` form the mask. With ``connected=True`` only the component
    that contains the SUVmax voxel is kept.

    Parameters
    ----------
    volume : ndarray or dask array
        PET in SUV (or any uptake unit; the rule is scale-free).
    fraction : float in (0, 1)
    roi : bool array, optional
        Search region (e.g. a dilated bounding box of the lesion). Default: whole volume.
    background : float, optional
        Background uptake for the background-corrected variant.
    connected : bool
    connectivity : {1, 2, 3}

    Returns
    -------
    bool ndarray or dask array
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    _check_volume(volume)
    roi = _check_mask(roi, volume)
    vol = volume
    if roi is None:
        vmax = float(vol.max().compute() if _is_dask(vol) else np.max(vol))
        inside = vol
    else:
        inside = da.where(roi, vol, -np.inf) if (_is_dask(vol) or _is_dask(roi)) else np.where(np.asarray(roi, dtype=bool), vol, -np.inf)
        vmax = float(inside.max().compute() if _is_dask(inside) else np.max(inside))
    if not np.isfinite(vmax):
        raise ValueError("roi is empty")
    bg = 0.0 if background is None else float(background)
    thr = bg + fraction * (vmax - bg)
    result = inside >= thr
    if not connected:
        return result
    if _is_dask(inside):
        am = int(da.argmax(inside).compute())
    else:
        am = int(np.argmax(inside))
    seed = np.unravel_index(am, tuple(int(s) for s in volume.shape))
    labels, _ = label(result, connectivity=connectivity)
    keep = int(np.asarray(labels[seed].compute() if _is_dask(labels) else labels[seed]))
    return labels == keep
