"""Pure geometry of DICOM image planes and stacks (numbers and arrays only, no file IO).

The conventions are those of :mod:`imaging`: a stack of DICOM slices becomes
``volume[slice, row, column]`` and ``affine`` maps homogeneous array indices
``(slice, row, column, 1)`` to patient LPS millimetres.

DICOM geometry (PS3.3 C.7.6.2.1.1, Image Plane Module):

* ``ImageOrientationPatient`` (IOP) = ``(Xx, Xy, Xz, Yx, Yy, Yz)``: the first triplet is
  the direction of increasing **column** index (along a row), the second the direction
  of increasing **row** index (down a column).
* ``ImagePositionPatient`` (IPP) is the centre of the first transmitted pixel (row 0,
  column 0).
* ``PixelSpacing`` = ``(row spacing, column spacing)`` = distance between the centres
  of adjacent rows, then of adjacent columns, in mm.

Hence ``affine[:3, 1] = Y * PixelSpacing[0]``, ``affine[:3, 2] = X * PixelSpacing[1]``,
``affine[:3, 0] = slice step vector`` (IPP difference between consecutive slices, which
is *not* ``SliceThickness``) and ``affine[:3, 3] = IPP of the first slice``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "affine_from_dicom",
    "demosaic",
    "detect_gantry_tilt",
    "mosaic_position_correction",
    "mosaic_tile_grid",
    "orientation_cosines",
    "position_along_normal",
    "slice_normal",
    "slice_spacing_stats",
    "sort_by_position",
]


def orientation_cosines(iop: Sequence[float] | npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Split and normalise ``ImageOrientationPatient`` into (row cosine X, column cosine Y).

    Parameters
    ----------
    iop : sequence of 6 float
        DICOM (0020,0037).

    Returns
    -------
    x, y : ndarray (3,)
        Unit vectors: direction of increasing column index (X) and of increasing row index (Y).

    Raises
    ------
    ValueError
        If ``iop`` does not have 6 finite values or either cosine has zero length.
    """
    a = np.asarray(iop, dtype=np.float64).reshape(-1)
    if a.size != 6 or not np.all(np.isfinite(a)):
        raise ValueError(f"iop must hold 6 finite numbers, got {np.asarray(iop).tolist()!r}")
    x, y = a[:3], a[3:]
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    if nx < 1e-6 or ny < 1e-6:
        raise ValueError(f"iop cosines must be non-zero vectors, got {a.tolist()!r}")
    return x / nx, y / ny


def slice_normal(iop: Sequence[float] | npt.ArrayLike) -> np.ndarray:
    """Unit slice normal ``X x Y`` (cross product of the IOP row and column cosines).

    Parameters
    ----------
    iop : sequence of 6 float
        ``ImageOrientationPatient``.

    Returns
    -------
    ndarray (3,)
        Unit normal in LPS. For an axial image with IOP ``(1,0,0,0,1,0)`` it is ``(0,0,1)``
        (towards the patient's head).
    """
    x, y = orientation_cosines(iop)
    n = np.cross(x, y)
    norm = np.linalg.norm(n)
    if norm < 1e-6:
        raise ValueError(f"iop row and column cosines are parallel, got {np.asarray(iop).tolist()!r}")
    return n / norm


def position_along_normal(positions: npt.ArrayLike, normal: npt.ArrayLike) -> np.ndarray:
    """Signed distance (mm) of each position along ``normal``: ``positions @ normal``.

    Parameters
    ----------
    positions : array (n, 3)
        ``ImagePositionPatient`` of each slice, LPS mm.
    normal : array (3,)
        Slice normal (need not be unit length; it is normalised).
    """
    p = np.asarray(positions, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"positions must have shape (n, 3), got {p.shape!r}")
    n = np.asarray(normal, dtype=np.float64).reshape(3)
    nn = np.linalg.norm(n)
    if nn < 1e-12:
        raise ValueError(f"normal must be non-zero, got {n.tolist()!r}")
    return p @ (n / nn)


def sort_by_position(positions: npt.ArrayLike, normal: npt.ArrayLike) -> np.ndarray:
    """Indices that order slices by increasing position along the slice normal (stable sort).

    Parameters
    ----------
    positions : array (n, 3)
        ``ImagePositionPatient`` per slice, LPS mm.
    normal : array (3,)
        Slice normal, e.g. :func:`slice_normal`.

    Returns
    -------
    ndarray of int (n,)
    """
    return np.argsort(position_along_normal(positions, normal), kind="stable")


