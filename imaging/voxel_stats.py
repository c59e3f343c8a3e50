"""Whole-volume counts and sums in one pass over the voxels, equal to their numpy expressions.

Quality control (:mod:`imaging.qc`) reads a handful of statistics of every converted volume:
its minimum and how many voxels sit at it, how many lie below or above a plausible range, its
mean, and the sum and count of the voxels above the mean. As numpy expressions they take six
passes and boolean temporaries (``volume[volume > mean].sum()`` copies the selected voxels);
for an integer volume the compiled loops here take one pass each and give the same numbers:

- integers are summed in int64, exactly (numpy sums int8/16 and uint8/16 into a 64-bit
  integer; its float64 mean of such a volume is the exact sum divided by the voxel count,
  every partial sum being an integer below 2**53 for fewer than 2**37 voxels);
- a voxel is compared with a float bound as a float64, as numpy compares an integer array
  with a Python float (its values are exact in float64).

Other dtypes (floats, 32- and 64-bit integers, bool) and dask arrays are left to the numpy
expressions (callers): a float64 sum of 32-bit integers need not be exact.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["compiled_dtype", "range_counts", "mean_and_above", "immerkaer_median_abs", "warm_up"]


def compiled_dtype(volume: object) -> bool:
    """True for a non-empty numpy array the compiled loops take (8- or 16-bit integers, fewer than 2**37 voxels)."""
    return isinstance(volume, np.ndarray) and volume.dtype.kind in "iu" and volume.dtype.itemsize <= 2 \
        and 0 < volume.size < 1 << 37


@numba.njit(nogil=True, cache=True)
def _range_counts(flat, lo, hi):  # pragma: no cover - compiled
    vmin = flat[0]
    at_min = 0
    below = 0
    above = 0
    for i in range(flat.shape[0]):
        x = flat[i]
        if x < vmin:
            vmin = x
            at_min = 1
        elif x == vmin:
            at_min += 1
        xf = np.float64(x)
        if xf < lo:
            below += 1
        elif xf > hi:
            above += 1
    return np.int64(vmin), below, above, at_min


@numba.njit(nogil=True, cache=True)
def _mean_and_above(flat):  # pragma: no cover - compiled
    total = np.int64(0)
    for i in range(flat.shape[0]):
        total += np.int64(flat[i])
    mean = np.float64(total) / np.float64(flat.shape[0])
    above_sum = np.int64(0)
    above_count = np.int64(0)
    for i in range(flat.shape[0]):
        x = np.int64(flat[i])
        if np.float64(x) > mean:
            above_sum += x
            above_count += 1
    return mean, above_sum, above_count


@numba.njit(nogil=True, cache=True)
def _immerkaer_median_abs(a):  # pragma: no cover - compiled
    rows, cols = a.shape
    n = (rows - 2) * (cols - 2)
    top = 0
    for i in range(1, rows - 1):
        for j in range(1, cols - 1):
            r = _immerkaer_at(a, i, j)
            top = max(top, abs(r))
    hist = np.zeros(top + 1, dtype=np.int64)
    for i in range(1, rows - 1):
        for j in range(1, cols - 1):
            hist[abs(_immerkaer_at(a, i, j))] += 1
    # the two middle order statistics, k = (n - 1) // 2 and n // 2 (0-based), as np.median takes them
    k_lo = (n - 1) // 2
    k_hi = n // 2
    lo = -1
    hi = -1
    seen = 0
    for v in range(top + 1):
        seen += hist[v]
        if lo < 0 and seen > k_lo:
            lo = v
        if seen > k_hi:
            hi = v
            break
    return (np.float64(lo) + np.float64(hi)) / 2.0


@numba.njit(nogil=True, cache=True, inline="always")
def _immerkaer_at(a, i, j):  # pragma: no cover - compiled
    return ((np.int64(a[i - 1, j - 1]) + np.int64(a[i - 1, j + 1]) + np.int64(a[i + 1, j - 1])
             + np.int64(a[i + 1, j + 1]))
            - 2 * (np.int64(a[i - 1, j]) + np.int64(a[i + 1, j]) + np.int64(a[i, j - 1]) + np.int64(a[i, j + 1]))
            + 4 * np.int64(a[i, j]))


def immerkaer_median_abs(image: np.ndarray) -> float:
    """``np.median(np.abs(r))`` of the Immerkær operator's response ``r`` at the interior pixels of an integer image.

    The operator (Immerkær 1996) is ``[[1, -2, 1], [-2, 4, -2], [1, -2, 1]]``; in integers it is exact. The
    median is read off a histogram of ``|r|`` (the two middle order statistics averaged in float64, as
    ``np.median`` averages them).

    Parameters
    ----------
    image : ndarray of int8/16 or uint8/16, shape (rows, cols), rows and cols >= 3

    Returns
    -------
    float
    """
    if not (isinstance(image, np.ndarray) and image.ndim == 2 and image.dtype.kind in "iu"
            and image.dtype.itemsize <= 2):
        raise TypeError(f"image must be a 2-D numpy array of 8- or 16-bit integers, got {type(image).__name__} "
                        f"{getattr(image, 'dtype', None)} {getattr(image, 'shape', None)}")
    if image.shape[0] < 3 or image.shape[1] < 3:
        raise ValueError(f"image must be at least 3 x 3, got shape {image.shape}")
    return float(_immerkaer_median_abs(image))


def _flat(volume: np.ndarray) -> np.ndarray:
    if not compiled_dtype(volume):
        raise TypeError(f"volume must be a non-empty numpy array of 8- or 16-bit integers, got "
                        f"{type(volume).__name__} {getattr(volume, 'dtype', None)}")
    return volume.reshape(-1) if volume.flags.c_contiguous else np.ascontiguousarray(volume).reshape(-1)


def range_counts(volume: np.ndarray, lo: float, hi: float) -> tuple[int, int, int, int]:
    """``(v.min(), (v < lo).sum(), (v > hi).sum(), (v == v.min()).sum())`` of an integer volume, in one pass.

    Parameters
    ----------
    volume : ndarray of int8/16 or uint8/16, any shape, non-empty
    lo, hi : float
        Bounds (``lo < hi``), compared as float64.

    Returns
    -------
    tuple of int
        Minimum value, voxels below ``lo``, voxels above ``hi``, voxels equal to the minimum.
    """
    lo, hi = float(lo), float(hi)
    if not lo < hi:
        raise ValueError(f"lo must be below hi, got lo={lo!r}, hi={hi!r}")
    vmin, below, above, at_min = _range_counts(_flat(volume), lo, hi)
    return int(vmin), int(below), int(above), int(at_min)


def mean_and_above(volume: np.ndarray) -> tuple[float, int, int]:
    """``(v.mean(), v[v > v.mean()].sum(), (v > v.mean()).sum())`` of an integer volume, in two passes.

    Parameters
    ----------
    volume : ndarray of int8/16 or uint8/16, any shape, non-empty

    Returns
    -------
    tuple
        The mean (float), the sum of the voxels above it (int) and their count (int).
    """
    mean, total, count = _mean_and_above(_flat(volume))
    return float(mean), int(total), int(count)


def warm_up() -> None:
    """Compile (or load from numba's cache) the loops for the dtypes volumes usually have: once per process."""
    for dtype in (np.int16, np.uint16, np.uint8):
        v = np.zeros((2, 2), dtype=dtype)
        range_counts(v, 0.0, 1.0)
        mean_and_above(v)
        immerkaer_median_abs(np.zeros((3, 3), dtype=dtype))
