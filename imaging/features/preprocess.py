"""The IBSI-1 image-processing chain (IBSI reference manual, arXiv:1612.07003, chapter 2).

Pure functions of numpy arrays:

* :func:`interpolation_grid` -- the interpolation grid of the "align grid centers"
  method (3WE3): dimensions 026Q and position QCY4.
* :func:`interpolate_volume` / :func:`interpolate_mask` -- interpolation (VTM2) of
  the image and of the ROI with the partial-volume threshold (E8H9).
* :func:`resegment` -- range (USB3) and outlier (7ACA) re-segmentation, giving the
  intensity mask (SEFI); the morphological mask (G5KJ) is the ROI itself.
* :func:`discretise` -- fixed bin number (K15C) and fixed bin size (Q3RU).
* :func:`discretise_ivh` -- the intensity-volume histogram discretisation.

Axis 0 is the slice axis; "2D" interpolation resamples axes 1 and 2 only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from imaging.types import Interpolation, IvhDiscretisation

_ORDER = {"nearest": 0, "linear": 1, "cubic": 3}

#: Slack of the partial-volume comparison: an interpolated fraction that equals the threshold in
#: exact arithmetic (e.g. a grid point midway between ROI and background) can come out a few ulp
#: below it; it still satisfies ``R_interp >= delta``.
PARTIAL_VOLUME_EPS = 1e-9


def _spacing3(spacing: object, name: str = "spacing") -> np.ndarray:
    arr = np.asarray(spacing, dtype=np.float64)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be three positive finite numbers (mm, array-axis order), got {spacing!r}")
    return arr


def _order(method: str, name: str = "method") -> int:
    if method not in _ORDER:
        raise ValueError(f"{name} must be one of {sorted(_ORDER)}, got {method!r}")
    return _ORDER[method]


@dataclass(frozen=True)
class InterpolationGrid:
    """An interpolation grid expressed in the index coordinates of the original grid.

    Attributes
    ----------
    shape : tuple of int
        Number of points of the new grid per axis (IBSI 026Q: ``ceil(n_a s_a / s_b)``).
    origin : ndarray (3,)
        Position of the first new grid point in original index coordinates (QCY4).
    step : ndarray (3,)
        Distance between new grid points in original index units (``s_b / s_a``).
    spacing : tuple of float
        New voxel size in mm.
    """

    shape: tuple[int, int, int]
    origin: np.ndarray
    step: np.ndarray
    spacing: tuple[float, float, float]

    def coordinates(self, axis: int) -> np.ndarray:
        """Original-grid index coordinates of the new grid points along ``axis``."""
        return self.origin[axis] + self.step[axis] * np.arange(self.shape[axis])


def interpolation_grid(shape: tuple[int, ...], *, spacing: tuple[float, ...],
                       new_spacing: tuple[float, ...]) -> InterpolationGrid:
    """IBSI "align grid centers" interpolation grid (3WE3, 026Q, QCY4).

    Parameters
    ----------
    shape : tuple of 3 int
        Shape of the original volume.
    spacing, new_spacing : tuple of 3 float
        Original and desired voxel size in mm, array-axis order. An axis whose
        new spacing equals its old spacing keeps exactly its grid (``n_b = n_a``,
        origin 0, step 1), which is how 2D (in-plane) interpolation is expressed.

    Returns
    -------
    InterpolationGrid
        ``n_b = ceil(n_a s_a / s_b)``; ``x_b = (n_a - 1 - (s_b/s_a)(n_b - 1)) / 2``.

    Examples
    --------
    The manual's example: a 4-voxel axis with 3 mm spacing resampled to 2 mm has
    6 points starting at index -1/6 with step 2/3.

    >>> g = interpolation_grid((4, 4, 4), spacing=(3, 3, 3), new_spacing=(2, 2, 2))
    >>> g.shape, round(float(g.origin[0]), 4), round(float(g.step[0]), 4)
    ((6, 6, 6), -0.1667, 0.6667)
    """
    n_a = np.asarray(shape, dtype=np.int64)
    if n_a.shape != (3,) or np.any(n_a < 1):
        raise ValueError(f"shape must be three positive integers, got {shape!r}")
    s_a = _spacing3(spacing)
    s_b = _spacing3(new_spacing, "new_spacing")
    ratio = n_a * s_a / s_b
    # round away floating-point noise before the ceiling (3 * 2.0 / 2.0 must stay 3)
    n_b = np.ceil(np.round(ratio, 9)).astype(np.int64)
    n_b = np.maximum(n_b, 1)
    step = s_b / s_a
    origin = 0.5 * (n_a - 1 - step * (n_b - 1))
    return InterpolationGrid(shape=(int(n_b[0]), int(n_b[1]), int(n_b[2])), origin=origin, step=step,
                             spacing=(float(s_b[0]), float(s_b[1]), float(s_b[2])))


def resample_to_grid(volume: np.ndarray, grid: InterpolationGrid, *, method: Interpolation = "linear",
                     start: tuple[int, ...] = (0, 0, 0), out_shape: tuple[int, ...] | None = None,
                     input_offset: tuple[int, ...] = (0, 0, 0)) -> np.ndarray:
    """Sample ``volume`` at (a block of) the points of ``grid``.

    Extrapolation pads with the boundary intensities, as IBSI recommends
    (``mode='nearest'``). ``cubic`` is the tricubic spline (order-3 B-spline with
    prefilter).

    Parameters
    ----------
    volume : ndarray (n0, n1, n2)
        Input samples; it may be a crop of the image the grid was made for, whose
        first voxel has index ``input_offset`` in that image.
    grid : InterpolationGrid
    method : {'nearest', 'linear', 'cubic'}
    start, out_shape : tuple of int
        Sample only grid points ``start .. start + out_shape - 1`` (default: all).
    input_offset : tuple of int

    Returns
    -------
    ndarray (out_shape), float64
    """
    order = _order(method)
    vol = np.asarray(volume, dtype=np.float64)
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3-D, got shape {vol.shape!r}")
    shape = grid.shape if out_shape is None else tuple(int(s) for s in out_shape)
    offset = grid.origin + np.asarray(start, dtype=np.float64) * grid.step - np.asarray(input_offset, np.float64)
    identity_axes = [ax for ax in range(3)
                     if grid.step[ax] == 1.0 and float(offset[ax]).is_integer()]
    if order == 0:
        # nearest neighbour: index arithmetic is exact and cheaper than a spline
        idx = []
        for ax in range(3):
            c = offset[ax] + grid.step[ax] * np.arange(shape[ax])
            idx.append(np.clip(np.floor(c + 0.5).astype(np.int64), 0, vol.shape[ax] - 1))
        return vol[np.ix_(*idx)]
    if len(identity_axes) == 1 and identity_axes[0] == 0:
        # 2D (in-plane) interpolation: resample each slice, never between slices
        z0 = int(offset[0])
        out = np.empty(shape, dtype=np.float64)
        for k in range(shape[0]):
            zi = min(max(z0 + k, 0), vol.shape[0] - 1)
            out[k] = ndi.affine_transform(vol[zi], grid.step[1:], offset=offset[1:], output_shape=shape[1:],
                                          order=order, mode="nearest", prefilter=order > 1)
        return out
    return ndi.affine_transform(vol, grid.step, offset=offset, output_shape=shape, order=order, mode="nearest",
                                prefilter=order > 1)


def interpolate_volume(volume: np.ndarray, *, spacing: tuple[float, ...], new_spacing: tuple[float, ...],
                       method: Interpolation = "linear", rounding: bool = False) -> np.ndarray:
    """Interpolate an image to ``new_spacing`` on the IBSI "align grid centers" grid (VTM2).

    Parameters
    ----------
    volume : ndarray (n0, n1, n2)
    spacing, new_spacing : tuple of 3 float, mm
        Give ``new_spacing[0] == spacing[0]`` for 2D (in-plane) interpolation.
    method : {'nearest', 'linear', 'cubic'}
    rounding : bool
        Round the interpolated intensities to the nearest integer (68QD).

    Returns
    -------
    ndarray, float64, shape ``interpolation_grid(...).shape``
    """
    vol = np.asarray(volume)
    grid = interpolation_grid(vol.shape, spacing=spacing, new_spacing=new_spacing)
    out = resample_to_grid(vol, grid, method=method)
    return np.round(out) if rounding else out


def interpolate_mask(mask: np.ndarray, *, spacing: tuple[float, ...], new_spacing: tuple[float, ...],
                     method: Interpolation = "linear", partial_volume: float = 0.5) -> np.ndarray:
    """Interpolate a ROI mask and binarise it with the partial-volume threshold (E8H9).

    ``R_j = 1`` where the interpolated mask is ``>= partial_volume``.

    Returns
    -------
    ndarray of bool on the grid of :func:`interpolate_volume`.
    """
    if not 0.0 < partial_volume <= 1.0:
        raise ValueError(f"partial_volume must be in (0, 1], got {partial_volume!r}")
    m = np.asarray(mask).astype(np.float64)
    grid = interpolation_grid(m.shape, spacing=spacing, new_spacing=new_spacing)
    return resample_to_grid(m, grid, method=method) >= partial_volume - PARTIAL_VOLUME_EPS


def resegmentation_bounds(values: np.ndarray, *, intensity_range: tuple[float | None, float | None] | None = None,
                          outlier_sigma: float | None = None) -> tuple[float, float]:
    """The closed interval of intensities kept by re-segmentation.

    Range re-segmentation (USB3) and outlier filtering (7ACA, ``mu +- k sigma`` of
    the ROI intensities, population standard deviation) are combined by
    intersecting their intervals, as the manual prescribes.
    """
    lo, hi = -np.inf, np.inf
    if intensity_range is not None:
        a, b = intensity_range
        if a is not None:
            lo = max(lo, float(a))
        if b is not None:
            hi = min(hi, float(b))
    if outlier_sigma is not None:
        if outlier_sigma <= 0:
            raise ValueError(f"outlier_sigma must be > 0, got {outlier_sigma!r}")
        v = np.asarray(values, dtype=np.float64)
        if v.size:
            mu = float(v.mean())
            sd = float(v.std())
            lo = max(lo, mu - outlier_sigma * sd)
            hi = min(hi, mu + outlier_sigma * sd)
    return lo, hi


def resegment(volume: np.ndarray, mask: np.ndarray, *,
              intensity_range: tuple[float | None, float | None] | None = None,
              outlier_sigma: float | None = None) -> np.ndarray:
    """Re-segment the ROI: the intensity mask (SEFI) from the morphological mask (G5KJ).

    Parameters
    ----------
    volume : ndarray (n0, n1, n2)
    mask : ndarray of bool, same shape
        Morphological mask (the ROI after interpolation).
    intensity_range : (a, b) or None
        Keep ``a <= X <= b``; ``None`` for an open end.
    outlier_sigma : float or None
        Keep ``|X - mu| <= k sigma`` with mu, sigma of the ROI intensities.

    Returns
    -------
    ndarray of bool, the intensity mask (a subset of ``mask``).
    """
    vol = np.asarray(volume)
    m = np.asarray(mask, dtype=bool)
    if vol.shape != m.shape:
        raise ValueError(f"volume and mask shapes differ: {vol.shape!r} vs {m.shape!r}")
    lo, hi = resegmentation_bounds(vol[m], intensity_range=intensity_range, outlier_sigma=outlier_sigma)
    out = m.copy()
    if np.isfinite(lo):
        out &= vol >= lo
    if np.isfinite(hi):
        out &= vol <= hi
    return out


@dataclass(frozen=True)
class Discretised:
    """Discretised grey levels of a ROI.

    Attributes
    ----------
    levels : ndarray of int32
        Grey level ``1..n_levels`` inside the intensity mask, 0 outside.
    n_levels : int
        Number of grey levels N_g: the bin number for FBN, the highest level in
        the ROI for FBS (the histogram runs over ``1..N_g``).
    minimum : float
        Lower bound used (X_gl,min).
    bin_width : float
        Bin width (FBN: ``(max - min) / N_g``).
    """

    levels: np.ndarray
    n_levels: int
    minimum: float
    bin_width: float


def discretise(volume: np.ndarray, mask: np.ndarray, *, method: str, bin_number: int | None = None,
               bin_width: float | None = None, minimum: float | None = None) -> Discretised:
    """Discretise the intensities of the intensity mask (IBSI 4R0B).

    * ``'fbn'`` (K15C): ``floor(N_g (X - X_min) / (X_max - X_min)) + 1``, and ``N_g``
      where ``X = X_max``; X_min, X_max are the ROI extremes. A constant ROI is
      all ``N_g`` (the ``X = X_max`` branch).
    * ``'fbs'`` (Q3RU): ``floor((X - X_min) / w_b) + 1`` with X_min = ``minimum``
      (the lower bound of the re-segmentation range) or the ROI minimum.

    Returns
    -------
    Discretised
    """
    vol = np.asarray(volume, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if vol.shape != m.shape:
        raise ValueError(f"volume and mask shapes differ: {vol.shape!r} vs {m.shape!r}")
    values = vol[m]
    if values.size == 0:
        raise ValueError("the intensity mask is empty; nothing to discretise")
    levels = np.zeros(vol.shape, dtype=np.int32)
    if method == "fbn":
        if bin_number is None or int(bin_number) < 1:
            raise ValueError(f"bin_number must be a positive integer for 'fbn', got {bin_number!r}")
        ng = int(bin_number)
        lo, hi = float(values.min()), float(values.max())
        if hi > lo:
            d = np.floor(ng * (values - lo) / (hi - lo)) + 1
            d[values >= hi] = ng
        else:
            d = np.full(values.shape, ng, dtype=np.float64)
        levels[m] = d.astype(np.int32)
        return Discretised(levels, ng, lo, (hi - lo) / ng)
    if method == "fbs":
        if bin_width is None or not bin_width > 0:
            raise ValueError(f"bin_width must be > 0 for 'fbs', got {bin_width!r}")
        lo = float(values.min()) if minimum is None else float(minimum)
        if values.min() < lo:
            raise ValueError(f"fixed-bin-size minimum {lo!r} exceeds the lowest ROI intensity {values.min()!r}")
        d = np.floor((values - lo) / float(bin_width)) + 1
        levels[m] = d.astype(np.int32)
        return Discretised(levels, int(d.max()), lo, float(bin_width))
    raise ValueError(f"method must be 'fbn' or 'fbs', got {method!r}")


@dataclass(frozen=True)
class IvhData:
    """Input of the intensity-volume histogram (IBSI IVH section).

    Attributes
    ----------
    values : ndarray (N_v,)
        Discretised intensities X_d,gl of the intensity-mask voxels.
    range_min, range_max : float
        Total range G.
    interval : float
        Discretisation interval w_d.
    """

    values: np.ndarray
    range_min: float
    range_max: float
    interval: float


def discretise_ivh(values: np.ndarray, *, method: IvhDiscretisation = "none",
                   intensity_range: tuple[float | None, float | None] | None = None,
                   bin_width: float | None = None, bin_number: int | None = None) -> IvhData:
    """Discretise ROI intensities for the IVH as the manual defines per intensity type.

    * ``'none'`` -- definite, discrete intensities (CT): X_d,gl = X_gl, w_d = 1,
      G = the re-segmentation range (upper end ``max(X)`` when open), else
      ``[min X, max X]``.
    * ``'fbs'`` -- definite, continuous intensities (PET): FBS with X_min, X_max the
      re-segmentation bounds (else the ROI extremes), bin centres
      ``X_min + (X_d - 0.5) w_b``, G = ``[X_min + w_b/2, X_max - w_b/2]``, w_d = w_b.
    * ``'fbn'`` -- arbitrary intensities: FBN with ``bin_number`` bins on the ROI
      extremes, X_d,gl = X_d, G = ``[1, N_g]``, w_d = 1.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("no intensities to build an intensity-volume histogram from")
    lo_r = hi_r = None
    if intensity_range is not None:
        lo_r, hi_r = intensity_range
    if method == "none":
        lo = float(lo_r) if lo_r is not None else float(v.min())
        hi = float(hi_r) if hi_r is not None else float(v.max())
        return IvhData(v, lo, hi, 1.0)
    if method == "fbs":
        if bin_width is None or not bin_width > 0:
            raise ValueError(f"bin_width must be > 0 for IVH 'fbs', got {bin_width!r}")
        lo = float(lo_r) if lo_r is not None else float(v.min())
        hi = float(hi_r) if hi_r is not None else float(v.max())
        d = np.floor((v - lo) / bin_width) + 1
        centres = lo + (d - 0.5) * bin_width
        return IvhData(centres, lo + 0.5 * bin_width, hi - 0.5 * bin_width, float(bin_width))
    if method == "fbn":
        if bin_number is None or int(bin_number) < 1:
            raise ValueError(f"bin_number must be a positive integer for IVH 'fbn', got {bin_number!r}")
        ng = int(bin_number)
        lo, hi = float(v.min()), float(v.max())
        if hi > lo:
            d = np.floor(ng * (v - lo) / (hi - lo)) + 1
            d[v >= hi] = ng
        else:
            d = np.full(v.shape, float(ng))
        return IvhData(d, 1.0, float(ng), 1.0)
    raise ValueError(f"method must be 'none', 'fbs' or 'fbn', got {method!r}")