def affine_from_dicom(
    iop: Sequence[float] | npt.ArrayLike,
    ipp_first: Sequence[float] | npt.ArrayLike,
    pixel_spacing: Sequence[float] | npt.ArrayLike,
    slice_step_vector: Sequence[float] | npt.ArrayLike | None = None,
) -> np.ndarray:
    """4x4 affine from array index ``(slice, row, column)`` to LPS mm (PS3.3 C.7.6.2.1.1).

    Parameters
    ----------
    iop : sequence of 6 float
        ``ImageOrientationPatient``.
    ipp_first : sequence of 3 float
        ``ImagePositionPatient`` of slice 0 (centre of its first pixel), mm.
    pixel_spacing : sequence of 2 float
        ``PixelSpacing`` = (row spacing, column spacing), mm.
    slice_step_vector : sequence of 3 float, optional
        Vector from slice ``k`` to slice ``k + 1`` in mm (from consecutive IPPs). When it is
        not parallel to the normal (gantry tilt) the affine is sheared, which is the honest
        geometry of the acquired data. ``None`` gives a unit step along the slice normal
        (single slice).

    Returns
    -------
    ndarray (4, 4), float64
    """
    x, y = orientation_cosines(iop)
    ps = np.asarray(pixel_spacing, dtype=np.float64).reshape(-1)
    if ps.size != 2 or not np.all(np.isfinite(ps)) or np.any(ps <= 0):
        raise ValueError(f"pixel_spacing must be 2 positive numbers, got {ps.tolist()!r}")
    origin = np.asarray(ipp_first, dtype=np.float64).reshape(-1)
    if origin.size != 3 or not np.all(np.isfinite(origin)):
        raise ValueError(f"ipp_first must be 3 finite numbers, got {origin.tolist()!r}")
    if slice_step_vector is None:
        step = slice_normal(iop)
    else:
        step = np.asarray(slice_step_vector, dtype=np.float64).reshape(-1)
        if step.size != 3 or not np.all(np.isfinite(step)) or np.linalg.norm(step) < 1e-9:
            raise ValueError(f"slice_step_vector must be a non-zero 3-vector, got {step.tolist()!r}")
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = y * ps[0]
    affine[:3, 2] = x * ps[1]
    affine[:3, 3] = origin
    return affine


def detect_gantry_tilt(
    iop: Sequence[float] | npt.ArrayLike, positions: npt.ArrayLike, *, tolerance_deg: float = 0.01
) -> dict[str, Any]:
    """Angle between the slice normal and the direction in which the slices advance.

    Parameters
    ----------
    iop : sequence of 6 float
        ``ImageOrientationPatient`` (shared by all slices).
    positions : array (n, 3)
        IPP of each slice **in stack order**.
    tolerance_deg : float
        Angles at or below this are reported as not tilted.

    Returns
    -------
    dict
        ``tilt_deg`` (float, 0 for fewer than 2 slices), ``tilted`` (bool) and
        ``step_vector`` (mean IPP step as a list of 3 floats, mm).
    """
    if tolerance_deg < 0:
        raise ValueError(f"tolerance_deg must be >= 0, got {tolerance_deg!r}")
    p = np.asarray(positions, dtype=np.float64)
    n = slice_normal(iop)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"positions must have shape (n, 3), got {p.shape!r}")
    if p.shape[0] < 2:
        return {"tilt_deg": 0.0, "tilted": False, "step_vector": n.tolist()}
    step = (p[-1] - p[0]) / (p.shape[0] - 1)
    ns = np.linalg.norm(step)
    if ns < 1e-9:
        return {"tilt_deg": 0.0, "tilted": False, "step_vector": step.tolist()}
    cosang = abs(float(np.dot(step / ns, n)))
    angle = float(np.degrees(np.arccos(min(1.0, cosang))))
    return {"tilt_deg": angle, "tilted": bool(angle > tolerance_deg), "step_vector": step.tolist()}


