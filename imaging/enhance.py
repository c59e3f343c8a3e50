"""Intensity enhancement: logarithmic transform, gamma correction, global histogram equalisation, CLAHE.

All functions take a numpy or dask ``volume`` and return the same array type. Global statistics (minimum,
maximum, histogram) are computed first with dask reductions (one pass over the data each), then the
voxel-wise mapping runs chunk by chunk (``map_blocks``) without further passes.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import numpy.typing as npt

from imaging.types import ArrayLike

__all__ = ["clahe", "equalize_histogram", "gamma_correction", "log_transform"]


def _check_volume(volume: Any, *, ndim: int | None = None) -> ArrayLike:
    if not isinstance(volume, da.Array):
        volume = np.asarray(volume)
    if ndim is not None and volume.ndim != ndim:
        raise ValueError(f"volume must be a {ndim}-D array, got ndim={volume.ndim}")
    if volume.size == 0:
        raise ValueError(f"volume must not be empty, got shape {tuple(volume.shape)!r}")
    if not (
        np.issubdtype(volume.dtype, np.integer)
        or np.issubdtype(volume.dtype, np.floating)
        or volume.dtype == np.bool_
    ):
        raise TypeError(f"volume must have a real numeric dtype, got {volume.dtype!r}")
    return volume


def _check_float_dtype(dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if not np.issubdtype(dt, np.floating):
        raise TypeError(f"dtype must be a floating dtype, got {dtype!r}")
    return dt


def _check_mask(mask: Any, volume: ArrayLike) -> ArrayLike | None:
    if mask is None:
        return None
    m = mask if isinstance(mask, da.Array) else np.asarray(mask)
    if m.shape != volume.shape:
        raise ValueError(
            f"mask must have the shape of volume {tuple(volume.shape)!r}, got {tuple(m.shape)!r}"
        )
    if m.dtype != np.bool_:
        raise TypeError(f"mask must be a boolean array, got dtype {m.dtype!r}")
    if isinstance(volume, da.Array) and not isinstance(m, da.Array):
        m = da.from_array(m, chunks=volume.chunks)
    return m


def _min_max(volume: ArrayLike, mask: ArrayLike | None = None) -> tuple[float, float]:
    """Global finite minimum and maximum (inside ``mask``), one dask reduction pass for both."""
    v = volume.astype(np.float64) if volume.dtype == np.bool_ else volume
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN input: reported below
        if mask is not None:
            where: Any = da.where if isinstance(v, da.Array) else np.where
            lo_r, hi_r = np.nanmin(where(mask, v, np.inf)), np.nanmax(where(mask, v, -np.inf))
        else:
            lo_r, hi_r = np.nanmin(v), np.nanmax(v)
        lo, hi = dask.compute(lo_r, hi_r)
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("volume has no finite voxel" + (" inside mask" if mask is not None else ""))
    return lo, hi


def _map(volume: ArrayLike, fn: Any, dtype: np.dtype) -> ArrayLike:
    if isinstance(volume, da.Array):
        return da.map_blocks(fn, volume, dtype=dtype, meta=np.empty((0,) * volume.ndim, dtype=dtype))
    return fn(volume)


def _check_range(in_range: Any, volume: ArrayLike, mask: ArrayLike | None = None) -> tuple[float, float]:
    if in_range is None:
        return _min_max(volume, mask)
    try:
        lo, hi = (float(v) for v in in_range)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"in_range must be None or a pair (low, high), got {in_range!r}") from exc
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"in_range must be finite with low < high, got {in_range!r}")
    return lo, hi


# ----------------------------------------------------------------------------------------------------------


def _int_min_max(vol: np.ndarray, n_threads: int | None) -> tuple[float, float]:
    """Minimum and maximum of an integer numpy volume: one GIL-free pass on slabs of threads."""
    from imaging import kernels

    arr = np.ascontiguousarray(vol)
    parts: list[tuple[int, int]] = []
    kernels.run_slabs(lambda a, b: parts.append(kernels.minmax(arr[a:b].reshape(-1))), arr.shape[0], n_threads)
    return float(min(p[0] for p in parts)), float(max(p[1] for p in parts))


#: Integer volumes whose value range spans at most this many values are log-transformed by table lookup.
LUT_MAX_SPAN = 1 << 20


def log_transform(volume: Any, *, dtype: npt.DTypeLike = np.float32, out: np.ndarray | None = None,
                  n_threads: int | None = None) -> ArrayLike:
    """Logarithmic intensity transform ``log(I - min(I) + 1)`` (output >= 0, 0 at the minimum).

    ``min(I)`` is the global finite minimum (NaN ignored), computed first by a reduction. Integer volumes
    (CT, MR: at most :data:`LUT_MAX_SPAN` distinct values between min and max) are mapped through a table
    of ``log1p(k)`` for every ``k`` in range — a memory-bound gather; float volumes compute ``I - min``
    and ``log1p`` in place in the output. numpy input runs on slabs of ``n_threads`` threads (GIL-free)
    and may write into a preallocated ``out``; dask input is mapped chunk by chunk.

    Parameters
    ----------
    volume : ndarray or dask array, any shape, real dtype.
    dtype : floating output dtype (float32 by default).
    out : ndarray, optional
        Preallocated output of ``volume``'s shape and ``dtype`` (numpy input only).
    n_threads : int, optional
        Threads for numpy input (default: all cores).

    Returns
    -------
    out : same array type and shape as ``volume``, ``dtype``. NaN voxels stay NaN.
    """
    from imaging import kernels

    vol = _check_volume(volume)
    dt = _check_float_dtype(dtype)
    if isinstance(vol, np.ndarray) and np.issubdtype(vol.dtype, np.integer) and vol.ndim >= 1 and vol.size:
        lo, hi = _int_min_max(vol, n_threads)
    else:
        lo, hi = _min_max(vol)
    integer = np.issubdtype(vol.dtype, np.integer) and (hi - lo) < LUT_MAX_SPAN
    lut = np.log1p(np.arange(int(hi - lo) + 1, dtype=np.float64)).astype(dt) if integer else None
    lo_i = int(lo) if integer else 0

    def _fn(block: np.ndarray, dst: np.ndarray | None = None) -> np.ndarray:
        dst = np.empty(block.shape, dtype=dt) if dst is None else dst
        if lut is not None:
            kernels.lookup(np.ascontiguousarray(block).reshape(-1), lo_i, lut, dst.reshape(-1))
        else:
            np.subtract(block, lo, out=dst, casting="unsafe")
            np.log1p(dst, out=dst)
        return dst

    if isinstance(vol, da.Array):
        if out is not None:
            raise ValueError("out is only supported for numpy input, got a dask volume")
        return _map(vol, _fn, dt)
    arr = np.asarray(vol)
    if out is None:
        out = np.empty(arr.shape, dtype=dt)
    elif out.shape != arr.shape or out.dtype != dt or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {dt} array of shape {arr.shape}, got {out.dtype} {out.shape}")
    if arr.ndim == 0 or arr.shape[0] < 2:
        return _fn(arr, out)
    kernels.run_slabs(lambda a, b: _fn(arr[a:b], out[a:b]), arr.shape[0], n_threads)
    return out


def gamma_correction(
    volume: Any,
    *,
    gamma: float,
    in_range: tuple[float, float] | None = None,
    dtype: npt.DTypeLike = np.float32,
) -> ArrayLike:
    """Power-law (gamma) correction on the intensity window ``in_range``, keeping that window's scale.

    ``out = lo + (hi - lo) * ((clip(I, lo, hi) - lo) / (hi - lo)) ** gamma``; ``(lo, hi)`` is ``in_range``
    or the global finite minimum and maximum. ``gamma < 1`` brightens, ``gamma > 1`` darkens (as
    ``skimage.exposure.adjust_gamma`` on the normalised image).

    Parameters
    ----------
    volume : ndarray or dask array, any shape.
    gamma : float, > 0.
    in_range : (low, high) or None.
    dtype : floating output dtype.

    Returns
    -------
    out : same array type and shape as ``volume``, values in ``[lo, hi]``.
    """
    vol = _check_volume(volume)
    if (
        isinstance(gamma, bool)
        or not isinstance(gamma, int | float | np.integer | np.floating)
        or not np.isfinite(gamma)
        or gamma <= 0
    ):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
    dt = _check_float_dtype(dtype)
    lo, hi = _check_range(in_range, vol)
    width = hi - lo
    if width == 0:  # constant image: nothing to correct
        return _map(vol, lambda b: np.full(b.shape, lo, dtype=dt), dt)
    g = float(gamma)

    def _fn(block: np.ndarray) -> np.ndarray:
        out = np.empty(block.shape, dtype=np.float64)
        np.subtract(block, lo, out=out, casting="unsafe")
        out /= width
        np.clip(out, 0.0, 1.0, out=out)
        np.power(out, g, out=out)
        out *= width
        out += lo
        return out.astype(dt, copy=False)

    return _map(vol, _fn, dt)


def equalize_histogram(
    volume: Any, *, nbins: int = 256, mask: Any = None, dtype: npt.DTypeLike = np.float32
) -> ArrayLike:
    """Global histogram equalisation from a chunked histogram (as ``skimage.exposure.equalize_hist``).

    The histogram has ``nbins`` equal-width bins over ``[min, max]`` of the voxels (inside ``mask`` if
    given: the mapping is learnt there and applied everywhere). Each voxel is mapped to the normalised
    cumulative histogram, linearly interpolated at the bin centres. Integer images are binned the same
    way (skimage uses one bin per integer value for integer input).

    Parameters
    ----------
    volume : ndarray or dask array, any shape.
    nbins : int, >= 2.
    mask : bool array like ``volume`` or None.
    dtype : floating output dtype.

    Returns
    -------
    out : same array type and shape as ``volume``, values in ``[0, 1]``.
    """
    vol = _check_volume(volume)
    if isinstance(nbins, bool) or not isinstance(nbins, int | np.integer) or nbins < 2:
        raise ValueError(f"nbins must be an integer >= 2, got {nbins!r}")
    dt = _check_float_dtype(dtype)
    m = _check_mask(mask, vol)
    lo, hi = _min_max(vol, m)
    if hi == lo:
        hi = lo + 1.0  # constant image: one occupied bin, as numpy.histogram does
    if isinstance(vol, da.Array):
        weights = None if m is None else m.astype(np.float64)
        hist, edges = da.histogram(vol, bins=int(nbins), range=(lo, hi), weights=weights)
        hist = np.asarray(hist.compute(), dtype=np.float64)
    else:
        data = vol if m is None else vol[m]
        hist, edges = np.histogram(data, bins=int(nbins), range=(lo, hi))
        hist = hist.astype(np.float64)
    cdf = np.cumsum(hist)
    cdf /= cdf[-1]
    centres = (edges[:-1] + edges[1:]) / 2.0

    def _fn(block: np.ndarray) -> np.ndarray:
        return np.interp(block, centres, cdf).astype(dt, copy=False)

    return _map(vol, _fn, dt)


def clahe(
    volume: Any,
    *,
    mode: Literal["2D", "3D"],
    clip_limit: float,
    kernel_size: int | tuple[int, ...] | None = None,
    nbins: int = 256,
    in_range: tuple[float, float] | None = None,
    dtype: npt.DTypeLike = np.float32,
) -> ArrayLike:
    """Contrast-limited adaptive histogram equalisation (``skimage.exposure.equalize_adapthist``).

    The volume is first windowed to ``in_range`` (default: global min/max) and scaled to ``[0, 1]``.
    ``mode="2D"`` equalises every slice (axis 0) independently - chunk-parallel over slabs of whole
    slices; note that scikit-image stretches each slice to its own range before and after CLAHE.
    ``mode="3D"`` runs volumetric CLAHE on the whole volume (contextual tiles span the volume, so a dask
    input is gathered into one block).

    Parameters
    ----------
    volume : ndarray or dask array, shape (n0, n1, n2)
    mode : {"2D", "3D"}
    clip_limit : float in (0, 1]; higher gives more contrast.
    kernel_size : int, tuple or None; contextual region size (skimage default: 1/8 of each dimension).
    nbins : int, >= 2; grey-level bins of the local histograms.
    in_range : (low, high) or None.
    dtype : floating output dtype.

    Returns
    -------
    out : same array type and shape as ``volume``, values in ``[0, 1]``.
    """
    from skimage.exposure import equalize_adapthist

    vol = _check_volume(volume, ndim=3)
    if mode not in ("2D", "3D"):
        raise ValueError(f"mode must be '2D' (per slice) or '3D', got {mode!r}")
    if (
        isinstance(clip_limit, bool)
        or not isinstance(clip_limit, int | float | np.floating)
        or not 0 < clip_limit <= 1
    ):
        raise ValueError(f"clip_limit must be in (0, 1], got {clip_limit!r}")
    if isinstance(nbins, bool) or not isinstance(nbins, int | np.integer) or nbins < 2:
        raise ValueError(f"nbins must be an integer >= 2, got {nbins!r}")
    if kernel_size is not None:
        ks = (kernel_size,) if isinstance(kernel_size, int | np.integer) else tuple(kernel_size)
        n_axes = 2 if mode == "2D" else 3
        if not all(isinstance(k, int | np.integer) and k >= 1 for k in ks) or len(ks) not in (1, n_axes):
            raise ValueError(
                f"kernel_size must be a positive int or one per {mode} axis, got {kernel_size!r}"
            )
    dt = _check_float_dtype(dtype)
    lo, hi = _check_range(in_range, vol)
    width = (hi - lo) or 1.0

    def _unit(block: np.ndarray) -> np.ndarray:
        return np.clip((np.asarray(block, dtype=np.float64) - lo) / width, 0.0, 1.0)

    def _fn(block: np.ndarray) -> np.ndarray:
        unit = _unit(block)
        if mode == "3D":
            out = equalize_adapthist(unit, kernel_size=kernel_size, clip_limit=clip_limit, nbins=nbins)
        else:
            out = np.empty(unit.shape, dtype=np.float64)
            for i in range(unit.shape[0]):
                out[i] = equalize_adapthist(
                    unit[i], kernel_size=kernel_size, clip_limit=clip_limit, nbins=nbins
                )
        return out.astype(dt, copy=False)

    if isinstance(vol, da.Array):
        vol = vol.rechunk({0: -1, 1: -1, 2: -1} if mode == "3D" else {1: -1, 2: -1})
    return _map(vol, _fn, dt)
