"""Compiled (numba) per-voxel kernels and the slab-parallel drivers that run them.

Design
------
Every kernel here is a *serial* ``numba.njit(nogil=True)`` function that computes a
range of output slices along axis 0. Parallelism comes from running disjoint slice
ranges on a small thread pool (the GIL is released inside the kernels), never from
``numba.prange``: that keeps the kernels safe to call from inside dask worker
threads (no nested numba thread pools, no threading-layer surprises) and lets the
same kernel serve in-core numpy arrays, dask blocks and out-of-core slabs.

Boundary handling follows :mod:`scipy.ndimage` exactly. For each axis an *index
map* sends a padded position to the source index (``-1`` = the constant ``cval``);
see :func:`boundary_index`. With these maps the kernels reproduce
``scipy.ndimage.gaussian_filter`` (float32 rounding aside) and
``scipy.ndimage.median_filter`` (bit for bit) for modes ``reflect``, ``mirror``,
``nearest``, ``wrap`` and ``constant``.

The median uses a compile-time *selection network*: Batcher's odd-even merge sort
on the next power of two, with the padding wires constant-propagated away and every
comparator that cannot reach the median wire pruned. For 3x3x3 (27 inputs) this
leaves 127 comparators (verified exhaustively with the 0-1 principle), evaluated
branch-free (``min``/``max``) and vectorised along the contiguous axis.

Connected components use a run-length two-pass union-find (:func:`label_runs`):
each row's runs of foreground voxels are united with the overlapping runs of the
causal neighbour rows; slabs are labelled on separate threads and merged across
their faces. Labels come out in raster order of first voxel, as scipy numbers them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numba
import numpy as np

__all__ = [
    "MODES",
    "INTERP_MODES",
    "boundary_index",
    "default_threads",
    "slab_ranges",
    "run_slabs",
    "gaussian_weights",
    "gaussian_slices",
    "separable_filter",
    "gaussian_filter",
    "median_network",
    "median_slices",
    "median_filter",
    "bincount_int16",
    "histogram_uniform",
    "window_clip",
    "axis_taps",
    "resample_separable",
    "affine_resample",
    "bilateral_slices",
    "perona_malik_step",
    "label_runs",
    "label_slab_runs",
    "runs_to_planes",
    "runs_stats",
    "label_stats",
    "uf_find",
    "uf_union_planes",
    "uf_flatten",
    "apply_lut",
    "lookup",
    "minmax",
]

_SCIPY_TO_NUMPY_PAD = {"reflect": "symmetric", "mirror": "reflect", "nearest": "edge", "wrap": "wrap"}
MODES = ("reflect", "mirror", "nearest", "wrap", "constant")


def default_threads() -> int:
    """Number of CPU cores this process may use (``os.sched_getaffinity``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def boundary_index(n: int, pad_lo: int, pad_hi: int, mode: str) -> np.ndarray:
    """Index map for a padded axis, with scipy.ndimage boundary semantics.

    Parameters
    ----------
    n : int
        Length of the axis.
    pad_lo, pad_hi : int
        Number of padded positions before index 0 and after index ``n - 1``.
    mode : {"reflect", "mirror", "nearest", "wrap", "constant"}
        scipy.ndimage mode: ``reflect`` = (d c b a | a b c d | d c b a),
        ``mirror`` = (d c b | a b c d | c b a), ``nearest`` = (a a | a b c d | d d),
        ``wrap`` = (a b c d | a b c d | a b c d), ``constant`` = cval.

    Returns
    -------
    ndarray of int64, shape (pad_lo + n + pad_hi,)
        Source index for each padded position; ``-1`` means "use cval".
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if n < 1:
        raise ValueError(f"axis length must be >= 1, got {n!r}")
    idx = np.arange(n, dtype=np.int64)
    if mode == "constant":
        return np.pad(idx, (pad_lo, pad_hi), mode="constant", constant_values=-1)
    if mode == "mirror" and n == 1:
        return np.zeros(n + pad_lo + pad_hi, dtype=np.int64)
    return np.pad(idx, (pad_lo, pad_hi), mode=_SCIPY_TO_NUMPY_PAD[mode])  # type: ignore[call-overload]


def slab_ranges(n: int, n_parts: int, *, min_size: int = 1) -> list[tuple[int, int]]:
    """Split ``range(n)`` into at most ``n_parts`` contiguous, near-equal ``(start, stop)`` ranges."""
    n_parts = max(1, min(n_parts, max(1, n // max(1, min_size))))
    edges = np.linspace(0, n, n_parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def run_slabs(fn: Callable[[int, int], object], n: int, n_threads: int | None = None, *, parts_per_thread: int = 2) -> None:
    """Call ``fn(start, stop)`` over disjoint slice ranges of ``range(n)`` on ``n_threads`` threads."""
    n_threads = default_threads() if n_threads is None else int(n_threads)
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads!r}")
    ranges = slab_ranges(n, n_threads * parts_per_thread if n_threads > 1 else 1)
    if n_threads == 1 or len(ranges) == 1:
        for a, b in ranges:
            fn(a, b)
        return
    with ThreadPoolExecutor(max_workers=n_threads) as ex:
        for fut in [ex.submit(fn, a, b) for a, b in ranges]:
            fut.result()


# ---------------------------------------------------------------------------------------------
# Gaussian (separable)
# ---------------------------------------------------------------------------------------------


def gaussian_weights(sigma: float, truncate: float = 4.0, order: int = 0) -> np.ndarray:
    """1-D Gaussian (derivative) correlation weights exactly as ``scipy.ndimage.gaussian_filter1d`` builds them.

    ``radius = int(truncate * sigma + 0.5)``; ``order`` 0 = smoothing (weights sum to 1),
    1 and 2 = first and second derivative of the sampled, normalised Gaussian
    (scipy's construction). ``sigma == 0`` with order 0 gives the identity ``[1.0]``.
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    if order not in (0, 1, 2):
        raise ValueError(f"order must be 0, 1 or 2, got {order!r}")
    if sigma == 0:
        if order:
            raise ValueError("sigma must be > 0 for a derivative")
        return np.ones(1, dtype=np.float64)
    radius = int(truncate * float(sigma) + 0.5)
    s2 = float(sigma) * float(sigma)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / s2 * x * x)
    phi = phi / phi.sum()
    if order == 0:
        return phi
    # derivative weights: q(x) * phi(x) with q from repeated differentiation (as scipy), then
    # reversed because scipy correlates with the reversed kernel (a convolution)
    exps = np.arange(order + 1)
    q = np.zeros(order + 1)
    q[0] = 1
    qd = np.diag(exps[1:].astype(np.float64), 1) + np.diag(np.ones(order) / -s2, -1)
    for _ in range(order):
        q = qd.dot(q)
    w = (x[:, None] ** exps).dot(q) * phi
    return w[::-1].copy()


@numba.njit(nogil=True, cache=True)
def gaussian_slices(src, src_z0, dst, z_lo, z_hi, w0, map0, w1, map1, w2, map2, cval):  # pragma: no cover - jit
    """Separable correlation of ``src`` for output slices ``z_lo..z_hi`` into ``dst[0:z_hi-z_lo]``.

    ``src`` holds global slices ``src_z0 .. src_z0 + src.shape[0]``; ``map0`` is the global
    axis-0 index map padded by ``r0 = len(w0)//2`` so output slice ``z`` reads global
    slices ``map0[z + k]``. ``map1``/``map2`` are the in-plane maps (padded by their radii).
    Accumulation is in float32, output float32.
    """
    n1 = src.shape[1]
    n2 = src.shape[2]
    k0 = w0.shape[0]
    k1 = w1.shape[0]
    k2 = w2.shape[0]
    w0f = w0.astype(np.float32)
    w1f = w1.astype(np.float32)
    w2f = w2.astype(np.float32)
    cv = np.float32(cval)
    plane = np.empty((n1, n2), dtype=np.float32)
    acc = np.empty(n2, dtype=np.float32)
    row = np.empty(n2 + k2 - 1, dtype=np.float32)
    for z in range(z_lo, z_hi):
        # axis 0: plane[y, :] = sum_k w0[k] * src[map0[z + k], y, :]
        for y in range(n1):
            for x in range(n2):
                acc[x] = 0.0
            for k in range(k0):
                s = map0[z + k]
                wk = w0f[k]
                if s < 0:
                    for x in range(n2):
                        acc[x] += wk * cv
                else:
                    sl = s - src_z0
                    for x in range(n2):
                        acc[x] += wk * np.float32(src[sl, y, x])
            for x in range(n2):
                plane[y, x] = acc[x]
        # axis 1 then axis 2, one output row at a time
        for y in range(n1):
            for x in range(n2):
                acc[x] = 0.0
            for k in range(k1):
                s = map1[y + k]
                wk = w1f[k]
                if s < 0:
                    for x in range(n2):
                        acc[x] += wk * cv
                else:
                    for x in range(n2):
                        acc[x] += wk * plane[s, x]
            for p in range(n2 + k2 - 1):
                s = map2[p]
                row[p] = cv if s < 0 else acc[s]
            for x in range(n2):
                acc[x] = 0.0
            for k in range(k2):
                wk = w2f[k]
                for x in range(n2):
                    acc[x] += wk * row[x + k]
            for x in range(n2):
                dst[z - z_lo, y, x] = acc[x]


def _check_3d(volume: np.ndarray, name: str = "volume") -> None:
    if volume.ndim != 3:
        raise ValueError(f"{name} must be 3-D, got shape {tuple(volume.shape)!r}")


def separable_filter(
    volume: np.ndarray,
    weights: Sequence[np.ndarray],
    *,
    mode: str = "reflect",
    cval: float = 0.0,
    out: np.ndarray | None = None,
    n_threads: int | None = None,
) -> np.ndarray:
    """Separable 3-D correlation with odd-length 1-D ``weights`` per axis, on slabs of threads; float32 out.

    ``out[i] = sum_k w0[k0] w1[k1] w2[k2] v[i + k - r]`` with scipy.ndimage boundary ``mode``
    (equals ``scipy.ndimage.correlate1d`` applied along each axis, float32 rounding aside).
    """
    _check_3d(volume)
    if len(weights) != 3 or any(np.ndim(w) != 1 or len(w) % 2 == 0 for w in weights):
        raise ValueError("weights must be 3 one-dimensional arrays of odd length")
    if out is None:
        out = np.empty(volume.shape, dtype=np.float32)
    elif out.shape != volume.shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 with shape {volume.shape}, got {out.dtype} {out.shape}")
    ws = [np.ascontiguousarray(w, dtype=np.float64) for w in weights]
    maps = [boundary_index(int(n), len(w) // 2, len(w) // 2, mode) for n, w in zip(volume.shape, ws, strict=True)]
    src = np.ascontiguousarray(volume) if not volume.flags.c_contiguous else volume

    def work(a: int, b: int) -> None:
        gaussian_slices(src, 0, out[a:b], a, b, ws[0], maps[0], ws[1], maps[1], ws[2], maps[2], cval)

    run_slabs(work, volume.shape[0], n_threads)
    return out


def gaussian_filter(
    volume: np.ndarray,
    sigma: Sequence[float],
    *,
    truncate: float = 4.0,
    mode: str = "reflect",
    cval: float = 0.0,
    out: np.ndarray | None = None,
    n_threads: int | None = None,
) -> np.ndarray:
    """Separable 3-D Gaussian of an in-memory array on slabs of threads; float32 result.

    Equals ``scipy.ndimage.gaussian_filter(volume.astype(float32), sigma, mode=mode,
    truncate=truncate)`` within float32 rounding.

    Parameters
    ----------
    volume : ndarray, shape (n0, n1, n2), any real dtype
    sigma : 3 floats, in voxels per axis
    out : ndarray float32 (n0, n1, n2), optional
        Preallocated output (fastest: no page faults).
    """
    if len(sigma) != 3:
        raise ValueError(f"sigma must have 3 values, got {sigma!r}")
    ws = [gaussian_weights(float(s), truncate) for s in sigma]
    return separable_filter(volume, ws, mode=mode, cval=cval, out=out, n_threads=n_threads)


# ---------------------------------------------------------------------------------------------
# Median: pruned selection network
# ---------------------------------------------------------------------------------------------


def _batcher_pairs(n: int) -> list[tuple[int, int]]:
    """Comparators of Batcher's odd-even merge sort for ``n`` (a power of two) wires."""
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


@lru_cache(maxsize=16)
def median_network(n_inputs: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Selection network returning the median of ``n_inputs`` (odd) values.

    Returns ``(lo, hi, out)``: apply ``v[lo[c]], v[hi[c]] = min, max`` for each
    comparator ``c`` in order on wires ``0 .. n_inputs-1`` (input values); the median
    is then on wire ``out``. Built from Batcher's network on the next power of two
    with the padding wires (half -inf, half +inf) constant-propagated and all
    comparators that do not reach the median wire removed.
    """
    if n_inputs < 1 or n_inputs % 2 == 0:
        raise ValueError(f"n_inputs must be odd and >= 1, got {n_inputs!r}")
    size = 1 << max(0, (n_inputs - 1).bit_length())
    n_pad = size - n_inputs
    n_neg = n_pad // 2
    # logical wire w holds: "var" (a physical row), "neg" (-inf) or "pos" (+inf)
    order = ["neg"] * n_neg + ["var"] * n_inputs + ["pos"] * (n_pad - n_neg)
    phys: list[int] = []
    nxt = 0
    for kind in order:
        if kind == "var":
            phys.append(nxt)
            nxt += 1
        else:
            phys.append(-1)
    state = list(order)
    real: list[tuple[int, int]] = []
    for i, j in _batcher_pairs(size):
        si, sj = state[i], state[j]
        if si == "neg" or sj == "pos":
            continue
        if si == "pos" or sj == "neg":  # outputs just swap places
            state[i], state[j] = sj, si
            phys[i], phys[j] = phys[j], phys[i]
            continue
        real.append((phys[i], phys[j]))
    median_logical = n_neg + n_inputs // 2
    assert state[median_logical] == "var"
    out = phys[median_logical]
    needed = {out}
    kept: list[tuple[int, int]] = []
    for a, b in reversed(real):
        if a in needed or b in needed:
            kept.append((a, b))
            needed.update((a, b))
    kept.reverse()
    lo = np.array([a for a, _ in kept], dtype=np.int64)
    hi = np.array([b for _, b in kept], dtype=np.int64)
    return lo, hi, out


@numba.njit(nogil=True, cache=True)
def median_slices(src, src_z0, dst, z_lo, z_hi, s0, s1, s2, map0, map1, map2, cval, net_lo, net_hi, out_wire):  # pragma: no cover - jit
    """Median over an ``s0 x s1 x s2`` box for output slices ``z_lo..z_hi`` (see :func:`median_filter`)."""
    n1 = src.shape[1]
    n2 = src.shape[2]
    nw = s0 * s1 * s2
    v = np.empty((nw, n2), dtype=src.dtype)
    rowbuf = np.empty(n2 + s2 - 1, dtype=src.dtype)
    cv = cval
    n_cmp = net_lo.shape[0]
    for z in range(z_lo, z_hi):
        for y in range(n1):
            w = 0
            for dz in range(s0):
                sz = map0[z + dz]
                for dy in range(s1):
                    sy = map1[y + dy]
                    if sz < 0 or sy < 0:
                        for p in range(n2 + s2 - 1):
                            rowbuf[p] = cv
                    else:
                        szl = sz - src_z0
                        for p in range(n2 + s2 - 1):
                            sx = map2[p]
                            rowbuf[p] = cv if sx < 0 else src[szl, sy, sx]
                    for dx in range(s2):
                        for x in range(n2):
                            v[w, x] = rowbuf[x + dx]
                        w += 1
            for c in range(n_cmp):
                a = net_lo[c]
                b = net_hi[c]
                for x in range(n2):
                    va = v[a, x]
                    vb = v[b, x]
                    v[a, x] = min(va, vb)
                    v[b, x] = max(va, vb)
            for x in range(n2):
                dst[z - z_lo, y, x] = v[out_wire, x]


MAX_NETWORK_INPUTS = 125


def median_filter(
    volume: np.ndarray,
    size: Sequence[int],
    *,
    mode: str = "reflect",
    cval: float = 0.0,
    out: np.ndarray | None = None,
    n_threads: int | None = None,
) -> np.ndarray:
    """Median over an odd box of at most 125 voxels, on slabs of threads; same dtype as input.

    Bit-identical to ``scipy.ndimage.median_filter(volume, size=size, mode=mode, cval=cval)``
    (NaN-free input).
    """
    _check_3d(volume)
    s = tuple(int(v) for v in size)
    if len(s) != 3 or any(v < 1 or v % 2 == 0 for v in s):
        raise ValueError(f"size must be 3 odd positive ints, got {size!r}")
    if math.prod(s) > MAX_NETWORK_INPUTS:
        raise ValueError(f"size {s} exceeds the selection-network limit of {MAX_NETWORK_INPUTS} voxels")
    if out is None:
        out = np.empty(volume.shape, dtype=volume.dtype)
    elif out.shape != volume.shape or out.dtype != volume.dtype:
        raise ValueError(f"out must be {volume.dtype} with shape {volume.shape}, got {out.dtype} {out.shape}")
    lo, hi, wire = median_network(math.prod(s))
    maps = [boundary_index(n, k // 2, k // 2, mode) for n, k in zip(volume.shape, s, strict=True)]
    src = np.ascontiguousarray(volume)
    cv = np.asarray(cval).astype(volume.dtype)[()]

    def work(a: int, b: int) -> None:
        median_slices(src, 0, out[a:b], a, b, s[0], s[1], s[2], maps[0], maps[1], maps[2], cv, lo, hi, wire)

    run_slabs(work, volume.shape[0], n_threads)
    return out


# ---------------------------------------------------------------------------------------------
# Histograms, streaming per-voxel ops
# ---------------------------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True)
def _bincount16(flat, counts):  # pragma: no cover - jit
    # four sub-histograms break the store-to-load dependency on runs of equal values
    n = flat.shape[0]
    h = np.zeros((4, 65536), dtype=np.int64)
    m = n - n % 4
    for i in range(0, m, 4):
        h[0, np.int64(flat[i]) + 32768] += 1
        h[1, np.int64(flat[i + 1]) + 32768] += 1
        h[2, np.int64(flat[i + 2]) + 32768] += 1
        h[3, np.int64(flat[i + 3]) + 32768] += 1
    for i in range(m, n):
        h[0, np.int64(flat[i]) + 32768] += 1
    for b in range(65536):
        counts[b] += h[0, b] + h[1, b] + h[2, b] + h[3, b]


@numba.njit(nogil=True, cache=True)
def _bincount16_masked(flat, mflat, counts):  # pragma: no cover - jit
    for i in range(flat.shape[0]):
        if mflat[i]:
            counts[np.int64(flat[i]) + 32768] += 1


def bincount_int16(block: np.ndarray, mask: np.ndarray | None = None, counts: np.ndarray | None = None) -> np.ndarray:
    """Histogram of an int16 (or int8/uint8) array with one bin per value; bin ``b`` = value ``b - 32768``.

    Returns (and accumulates into) an int64 array of length 65536.
    """
    if block.dtype not in (np.int16, np.int8, np.uint8):
        raise TypeError(f"block must be int16, int8 or uint8, got {block.dtype}")
    if counts is None:
        counts = np.zeros(65536, dtype=np.int64)
    flat = np.ascontiguousarray(block).reshape(-1)
    if mask is None:
        _bincount16(flat, counts)
    else:
        m = np.ascontiguousarray(mask, dtype=np.bool_).reshape(-1)
        if m.shape != flat.shape:
            raise ValueError(f"mask shape {mask.shape} does not match block shape {block.shape}")
        _bincount16_masked(flat, m, counts)
    return counts


@numba.njit(nogil=True, cache=True)
def _window_clip(src, dst, lo, hi, scale, offset):  # pragma: no cover - jit
    lo32 = np.float32(lo)
    hi32 = np.float32(hi)
    sc = np.float32(scale)
    of = np.float32(offset)
    for i in range(src.shape[0]):
        v = np.float32(src[i])
        v = min(max(v, lo32), hi32)
        dst[i] = v * sc + of


def window_clip(
    volume: np.ndarray,
    lo: float,
    hi: float,
    *,
    scale: float = 1.0,
    offset: float = 0.0,
    out: np.ndarray | None = None,
    n_threads: int | None = None,
) -> np.ndarray:
    """``clip(volume, lo, hi) * scale + offset`` in float32, on threads, into ``out`` if given."""
    if out is None:
        out = np.empty(volume.shape, dtype=np.float32)
    elif out.shape != volume.shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 with shape {volume.shape}, got {out.dtype} {out.shape}")
    src = np.ascontiguousarray(volume).reshape(-1)
    dst = out.reshape(-1)

    def work(a: int, b: int) -> None:
        _window_clip(src[a:b], dst[a:b], lo, hi, scale, offset)

    run_slabs(work, src.shape[0], n_threads, parts_per_thread=1)
    return out


# ---------------------------------------------------------------------------------------------
# Connected components: per-block statistics and union-find across block faces
# ---------------------------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True)
def label_stats(labels, n_labels, o0, o1, o2, N1, N2):  # pragma: no cover - jit
    """Voxel count and global raster index of the first voxel of each local label.

    ``labels`` is a block at global offset ``(o0, o1, o2)`` of a volume with axis
    lengths ``(., N1, N2)``. Returns ``(counts, first)`` of length ``n_labels + 1``
    (``first[l] = -1`` for absent labels).
    """
    counts = np.zeros(n_labels + 1, dtype=np.int64)
    first = np.full(n_labels + 1, -1, dtype=np.int64)
    b0, b1, b2 = labels.shape
    for z in range(b0):
        for y in range(b1):
            base = ((o0 + z) * N1 + (o1 + y)) * N2 + o2
            for x in range(b2):
                lab = labels[z, y, x]
                if lab != 0:
                    counts[lab] += 1
                    if first[lab] < 0:
                        first[lab] = base + x
    return counts, first


@numba.njit(nogil=True, cache=True)
def uf_find(parent, x):  # pragma: no cover - jit
    """Root of ``x`` with path halving."""
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@numba.njit(nogil=True, cache=True)
def uf_union_planes(parent, left, right, offsets):  # pragma: no cover - jit
    """Union labels of two facing planes: ``left[i, j]`` touches ``right[i + d1, j + d2]``.

    ``left``/``right`` hold *global* provisional labels (0 = background) of the last
    plane before and the first plane after a block boundary; ``offsets`` is an
    ``(m, 2)`` array of in-plane neighbour offsets allowed by the connectivity.
    The smaller root becomes the parent. Returns the number of unions performed.
    """
    n1, n2 = left.shape
    merged = 0
    for t in range(offsets.shape[0]):
        d1 = offsets[t, 0]
        d2 = offsets[t, 1]
        for i in range(max(0, -d1), min(n1, n1 - d1)):
            for j in range(max(0, -d2), min(n2, n2 - d2)):
                a = left[i, j]
                if a == 0:
                    continue
                b = right[i + d1, j + d2]
                if b == 0:
                    continue
                ra = uf_find(parent, a)
                rb = uf_find(parent, b)
                if ra != rb:
                    if ra < rb:
                        parent[rb] = ra
                    else:
                        parent[ra] = rb
                    merged += 1
    return merged


@numba.njit(nogil=True, cache=True)
def uf_flatten(parent):  # pragma: no cover - jit
    """Point every element straight at its root (in place) and return ``parent``."""
    for i in range(parent.shape[0]):
        parent[i] = uf_find(parent, i)
    return parent


@numba.njit(nogil=True, cache=True)
def minmax(values):  # pragma: no cover - jit
    """``(min, max)`` of a non-empty flat integer array in one pass."""
    lo = values[0]
    hi = values[0]
    for i in range(values.shape[0]):  # branch-free min/max vectorises (SIMD)
        v = values[i]
        lo = min(lo, v)
        hi = max(hi, v)
    return lo, hi


@numba.njit(nogil=True, cache=True)
def lookup(values, offset, lut, out):  # pragma: no cover - jit
    """``out = lut[values - offset]`` (flat arrays): a per-voxel function tabulated over integer values."""
    for i in range(values.shape[0]):
        out[i] = lut[np.int64(values[i]) - offset]


@numba.njit(nogil=True, cache=True)
def apply_lut(labels, offset, lut, out):  # pragma: no cover - jit
    """``out = lut[labels + offset]`` where ``labels != 0``, else 0 (flat arrays)."""
    for i in range(labels.shape[0]):
        lab = labels[i]
        out[i] = 0 if lab == 0 else lut[np.int64(lab) + offset]


# ---------------------------------------------------------------------------------------------
# Interpolation (scipy.ndimage order 0 / 1 semantics)
# ---------------------------------------------------------------------------------------------

#: Interpolation boundary modes understood by the interpolation kernels (scipy names).
INTERP_MODES = ("nearest", "reflect", "mirror", "constant", "grid-constant")
_NEAREST, _REFLECT, _MIRROR, _CONSTANT, _GRID_CONSTANT = range(5)


def interp_mode_code(mode: str) -> int:
    if mode not in INTERP_MODES:
        raise ValueError(f"mode must be one of {INTERP_MODES}, got {mode!r}")
    return INTERP_MODES.index(mode)


@numba.njit(nogil=True, cache=True, inline="always")
def _map_index(i, n, mode):  # pragma: no cover - jit
    if 0 <= i < n:
        return i
    if mode == 0:
        return 0 if i < 0 else n - 1
    if mode == 1:
        p = 2 * n
        m = i % p
        return m if m < n else p - 1 - m
    if mode == 2:
        if n == 1:
            return 0
        p = 2 * n - 2
        m = i % p
        return m if m < n else p - m
    return -1


@numba.njit(nogil=True, cache=True, inline="always")
def _taps(x, n, order, mode):  # pragma: no cover - jit
    """Neighbour indices and weight of coordinate ``x`` on an axis of length ``n``.

    Returns ``(i0, i1, f)``: value = ``(1 - f) * v[i0] + f * v[i1]``; an index of -1
    means cval. Reproduces scipy.ndimage (>= 1.6) for orders 0 and 1.
    """
    if mode == 3 and (x < 0.0 or x > n - 1):
        return -1, -1, 0.0
    if order == 0:
        if mode == 1 and n > 1:  # scipy maps reflected coordinates before rounding
            p = 2.0 * n
            if x < 0.0:
                if x < -p:
                    x = p * np.floor(-x / p) + x
                x = x + p if x < -n else -x - 1.0
            elif x > n - 1:
                x -= p * np.floor(x / p)
                if x >= n:
                    x = p - x - 1.0
        if mode == 2 and n > 1:  # scipy maps mirrored coordinates before rounding
            p = 2.0 * n - 2.0
            if x < 0.0:
                x = p * np.floor(-x / p) + x
                x = x + p if x <= 1.0 - n else -x
            elif x > n - 1:
                x -= p * np.floor(x / p)
                if x >= n:
                    x = p - x
        i = np.int64(np.floor(x + 0.5))
        m = _map_index(i, n, mode)
        return m, m, 0.0
    fl = np.floor(x)
    i0 = np.int64(fl)
    return _map_index(i0, n, mode), _map_index(i0 + 1, n, mode), x - fl


@numba.njit(nogil=True, cache=True)
def axis_taps(coords, n, order, mode):  # pragma: no cover - jit
    """Vectorised :func:`_taps` for a 1-D array of coordinates."""
    m = coords.shape[0]
    i0 = np.empty(m, dtype=np.int64)
    i1 = np.empty(m, dtype=np.int64)
    w = np.empty(m, dtype=np.float64)
    for j in range(m):
        a, b, f = _taps(coords[j], n, order, mode)
        i0[j] = a
        i1[j] = b
        w[j] = f
    return i0, i1, w


@numba.njit(nogil=True, cache=True)
def lerp_axis0(src, dst, j_lo, j_hi, i0, i1, w, cval):  # pragma: no cover - jit
    n1, n2 = src.shape[1], src.shape[2]
    cv = np.float32(cval)
    for j in range(j_lo, j_hi):
        a = i0[j]
        b = i1[j]
        f = np.float32(w[j])
        g = np.float32(1.0) - f
        for y in range(n1):
            for x in range(n2):
                va = cv if a < 0 else np.float32(src[a, y, x])
                vb = cv if b < 0 else np.float32(src[b, y, x])
                dst[j, y, x] = g * va + f * vb


@numba.njit(nogil=True, cache=True)
def lerp_axis1(src, dst, z_lo, z_hi, i0, i1, w, cval):  # pragma: no cover - jit
    n2 = src.shape[2]
    m = i0.shape[0]
    cv = np.float32(cval)
    for z in range(z_lo, z_hi):
        for j in range(m):
            a = i0[j]
            b = i1[j]
            f = np.float32(w[j])
            g = np.float32(1.0) - f
            for x in range(n2):
                va = cv if a < 0 else np.float32(src[z, a, x])
                vb = cv if b < 0 else np.float32(src[z, b, x])
                dst[z, j, x] = g * va + f * vb


@numba.njit(nogil=True, cache=True)
def lerp_axis2(src, dst, z_lo, z_hi, i0, i1, w, cval):  # pragma: no cover - jit
    n1 = src.shape[1]
    m = i0.shape[0]
    cv = np.float32(cval)
    for z in range(z_lo, z_hi):
        for y in range(n1):
            for j in range(m):
                a = i0[j]
                b = i1[j]
                f = np.float32(w[j])
                va = cv if a < 0 else np.float32(src[z, y, a])
                vb = cv if b < 0 else np.float32(src[z, y, b])
                dst[z, y, j] = (np.float32(1.0) - f) * va + f * vb


def resample_separable(
    volume: np.ndarray,
    coords: Sequence[np.ndarray],
    *,
    order: int,
    mode: str = "nearest",
    cval: float = 0.0,
    n_threads: int | None = None,
) -> np.ndarray:
    """Resample on a separable grid: output ``[j0, j1, j2]`` samples ``volume`` at ``(coords[0][j0], coords[1][j1], coords[2][j2])``.

    Orders 0 (same dtype as input) and 1 (float32), scipy.ndimage boundary semantics
    (``map_coordinates`` with the same coordinates gives the same values).
    """
    _check_3d(volume)
    if order not in (0, 1):
        raise ValueError(f"order must be 0 or 1 here, got {order!r}")
    code = interp_mode_code(mode)
    taps = [axis_taps(np.asarray(c, dtype=np.float64), int(n), order, code) for c, n in zip(coords, volume.shape, strict=True)]
    if order == 0:
        idx = [np.where(t[0] < 0, 0, t[0]) for t in taps]
        out = volume[np.ix_(*idx)]
        if any(np.any(t[0] < 0) for t in taps):
            b0 = (taps[0][0] < 0)[:, None, None]
            b1 = (taps[1][0] < 0)[None, :, None]
            b2 = (taps[2][0] < 0)[None, None, :]
            out[b0 | b1 | b2] = np.asarray(cval).astype(out.dtype)
        return out
    # most-shrinking axis first keeps the intermediates small
    # most-shrinking axis (largest coordinate step) first keeps the intermediates small; the order
    # depends only on the steps so blocks of a chunked grid round exactly like the whole grid
    steps = [float(c[1] - c[0]) if len(c) > 1 else 1.0 for c in coords]
    cur: np.ndarray = np.ascontiguousarray(volume)
    kernels = (lerp_axis0, lerp_axis1, lerp_axis2)
    for a in sorted(range(3), key=lambda a: (-steps[a], a)):
        shape = list(cur.shape)
        shape[a] = len(taps[a][0])
        nxt = np.empty(tuple(shape), dtype=np.float32)
        _run_lerp(kernels[a], cur, nxt, taps[a], cval, n_threads)
        cur = nxt
    return cur


def _run_lerp(kernel: Callable[..., None], src: np.ndarray, dst: np.ndarray, taps: tuple[np.ndarray, np.ndarray, np.ndarray],
              cval: float, n_threads: int | None) -> None:
    i0, i1, w = taps

    def work(lo: int, hi: int) -> None:
        kernel(src, dst, lo, hi, i0, i1, w, cval)

    run_slabs(work, dst.shape[0], n_threads)


@numba.njit(nogil=True, cache=True)
def affine_slices(src, dst, z_lo, z_hi, mat, off, order, mode, cval):  # pragma: no cover - jit
    """Orders 0/1 of ``scipy.ndimage.affine_transform(src, mat, off)`` for output slices ``z_lo..z_hi``."""
    n0, n1, n2 = src.shape
    m1, m2 = dst.shape[1], dst.shape[2]
    cv = np.float64(cval)
    for z in range(z_lo, z_hi):
        for y in range(m1):
            for x in range(m2):
                c0 = mat[0, 0] * z + mat[0, 1] * y + mat[0, 2] * x + off[0]
                c1 = mat[1, 0] * z + mat[1, 1] * y + mat[1, 2] * x + off[1]
                c2 = mat[2, 0] * z + mat[2, 1] * y + mat[2, 2] * x + off[2]
                a0, b0, f0 = _taps(c0, n0, order, mode)
                a1, b1, f1 = _taps(c1, n1, order, mode)
                a2, b2, f2 = _taps(c2, n2, order, mode)
                if mode == 3 and (a0 < 0 or a1 < 0 or a2 < 0):
                    dst[z - z_lo, y, x] = cv
                    continue
                if order == 0:
                    if a0 < 0 or a1 < 0 or a2 < 0:
                        dst[z - z_lo, y, x] = cv
                    else:
                        dst[z - z_lo, y, x] = src[a0, a1, a2]
                    continue
                acc = 0.0
                for t0 in range(2):
                    i = a0 if t0 == 0 else b0
                    w0 = (1.0 - f0) if t0 == 0 else f0
                    for t1 in range(2):
                        j = a1 if t1 == 0 else b1
                        w1 = (1.0 - f1) if t1 == 0 else f1
                        for t2 in range(2):
                            k = a2 if t2 == 0 else b2
                            w2 = (1.0 - f2) if t2 == 0 else f2
                            if i < 0 or j < 0 or k < 0:
                                v = cv
                            else:
                                v = np.float64(src[i, j, k])
                            acc += w0 * w1 * w2 * v
                dst[z - z_lo, y, x] = acc


def affine_resample(
    volume: np.ndarray,
    matrix: np.ndarray,
    offset: np.ndarray,
    output_shape: Sequence[int],
    *,
    order: int,
    mode: str = "constant",
    cval: float = 0.0,
    out_dtype: np.dtype | type | None = None,
    n_threads: int | None = None,
) -> np.ndarray:
    """Threaded orders 0/1 of ``scipy.ndimage.affine_transform(volume, matrix, offset, output_shape)``."""
    _check_3d(volume)
    if order not in (0, 1):
        raise ValueError(f"order must be 0 or 1 here, got {order!r}")
    code = interp_mode_code(mode)
    dt = np.dtype(out_dtype) if out_dtype is not None else (volume.dtype if order == 0 else np.dtype(np.float32))
    out = np.empty(tuple(int(s) for s in output_shape), dtype=dt)
    src = np.ascontiguousarray(volume)
    mat = np.ascontiguousarray(matrix, dtype=np.float64)
    off = np.ascontiguousarray(offset, dtype=np.float64)
    run_slabs(lambda a, b: affine_slices(src, out[a:b], a, b, mat, off, order, code, cval), out.shape[0], n_threads)
    return out


# ---------------------------------------------------------------------------------------------
# Edge-preserving denoising
# ---------------------------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True)
def bilateral_slices(src, src_z0, dst, z_lo, z_hi, map0, map1, map2, r0, r1, r2, wsp, inv2sr2):  # pragma: no cover - jit
    """3-D bilateral filter; ``wsp[d0, d1, d2]`` are spatial weights, range weight ``exp(-dv^2 * inv2sr2)``."""
    n1, n2 = src.shape[1], src.shape[2]
    for z in range(z_lo, z_hi):
        for y in range(n1):
            for x in range(n2):
                c = np.float64(src[map0[z + r0] - src_z0, map1[y + r1], map2[x + r2]])
                num = 0.0
                den = 0.0
                for d0 in range(2 * r0 + 1):
                    s0 = map0[z + d0] - src_z0
                    for d1 in range(2 * r1 + 1):
                        s1 = map1[y + d1]
                        for d2 in range(2 * r2 + 1):
                            ws = wsp[d0, d1, d2]
                            if ws == 0.0:
                                continue
                            v = np.float64(src[s0, s1, map2[x + d2]])
                            dv = v - c
                            wgt = ws * np.exp(-dv * dv * inv2sr2)
                            num += wgt * v
                            den += wgt
                dst[z - z_lo, y, x] = num / den


@numba.njit(nogil=True, cache=True)
def perona_malik_step(u, out, z_lo, z_hi, inv_h2, kappa2, dt, quadratic):  # pragma: no cover - jit
    """One explicit Perona-Malik step with zero-flux borders: ``out = u + dt * div(g(|grad u|) grad u)``.

    ``inv_h2[a] = 1 / spacing[a]**2``; ``g = exp(-(d/kappa)^2)`` or ``1 / (1 + (d/kappa)^2)``
    where ``d`` is the one-sided difference quotient towards each neighbour.
    """
    n0, n1, n2 = u.shape
    for z in range(z_lo, z_hi):
        for y in range(n1):
            for x in range(n2):
                c = u[z, y, x]
                acc = 0.0
                for a in range(3):
                    for s in (-1, 1):
                        zz, yy, xx = z, y, x
                        if a == 0:
                            zz = z + s
                            if zz < 0 or zz >= n0:
                                continue
                        elif a == 1:
                            yy = y + s
                            if yy < 0 or yy >= n1:
                                continue
                        else:
                            xx = x + s
                            if xx < 0 or xx >= n2:
                                continue
                        d = u[zz, yy, xx] - c
                        q = d * d * inv_h2[a] / kappa2
                        g = 1.0 / (1.0 + q) if quadratic else np.exp(-q)
                        acc += g * d * inv_h2[a]
                out[z, y, x] = c + dt * acc


# ---------------------------------------------------------------------------------------------
# Connected components: run-based two-pass labelling (GIL-free, slab-parallel)
# ---------------------------------------------------------------------------------------------


def _causal_rows(connectivity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Earlier rows ``(dz, dy)`` a run can touch and the x-extension of the overlap test (scipy connectivity)."""
    rows = []
    for dz, dy in ((0, -1), (-1, -1), (-1, 0), (-1, 1)):
        base = (dz != 0) + (dy != 0)
        if base > connectivity:
            continue
        rows.append((dz, dy, 1 if base + 1 <= connectivity else 0))
    arr = np.array(rows, dtype=np.int64)
    return arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy()


@numba.njit(nogil=True, cache=True)
def _uf_union_min(parent, a, b):  # pragma: no cover - jit
    ra = uf_find(parent, a)
    rb = uf_find(parent, b)
    if ra == rb:
        return ra
    if ra < rb:
        parent[rb] = ra
        return ra
    parent[ra] = rb
    return rb


@numba.njit(nogil=True, cache=True)
def _count_runs(mask, z0, z1):  # pragma: no cover - jit
    n1 = mask.shape[1]
    n2 = mask.shape[2]
    c = 0
    for z in range(z0, z1):
        for y in range(n1):
            prev = False
            for x in range(n2):
                v = mask[z, y, x]
                if v and not prev:
                    c += 1
                prev = v
    return c


@numba.njit(nogil=True, cache=True)
def _runs_first_pass(mask, z0, z1, dzs, dys, exts, row_ptr, rs, re, rl, parent):  # pragma: no cover - jit
    n1 = mask.shape[1]
    n2 = mask.shape[2]
    nlab = 0
    nr = 0
    nnb = dzs.shape[0]
    ptr = np.zeros(nnb, dtype=np.int64)
    end = np.zeros(nnb, dtype=np.int64)
    for z in range(z0, z1):
        for y in range(n1):
            r = (z - z0) * n1 + y
            row_ptr[r] = nr
            for t in range(nnb):
                zz = z + dzs[t]
                yy = y + dys[t]
                if zz < z0 or yy < 0 or yy >= n1:
                    ptr[t] = 0
                    end[t] = 0
                else:
                    rr = (zz - z0) * n1 + yy
                    ptr[t] = row_ptr[rr]
                    end[t] = row_ptr[rr + 1]
            x = 0
            while x < n2:
                if not mask[z, y, x]:
                    x += 1
                    continue
                s = x
                while x < n2 and mask[z, y, x]:
                    x += 1
                e = x - 1
                lab = 0
                for t in range(nnb):
                    ext = exts[t]
                    q = ptr[t]
                    while q < end[t] and re[q] < s - ext:
                        q += 1
                    ptr[t] = q
                    while q < end[t] and rs[q] <= e + ext:
                        if lab == 0:
                            lab = uf_find(parent, rl[q])
                        else:
                            lab = _uf_union_min(parent, lab, rl[q])
                        q += 1
                if lab == 0:
                    nlab += 1
                    parent[nlab] = nlab
                    lab = nlab
                rs[nr] = s
                re[nr] = e
                rl[nr] = lab
                nr += 1
    row_ptr[(z1 - z0) * n1] = nr
    return nlab


def runs_label_slab(mask: np.ndarray, z0: int, z1: int, dzs: np.ndarray, dys: np.ndarray, exts: np.ndarray) -> tuple:
    """First pass of run-based labelling of planes ``z0..z1`` of a 3-D bool mask.

    Returns ``(row_ptr, rs, re, rl, parent, n)``: the runs of every row (start, inclusive
    end, provisional label), the union-find ``parent`` over provisional labels ``1..n``
    (labels are created in raster order; unions keep the smaller label as root).
    Connections to planes before ``z0`` are left to :func:`runs_merge_face`.
    """
    nruns = int(_count_runs(mask, z0, z1))
    row_ptr = np.zeros((z1 - z0) * mask.shape[1] + 1, dtype=np.int64)
    rs = np.empty(nruns, dtype=np.int32)
    re = np.empty(nruns, dtype=np.int32)
    rl = np.empty(nruns, dtype=np.int64)
    parent = np.zeros(nruns + 1, dtype=np.int64)
    n = int(_runs_first_pass(mask, z0, z1, dzs, dys, exts, row_ptr, rs, re, rl, parent))
    return row_ptr, rs, re, rl, parent[: n + 1], n


@numba.njit(nogil=True, cache=True)
def runs_merge_face(gparent, n1, ptr_a, rs_a, re_a, rl_a, off_a, row0_a, ptr_b, rs_b, re_b, rl_b, off_b, dys, exts):  # pragma: no cover - jit
    """Unite runs of plane ``row0_a`` (rows of slab A, the plane just before slab B) with B's first plane.

    ``dys``/``exts`` are the ``dz = -1`` entries of the causal neighbourhood. Labels are
    global: ``local + offset``.
    """
    for y in range(n1):
        b0 = ptr_b[y]
        b1 = ptr_b[y + 1]
        for t in range(dys.shape[0]):
            yy = y + dys[t]
            if yy < 0 or yy >= n1:
                continue
            ext = exts[t]
            q = ptr_a[row0_a + yy]
            qend = ptr_a[row0_a + yy + 1]
            for p in range(b0, b1):
                s = rs_b[p]
                e = re_b[p]
                while q < qend and re_a[q] < s - ext:
                    q += 1
                k = q
                while k < qend and rs_a[k] <= e + ext:
                    _uf_union_min(gparent, rl_b[p] + off_b, rl_a[k] + off_a)
                    k += 1


@numba.njit(nogil=True, cache=True)
def runs_write(out, z0, z1, row_ptr, rs, re, rl, lut, offset):  # pragma: no cover - jit
    """Second pass: write ``lut[label + offset]`` for every run of planes ``z0..z1`` (0 elsewhere)."""
    n1 = out.shape[1]
    n2 = out.shape[2]
    for z in range(z0, z1):
        for y in range(n1):
            r = (z - z0) * n1 + y
            x = 0
            for q in range(row_ptr[r], row_ptr[r + 1]):
                for xx in range(x, rs[q]):
                    out[z, y, xx] = 0
                v = lut[rl[q] + offset]
                for xx in range(rs[q], re[q] + 1):
                    out[z, y, xx] = v
                x = re[q] + 1
            for xx in range(x, n2):
                out[z, y, xx] = 0


@numba.njit(nogil=True, cache=True)
def _finish_lut(gparent, sizes, min_size):  # pragma: no cover - jit
    n = gparent.shape[0]
    for i in range(n):
        gparent[i] = uf_find(gparent, i)
    root_size = np.zeros(n, dtype=np.int64)
    for i in range(1, n):
        root_size[gparent[i]] += sizes[i]
    final = np.zeros(n, dtype=np.int32)
    k = 0
    for i in range(1, n):  # provisional labels are in raster order of creation; roots are set minima
        if gparent[i] == i and root_size[i] >= min_size:
            k += 1
            final[i] = k
    lut = np.zeros(n, dtype=np.int32)
    for i in range(1, n):
        lut[i] = final[gparent[i]]
    return lut, k


@numba.njit(nogil=True, cache=True)
def _run_sizes(rs, re, rl, sizes, offset):  # pragma: no cover - jit
    for q in range(rs.shape[0]):
        sizes[rl[q] + offset] += re[q] - rs[q] + 1


def label_runs(
    mask: np.ndarray,
    connectivity: int = 1,
    *,
    min_size: int = 0,
    out: np.ndarray | None = None,
    n_threads: int | None = None,
) -> tuple[np.ndarray, int]:
    """Connected components of a 3-D mask: run-based union-find, slabs on threads (GIL-free).

    Identical to ``scipy.ndimage.label(mask, generate_binary_structure(3, connectivity))``
    (labels 1..n in raster order of first voxel), int32; components smaller than
    ``min_size`` voxels are dropped and the rest renumbered.
    """
    _check_3d(mask, "mask")
    if connectivity not in (1, 2, 3):
        raise ValueError(f"connectivity must be 1, 2 or 3, got {connectivity!r}")
    m = np.ascontiguousarray(mask, dtype=np.bool_)
    n0 = m.shape[0]
    n1 = m.shape[1]
    if out is None:
        out = np.empty(m.shape, dtype=np.int32)
    elif out.shape != m.shape or out.dtype != np.int32:
        raise ValueError(f"out must be int32 with shape {m.shape}, got {out.dtype} {out.shape}")
    dzs, dys, exts = _causal_rows(connectivity)
    face = dzs == -1
    n_threads = default_threads() if n_threads is None else int(n_threads)
    ranges = slab_ranges(n0, n_threads, min_size=16)
    results: list[tuple] = [None] * len(ranges)  # type: ignore[list-item]

    def first(k: int) -> None:
        a, b = ranges[k]
        results[k] = runs_label_slab(m, a, b, dzs, dys, exts)

    if len(ranges) == 1:
        first(0)
    else:
        with ThreadPoolExecutor(max_workers=len(ranges)) as ex:
            for f in [ex.submit(first, k) for k in range(len(ranges))]:
                f.result()
    offsets = np.cumsum([0] + [r[5] for r in results])
    total = int(offsets[-1])
    gparent = np.empty(total + 1, dtype=np.int64)
    gparent[0] = 0
    sizes = np.zeros(total + 1, dtype=np.int64)
    for k, r in enumerate(results):
        gparent[offsets[k] + 1 : offsets[k + 1] + 1] = r[4][1:] + offsets[k]
        _run_sizes(r[1], r[2], r[3], sizes, int(offsets[k]))
    for k in range(1, len(ranges)):
        pa, pb = results[k - 1], results[k]
        row0_a = (ranges[k - 1][1] - 1 - ranges[k - 1][0]) * n1
        runs_merge_face(gparent, n1, pa[0], pa[1], pa[2], pa[3], int(offsets[k - 1]), row0_a,
                        pb[0], pb[1], pb[2], pb[3], int(offsets[k]), dys[face], exts[face])
    lut, n = _finish_lut(gparent, sizes, int(min_size))

    def second(k: int) -> None:
        a, b = ranges[k]
        r = results[k]
        runs_write(out, a, b, r[0], r[1], r[2], r[3], lut, int(offsets[k]))

    if len(ranges) == 1:
        second(0)
    else:
        with ThreadPoolExecutor(max_workers=len(ranges)) as ex:
            for f in [ex.submit(second, k) for k in range(len(ranges))]:
                f.result()
    return out, int(n)


@numba.njit(nogil=True, cache=True)
def runs_to_planes(out, plane_lo, row_ptr, rs, re, rl, lut, add):  # pragma: no cover - jit
    """Write planes ``plane_lo .. plane_lo + out.shape[0]`` of a run table into ``out``.

    Each run gets ``lut[label] + add`` (``0`` stays background); everything else 0.
    """
    m, n1, n2 = out.shape
    for p in range(m):
        for y in range(n1):
            r = (plane_lo + p) * n1 + y
            x = 0
            for q in range(row_ptr[r], row_ptr[r + 1]):
                for xx in range(x, rs[q]):
                    out[p, y, xx] = 0
                v = lut[rl[q]]
                if v != 0:
                    v += add
                for xx in range(rs[q], re[q] + 1):
                    out[p, y, xx] = v
                x = re[q] + 1
            for xx in range(x, n2):
                out[p, y, xx] = 0


@numba.njit(nogil=True, cache=True)
def runs_stats(row_ptr, rs, re, rl, lut, n, z0, n1, n2):  # pragma: no cover - jit
    """Voxel count and global raster index of the first voxel of labels ``lut[run label]`` (1..n)."""
    counts = np.zeros(n + 1, dtype=np.int64)
    first = np.full(n + 1, -1, dtype=np.int64)
    for r in range(row_ptr.shape[0] - 1):
        z = z0 + r // n1
        y = r % n1
        for q in range(row_ptr[r], row_ptr[r + 1]):
            lab = lut[rl[q]]
            if lab == 0:
                continue
            counts[lab] += re[q] - rs[q] + 1
            if first[lab] < 0:
                first[lab] = (z * n1 + y) * n2 + rs[q]
    return counts, first


def label_slab_runs(mask: np.ndarray, connectivity: int) -> tuple[tuple, np.ndarray, int]:
    """Label one in-memory slab into a compact run table.

    Returns ``(runs, lut, n)`` where ``runs = (row_ptr, rs, re, rl)`` and ``lut[rl]`` gives
    labels 1..n numbered in raster order within the slab (as ``scipy.ndimage.label``).
    """
    _check_3d(mask, "mask")
    m = np.ascontiguousarray(mask, dtype=np.bool_)
    dzs, dys, exts = _causal_rows(connectivity)
    row_ptr, rs, re, rl, parent, n = runs_label_slab(m, 0, m.shape[0], dzs, dys, exts)
    sizes = np.zeros(n + 1, dtype=np.int64)
    _run_sizes(rs, re, rl, sizes, 0)
    lut, k = _finish_lut(parent.copy(), sizes, 0)
    return (row_ptr, rs, re, rl), lut, int(k)


@numba.njit(nogil=True, cache=True)
def _hist_uniform(flat, edges, norm, counts):  # pragma: no cover - jit
    nb = edges.shape[0] - 1
    e0 = edges[0]
    e1 = edges[nb]
    for i in range(flat.shape[0]):
        v = flat[i]
        if not (v >= e0 and v <= e1):
            continue  # outside the range, or NaN
        k = np.int64((v - e0) * norm)
        if k >= nb:
            k = nb - 1
        if k < 0:
            k = 0
        while k > 0 and v < edges[k]:
            k -= 1
        while k < nb - 1 and v >= edges[k + 1]:
            k += 1
        counts[k] += 1


@numba.njit(nogil=True, cache=True)
def _hist_uniform_masked(flat, mflat, edges, norm, counts):  # pragma: no cover - jit
    nb = edges.shape[0] - 1
    e0 = edges[0]
    e1 = edges[nb]
    for i in range(flat.shape[0]):
        if not mflat[i]:
            continue
        v = flat[i]
        if not (v >= e0 and v <= e1):
            continue
        k = np.int64((v - e0) * norm)
        if k >= nb:
            k = nb - 1
        if k < 0:
            k = 0
        while k > 0 and v < edges[k]:
            k -= 1
        while k < nb - 1 and v >= edges[k + 1]:
            k += 1
        counts[k] += 1


def histogram_uniform(block: np.ndarray, edges: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Counts of ``block`` in equal-width bins with ``edges`` -- the same counts as ``numpy.histogram``.

    Bin ``k`` holds ``edges[k] <= v < edges[k + 1]`` (the last bin is closed); values
    outside ``[edges[0], edges[-1]]`` and NaN are not counted. Pass the edges numpy
    builds (``numpy.histogram_bin_edges`` with the data's dtype) to match it exactly.
    """
    flat = np.ascontiguousarray(block).reshape(-1)
    e = np.ascontiguousarray(edges)
    nb = e.shape[0] - 1
    counts = np.zeros(nb, dtype=np.int64)
    span = float(e[-1]) - float(e[0])
    norm = nb / span if span > 0 else 0.0
    if mask is None:
        _hist_uniform(flat, e, norm, counts)
    else:
        _hist_uniform_masked(flat, np.ascontiguousarray(mask, dtype=np.bool_).reshape(-1), e, norm, counts)
    return counts