def slice_spacing_stats(
    positions_along_normal: npt.ArrayLike, *, rel_tolerance: float = 0.01, abs_tolerance_mm: float = 0.01
) -> dict[str, Any]:
    """Summary of the gaps between sorted slice positions.

    Parameters
    ----------
    positions_along_normal : array (n,)
        Slice positions along the normal in mm (any order; they are sorted here).
    rel_tolerance, abs_tolerance_mm : float
        A gap differing from the median gap by more than
        ``max(abs_tolerance_mm, rel_tolerance * median)`` makes the spacing uneven.

    Returns
    -------
    dict
        ``n`` (int), ``median_mm``, ``mean_mm``, ``min_mm``, ``max_mm``, ``std_mm`` (float or
        None for n < 2), ``uneven`` (bool), ``uneven_spacing_mm`` (max absolute deviation of a
        gap from the median, mm), ``duplicates`` (number of gaps below the tolerance) and
        ``missing_slices`` (estimated number of slices missing from gaps that are close to
        an integer multiple >= 2 of the median gap).
    """
    z = np.sort(np.asarray(positions_along_normal, dtype=np.float64).reshape(-1))
    out: dict[str, Any] = {"n": int(z.size), "median_mm": None, "mean_mm": None, "min_mm": None,
                           "max_mm": None, "std_mm": None, "uneven": False, "uneven_spacing_mm": 0.0,
                           "duplicates": 0, "missing_slices": 0}
    if z.size < 2:
        return out
    gaps = np.diff(z)
    tol = abs_tolerance_mm
    dup = gaps <= tol
    real = gaps[~dup]
    out["duplicates"] = int(dup.sum())
    if real.size == 0:
        out.update(median_mm=0.0, mean_mm=0.0, min_mm=0.0, max_mm=0.0, std_mm=0.0)
        return out
    med = float(np.median(real))
    tol = max(abs_tolerance_mm, rel_tolerance * med)
    dev = np.abs(real - med)
    missing = 0
    for g in real:
        ratio = g / med
        m = int(round(ratio))
        if m >= 2 and abs(g - m * med) <= tol * m:
            missing += m - 1
    out.update(median_mm=med, mean_mm=float(real.mean()), min_mm=float(real.min()), max_mm=float(real.max()),
               std_mm=float(real.std()), uneven=bool(np.any(dev > tol)), uneven_spacing_mm=float(dev.max()),
               missing_slices=int(missing))
    return out


def mosaic_tile_grid(n_slices: int) -> int:
    """Number of tiles per mosaic row/column: ``ceil(sqrt(n_slices))`` (Siemens convention)."""
    if int(n_slices) < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices!r}")
    return int(np.ceil(np.sqrt(int(n_slices)) - 1e-9))


def demosaic(tile_array: np.ndarray, n_slices: int) -> np.ndarray:
    """Cut a Siemens mosaic image into its slices.

    Parameters
    ----------
    tile_array : ndarray (R, C) or (t, R, C)
        The mosaic (``Rows x Columns`` of the file), optionally with a leading time axis.
    n_slices : int
        Number of slices in the mosaic (private tag (0019,100A) NumberOfImagesInMosaic).
        The tiles lie on a ``g x g`` grid with ``g = ceil(sqrt(n_slices))``, filled row by
        row from the top left; slice ``s`` is tile ``(s // g, s % g)``.

    Returns
    -------
    ndarray (n_slices, R/g, C/g) or (t, n_slices, R/g, C/g)
        Tiles in acquisition (mosaic) order; rows are *not* flipped: each tile keeps the
        DICOM row/column directions of the mosaic, so the IOP of the mosaic applies.
    """
    a = np.asarray(tile_array)
    if a.ndim not in (2, 3):
        raise ValueError(f"tile_array must be 2-D or 3-D, got shape {a.shape!r}")
    g = mosaic_tile_grid(n_slices)
    rows, cols = a.shape[-2:]
    if rows % g or cols % g:
        raise ValueError(f"mosaic shape {(rows, cols)!r} is not divisible by the tile grid {g} (n_slices={n_slices})")
    tr, tc = rows // g, cols // g
    lead = a.shape[:-2]
    t = a.reshape(*lead, g, tr, g, tc)
    t = np.moveaxis(t, -3, -2)  # (..., g_row, g_col, tr, tc)
    t = t.reshape(*lead, g * g, tr, tc)
    return np.ascontiguousarray(t[..., : int(n_slices), :, :])


def mosaic_position_correction(
    ipp: Sequence[float] | npt.ArrayLike,
    iop: Sequence[float] | npt.ArrayLike,
    pixel_spacing: Sequence[float] | npt.ArrayLike,
    mosaic_shape: tuple[int, int],
    tile_shape: tuple[int, int],
) -> np.ndarray:
    """IPP of the first mosaic tile from the IPP stored in a Siemens mosaic.

    Siemens writes the IPP as if the whole mosaic were one image; the first slice's first
    pixel is shifted by half the size difference between mosaic and tile (the correction
    dcm2niix and nibabel apply).

    Parameters
    ----------
    ipp : 3 float
        ``ImagePositionPatient`` stored in the mosaic file, mm.
    iop : 6 float
        ``ImageOrientationPatient``.
    pixel_spacing : 2 float
        (row spacing, column spacing), mm.
    mosaic_shape, tile_shape : (rows, columns)

    Returns
    -------
    ndarray (3,)
        Corrected IPP of slice 0, LPS mm.
    """
    x, y = orientation_cosines(iop)
    ps = np.asarray(pixel_spacing, dtype=np.float64).reshape(2)
    d_rows = (mosaic_shape[0] - tile_shape[0]) / 2.0
    d_cols = (mosaic_shape[1] - tile_shape[1]) / 2.0
    return np.asarray(ipp, dtype=np.float64).reshape(3) + y * ps[0] * d_rows + x * ps[1] * d_cols
