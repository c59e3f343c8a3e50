"""Per-series quality control from plain numbers and arrays (pure: no DICOM, no IO).

Every check returns :class:`QCFinding` objects ``(code, severity, message, value)``.
Severity ``"error"`` means the series must be quarantined instead of converted (its
geometry or values cannot be trusted); ``"warning"`` goes to the catalog and the
report; ``"info"`` is recorded only.

Codes (:data:`QC_CODES`)
------------------------
=========================  ========  ==========================================================
code                       severity  trigger
=========================  ========  ==========================================================
``duplicated_slices``      error     two slices closer than ``abs_tolerance_mm`` along the normal
``missing_slices``         error     a gap of about k >= 2 median steps (k - 1 slices missing):
                                     a contiguous stack would put every later slice at the
                                     wrong place
``uneven_spacing``         warning   max |gap - median| / median > ``rel_tolerance``;
                           error     ... > ``uneven_error_rel`` (one affine cannot describe it)
``zero_or_missing_spacing`` error    a spacing that is missing, non-finite or <= 0, or all
                                     slices at one position
``mixed_orientation``      error     ImageOrientationPatient differs between slices by more
                                     than ``orientation_tolerance`` (cosine units)
``mixed_shape``            error     (Rows, Columns) differ between slices
``mixed_pixel_format``     warning   pixel formats (bits, signedness, photometric...) differ
``gantry_tilt``            warning   angle between the slice normal and the direction the
                                     slices advance > ``tilt_tolerance_deg`` (sheared grid)
``implausible_intensity``  warning   more than ``intensity_fraction`` of the voxels outside the
                                     modality's plausible range (table below);
                           error     more than ``intensity_error_fraction`` (units/rescale wrong)
``low_snr``                warning   :func:`snr_estimate` below ``min_snr``
=========================  ========  ==========================================================

Plausible intensity ranges (:data:`INTENSITY_RANGES`, keyed by modality and units)
----------------------------------------------------------------------------------
================  ==============  =====================================================
modality / units  range           rationale
================  ==============  =====================================================
CT / HU           [-1100, 4000]   air -1000 HU, cortical bone < 2000-3000 HU; a small
                                  fraction above (metal) is tolerated by the fraction
PT / SUV*, GML    [0, 100]        SUV is non-negative; > 100 only from unit errors
PT / BQML         [0, 5e6]        Bq/ml: a few kBq/ml in tissue, hot spots 1e5-1e6
PT / CNTS         [0, inf)        counts are non-negative
================  ==============  =====================================================

Other modalities (MR arbitrary units, US, XA...) have no range unless
``expected_range`` is given. For CT, a constant fill value below the range (Pixel
Padding Value, e.g. -2000 or -3024 HU outside the reconstruction circle) is not
counted: voxels equal to the volume minimum are ignored when the minimum is below
the range.

Noise and SNR
-------------
:func:`noise_sigma` uses the 3x3 operator of Immerkær (J. Immerkær, "Fast noise
variance estimation", *Computer Vision and Image Understanding* 64(2):300-302,
1996), ``N = [[1,-2,1],[-2,4,-2],[1,-2,1]]`` (the difference of two Laplacians,
blind to planar intensity ramps), applied per 2-D slice. For white Gaussian noise
of standard deviation sigma the response has standard deviation ``6 sigma``
(sum of squared weights = 36). Instead of Immerkær's mean absolute response, the
robust median absolute deviation is used (Donoho & Johnstone 1994):
``sigma = 1.4826 * median(|I * N|) / 6``, so edges (a minority of pixels) do not
inflate the estimate. The volume estimate is the median over sampled slices.
:func:`snr_estimate` returns ``(mean(volume[mask]) - background) / sigma`` with a
default mask of voxels above the volume mean; ``min_snr = 5`` follows the Rose
criterion (A. Rose, *J. Opt. Soc. Am.* 38:196-208, 1948).

Dask arrays are accepted: intensity fractions are dask reductions computed in one
pass; noise is estimated on up to ``max_slices`` evenly spaced 2-D slices (only those
are computed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from imaging import voxel_stats
from imaging.geometry import slice_spacing_stats

if TYPE_CHECKING:  # pandas only for qc_table: collection workers run the checks without it
    import pandas as pd

__all__ = ["INTENSITY_RANGES", "QC_CODES", "QCFinding", "noise_sigma", "qc_table", "series_qc", "snr_estimate",
           "volume_findings", "volume_value_findings"]

Severity = Literal["info", "warning", "error"]

QC_CODES: dict[str, str] = {
    "duplicated_slices": "two or more slices at the same position along the slice normal",
    "missing_slices": "a gap of about k >= 2 median slice steps: k - 1 slices missing",
    "uneven_spacing": "slice gaps deviate from the median gap by more than the tolerance",
    "zero_or_missing_spacing": "a voxel spacing is missing, not finite or <= 0",
    "mixed_orientation": "ImageOrientationPatient differs between slices",
    "mixed_shape": "Rows/Columns differ between slices",
    "mixed_pixel_format": "pixel formats (bits, signedness, photometric interpretation) differ between slices",
    "gantry_tilt": "the slices advance obliquely to their normal (gantry tilt or sheared stack)",
    "implausible_intensity": "too many voxels outside the modality's plausible value range",
    "low_snr": "signal-to-noise ratio below the configured minimum",
}

#: (modality, units) -> (low, high); units ``None`` is the modality's default.
INTENSITY_RANGES: dict[tuple[str, str | None], tuple[float, float]] = {
    ("CT", None): (-1100.0, 4000.0),
    ("CT", "HU"): (-1100.0, 4000.0),
    ("PT", "SUV"): (0.0, 100.0),
    ("PT", "SUVBW"): (0.0, 100.0),
    ("PT", "SUVLBM"): (0.0, 100.0),
    ("PT", "SUVBSA"): (0.0, 100.0),
    ("PT", "GML"): (0.0, 100.0),
    ("PT", "BQML"): (0.0, 5e6),
    ("PT", "CNTS"): (0.0, math.inf),
}

_IMMERKAER = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class QCFinding:
    """One QC finding. ``value`` is a JSON-serialisable number/list (or None)."""

    code: str
    severity: Severity
    message: str
    value: Any = None

    def __post_init__(self) -> None:
        if self.code not in QC_CODES:
            raise ValueError(f"code must be one of {sorted(QC_CODES)}, got {self.code!r}")
        if self.severity not in ("info", "warning", "error"):
            raise ValueError(f"severity must be 'info', 'warning' or 'error', got {self.severity!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- geometry


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _geometry_findings(positions: np.ndarray, normal: np.ndarray, *, rel_tolerance: float,
                       abs_tolerance_mm: float, uneven_error_rel: float,
                       tilt_tolerance_deg: float) -> list[QCFinding]:
    out: list[QCFinding] = []
    n = positions.shape[0]
    if n < 2:
        return out
    d = positions @ normal
    stats = slice_spacing_stats(d, rel_tolerance=rel_tolerance, abs_tolerance_mm=abs_tolerance_mm)
    med = stats["median_mm"] or 0.0
    if stats["duplicates"]:
        out.append(QCFinding("duplicated_slices", "error",
                             f"{stats['duplicates']} slice(s) share a position with another slice "
                             f"(within {abs_tolerance_mm} mm)", int(stats["duplicates"])))
    if med <= 0:
        out.append(QCFinding("zero_or_missing_spacing", "error", "all slices lie at one position along the "
                             "normal: the slice spacing is zero", 0.0))
        return out
    if stats["missing_slices"]:
        out.append(QCFinding("missing_slices", "error",
                             f"about {stats['missing_slices']} slice(s) missing: gap(s) of >= 2 x the median step "
                             f"{med:.3g} mm", int(stats["missing_slices"])))
    z = np.sort(d)
    gaps = np.diff(z)
    gaps = gaps[gaps > abs_tolerance_mm]
    if gaps.size and not stats["missing_slices"]:
        rel = float(np.max(np.abs(gaps - med)) / med)
        if rel > rel_tolerance:
            sev: Severity = "error" if rel > uneven_error_rel else "warning"
            out.append(QCFinding("uneven_spacing", sev,
                                 f"slice gaps deviate from the median {med:.3g} mm by up to {100 * rel:.3g} % "
                                 f"(range {gaps.min():.3g}-{gaps.max():.3g} mm)", rel))
    order = np.argsort(d, kind="stable")
    p = positions[order]
    step = (p[-1] - p[0]) / (n - 1)
    norm_step = float(np.linalg.norm(step))
    if norm_step > 0:
        cosang = abs(float(np.dot(step, normal))) / norm_step
        tilt = math.degrees(math.acos(min(1.0, cosang)))
        if tilt > tilt_tolerance_deg:
            out.append(QCFinding("gantry_tilt", "warning",
                                 f"slices advance at {tilt:.3g} deg to their normal (gantry tilt / sheared grid)",
                                 tilt))
    return out


def _mixed(values: Sequence[Any]) -> int:
    seen: list[Any] = []
    for v in values:
        key = tuple(np.asarray(v).ravel().tolist()) if not isinstance(v, str | bytes) else v
        if key not in seen:
            seen.append(key)
    return len(seen)


# --------------------------------------------------------------------------- intensities and noise


def _is_dask(x: Any) -> bool:
    return type(x).__module__.startswith("dask")


def _compute(*values: Any) -> tuple[Any, ...]:
    if any(_is_dask(v) for v in values):
        import dask

        return tuple(dask.compute(*values))
    return values


def _range_for(modality: str | None, units: str | None) -> tuple[float, float] | None:
    if modality is None:
        return None
    m = modality.upper()
    u = units.upper().replace(" ", "") if isinstance(units, str) else None
    if (m, u) in INTENSITY_RANGES:
        return INTENSITY_RANGES[(m, u)]
    if u is None or m == "CT":
        return INTENSITY_RANGES.get((m, None))
    return None


def _intensity_findings(volume: Any, lo: float, hi: float, *, modality: str | None, fraction: float,
                        error_fraction: float) -> list[QCFinding]:
    v = volume
    vmin, below, above, at_min, size = _compute(v.min(), (v < lo).sum(), (v > hi).sum(), (v == v.min()).sum(),
                                                v.size)
    below, above, at_min = int(below), int(above), int(at_min)
    ignored = 0
    if (modality or "").upper() == "CT" and float(vmin) < lo:
        ignored = at_min  # a constant padding value below the range is not an intensity
    out_count = below - ignored + above
    frac = out_count / max(1, int(size))
    if frac <= fraction:
        return []
    sev: Severity = "error" if frac > error_fraction else "warning"
    return [QCFinding("implausible_intensity", sev,
                      f"{100 * frac:.3g} % of voxels lie outside the plausible range [{lo:g}, {hi:g}]"
                      f"{' for ' + modality if modality else ''} ({below - ignored} below, {above} above"
                      f"{f'; {ignored} padding voxels ignored' if ignored else ''})", frac)]


def _sample_slices(volume: Any, max_slices: int) -> list[np.ndarray]:
    """Up to ``max_slices`` evenly spaced 2-D slices over the last two axes (computed if dask)."""
    shape = volume.shape
    if len(shape) < 2:
        raise ValueError(f"volume must have at least 2 dimensions, got shape {shape!r}")
    lead = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    flat = volume.reshape((lead,) + tuple(shape[-2:]))
    idx = np.unique(np.linspace(0, lead - 1, num=min(lead, max_slices)).round().astype(int))
    picked = flat[idx]
    (picked,) = _compute(picked)
    return [np.asarray(s) for s in picked]


def _immerkaer_residual(s: np.ndarray) -> np.ndarray:
    """The Immerkær operator's response at the interior pixels of a 2-D slice (float64, finite values only).

    Integer slices are computed exactly in integers (every weight is an integer), far cheaper than
    the float convolution and equal to it: the interior does not depend on the border mode.
    """
    if s.dtype.kind in "iub" and s.dtype.itemsize <= 2:
        a = s.astype(np.int32)  # |response| <= 16 * 2**16: no overflow
        r = ((a[:-2, :-2] + a[:-2, 2:] + a[2:, :-2] + a[2:, 2:])
             - 2 * (a[:-2, 1:-1] + a[2:, 1:-1] + a[1:-1, :-2] + a[1:-1, 2:]) + 4 * a[1:-1, 1:-1])
        return r.ravel()
    r = ndimage.convolve(np.asarray(s, dtype=np.float64), _IMMERKAER, mode="reflect")[1:-1, 1:-1]
    return r[np.isfinite(r)]


def _median_abs(r: np.ndarray) -> float:
    """``float(np.median(np.abs(r)))`` of a non-empty 1-D array; integers by counting, in O(n + max).

    The two middle order statistics are read off the cumulative histogram of the absolute
    values and averaged as ``np.median`` averages them (one float64 division): the same value.
    """
    a = np.abs(r)
    if a.dtype.kind not in "iu" or a.dtype.itemsize > 4:
        return float(np.median(a))
    n = a.size
    top = int(a.max())
    if top > 4 * n + 4096:  # a sparse histogram: sorting is cheaper
        return float(np.median(a))
    cum = np.cumsum(np.bincount(a, minlength=top + 1))
    lo = int(np.searchsorted(cum, (n - 1) // 2 + 1))  # smallest value with more than k values at or below it
    hi = int(np.searchsorted(cum, n // 2 + 1))
    return (lo + hi) / 2


def noise_sigma(volume: Any, *, max_slices: int = 32) -> float:
    """Robust noise standard deviation (Immerkær operator + MAD, see the module docstring).

    Parameters
    ----------
    volume : ndarray or dask array, ndim >= 2
        Image(s); the operator runs on 2-D slices over the last two axes.
    max_slices : int
        Evenly spaced slices used (median of their estimates).

    Returns
    -------
    float
        Noise sigma in the volume's units (0.0 for noise-free or too-small images).
    """
    if not isinstance(max_slices, int) or max_slices < 1:
        raise ValueError(f"max_slices must be an int >= 1, got {max_slices!r}")
    sigmas = []
    for s in _sample_slices(volume, max_slices):
        if s.shape[0] < 3 or s.shape[1] < 3:
            continue
        if s.dtype.kind in "iu" and s.dtype.itemsize <= 2:  # compiled, no temporaries: the same number
            sigmas.append(_MAD_TO_SIGMA * voxel_stats.immerkaer_median_abs(s) / 6.0)
            continue
        r = _immerkaer_residual(s)
        if r.size:
            sigmas.append(_MAD_TO_SIGMA * _median_abs(r) / 6.0)
    return float(np.median(sigmas)) if sigmas else 0.0


def snr_estimate(volume: Any, *, mask: Any = None, background: float = 0.0, max_slices: int = 32) -> float:
    """Signal-to-noise ratio ``(mean(volume[mask]) - background) / noise_sigma(volume)``.

    Parameters
    ----------
    volume : ndarray or dask array, ndim >= 2
    mask : bool array, optional
        Signal voxels; default: voxels above the volume mean.
    background : float
        Value subtracted from the signal mean (e.g. -1000 HU for CT: signal relative to air).
    max_slices : int
        Slices sampled for :func:`noise_sigma`.

    Returns
    -------
    float
        ``inf`` when the estimated noise is 0, ``nan`` for an empty mask.
    """
    sigma = noise_sigma(volume, max_slices=max_slices)
    if mask is None and voxel_stats.compiled_dtype(volume):  # two compiled passes, the same numbers
        _mean, total, count = voxel_stats.mean_and_above(volume)
        if count == 0:
            return float("nan")
        signal = float(total) / count - float(background)
        return math.inf if sigma == 0.0 else signal / sigma
    if mask is None:
        (mean,) = _compute(volume.mean())
        m = volume > float(mean)
    else:
        if tuple(mask.shape) != tuple(volume.shape):
            raise ValueError(f"mask must have the volume's shape {tuple(volume.shape)}, got {tuple(mask.shape)}")
        m = mask
    total, count = _compute(volume[m].sum() if not _is_dask(volume) else (volume * m).sum(), m.sum())
    if int(count) == 0:
        return float("nan")
    signal = float(total) / int(count) - float(background)
    if sigma == 0.0:
        return math.inf
    return signal / sigma


# --------------------------------------------------------------------------- public


def series_qc(
    positions: npt.ArrayLike,
    normal: npt.ArrayLike,
    *,
    orientations: npt.ArrayLike | None = None,
    shapes: Sequence[Sequence[int]] | None = None,
    pixel_formats: Sequence[Any] | None = None,
    spacing: Sequence[float | None] | None = None,
    volume: Any = None,
    modality: str | None = None,
    units: str | None = None,
    expected_range: tuple[float, float] | None = None,
    rel_tolerance: float = 0.01,
    abs_tolerance_mm: float = 0.01,
    uneven_error_rel: float = 0.1,
    orientation_tolerance: float = 1e-3,
    tilt_tolerance_deg: float = 0.5,
    intensity_fraction: float = 0.005,
    intensity_error_fraction: float = 0.5,
    min_snr: float = 5.0,
    snr_background: float | None = None,
) -> list[QCFinding]:
    """QC findings of one series (or one volume of a split series).

    Parameters
    ----------
    positions : array (n, 3)
        ImagePositionPatient of every slice, mm LPS (any order).
    normal : array (3,)
        Slice normal (row cosine x column cosine); normalised here.
    orientations : array (n, 6), optional
        ImageOrientationPatient of every slice.
    shapes : sequence of (rows, columns), optional
    pixel_formats : sequence of hashable, optional
        e.g. ``(bits_allocated, bits_stored, pixel_representation, photometric)`` per slice.
    spacing : sequence of float or None, optional
        Voxel spacing in mm (array-axis order, any length); None/NaN/<= 0 entries are errors.
    volume : ndarray or dask array, optional
        Real-world values (after rescale) for the intensity and SNR checks.
    modality, units : str, optional
        Select the plausible range from :data:`INTENSITY_RANGES` (e.g. "CT"/"HU", "PT"/"SUVbw").
    expected_range : (low, high), optional
        Overrides the table.
    rel_tolerance, abs_tolerance_mm, uneven_error_rel : float
        Slice-gap tolerances (see the module docstring).
    orientation_tolerance : float
        Max absolute difference of IOP direction cosines between slices.
    tilt_tolerance_deg : float
        Angles up to this are not reported as gantry tilt.
    intensity_fraction, intensity_error_fraction : float
        Out-of-range voxel fractions for a warning / an error.
    min_snr : float
        Below this :func:`snr_estimate` gives ``low_snr`` (0 disables).
    snr_background : float, optional
        Background subtracted from the signal mean; default -1000 for CT, else 0.

    Returns
    -------
    list of QCFinding
    """
    p = np.asarray(positions, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"positions must have shape (n, 3), got {p.shape!r}")
    nrm = np.asarray(normal, dtype=np.float64).reshape(-1)
    if nrm.shape != (3,) or not np.all(np.isfinite(nrm)) or np.linalg.norm(nrm) == 0:
        raise ValueError(f"normal must be a finite non-zero 3-vector, got {normal!r}")
    nrm = nrm / np.linalg.norm(nrm)
    for name, val in (("rel_tolerance", rel_tolerance), ("abs_tolerance_mm", abs_tolerance_mm),
                      ("uneven_error_rel", uneven_error_rel), ("orientation_tolerance", orientation_tolerance),
                      ("tilt_tolerance_deg", tilt_tolerance_deg)):
        _positive(name, val)
    if not 0 <= intensity_fraction <= intensity_error_fraction <= 1:
        raise ValueError(f"need 0 <= intensity_fraction <= intensity_error_fraction <= 1, got "
                         f"{intensity_fraction!r}, {intensity_error_fraction!r}")
    if not (isinstance(min_snr, int | float) and min_snr >= 0):
        raise ValueError(f"min_snr must be >= 0, got {min_snr!r}")

    out: list[QCFinding] = []
    if not np.all(np.isfinite(p)):
        out.append(QCFinding("zero_or_missing_spacing", "error", "slice positions are missing or not finite", None))
    else:
        out += _geometry_findings(p, nrm, rel_tolerance=rel_tolerance, abs_tolerance_mm=abs_tolerance_mm,
                                  uneven_error_rel=uneven_error_rel, tilt_tolerance_deg=tilt_tolerance_deg)
    if orientations is not None:
        o = np.asarray(orientations, dtype=np.float64)
        if o.ndim != 2 or o.shape[1] != 6 or o.shape[0] != p.shape[0]:
            raise ValueError(f"orientations must have shape ({p.shape[0]}, 6), got {o.shape!r}")
        dev = float(np.max(np.abs(o - o[0]))) if o.size else 0.0
        if not np.isfinite(dev) or dev > orientation_tolerance:
            out.append(QCFinding("mixed_orientation", "error",
                                 f"ImageOrientationPatient differs between slices by up to {dev:.3g} "
                                 f"(tolerance {orientation_tolerance:g})", dev))
    if shapes is not None:
        k = _mixed(shapes)
        if k > 1:
            out.append(QCFinding("mixed_shape", "error", f"{k} different (rows, columns) shapes in one series", k))
    if pixel_formats is not None:
        k = _mixed(pixel_formats)
        if k > 1:
            out.append(QCFinding("mixed_pixel_format", "warning", f"{k} different pixel formats in one series", k))
    if spacing is not None:
        bad = [s for s in spacing if s is None or not isinstance(s, int | float | np.floating | np.integer)
               or not math.isfinite(float(s)) or float(s) <= 0]
        if bad or len(spacing) == 0:
            out.append(QCFinding("zero_or_missing_spacing", "error",
                                 f"voxel spacing {[None if s is None else float(s) for s in spacing]} has missing, "
                                 f"non-finite or non-positive entries",
                                 [None if s is None else float(s) for s in spacing]))
    if volume is not None:
        out += volume_value_findings(volume, modality=modality, units=units, expected_range=expected_range,
                                     intensity_fraction=intensity_fraction,
                                     intensity_error_fraction=intensity_error_fraction, min_snr=min_snr,
                                     snr_background=snr_background)
    return out


def volume_value_findings(volume: Any, *, modality: str | None = None, units: str | None = None,
                          expected_range: tuple[float, float] | None = None, intensity_fraction: float = 0.005,
                          intensity_error_fraction: float = 0.5, min_snr: float = 5.0,
                          snr_background: float | None = None) -> list[QCFinding]:
    """``implausible_intensity`` and ``low_snr`` findings of a real-valued volume (see :func:`series_qc`)."""
    if volume.ndim < 2:
        raise ValueError(f"volume must have at least 2 dimensions, got shape {volume.shape!r}")
    out: list[QCFinding] = []
    if volume.size == 0:
        return out
    rng = expected_range if expected_range is not None else _range_for(modality, units)
    if rng is not None:
        lo, hi = float(rng[0]), float(rng[1])
        if not lo < hi:
            raise ValueError(f"expected_range must be (low, high) with low < high, got {rng!r}")
        out += _intensity_findings(volume, lo, hi, modality=modality, fraction=intensity_fraction,
                                   error_fraction=intensity_error_fraction)
    if min_snr > 0:
        bg = snr_background if snr_background is not None else (-1000.0 if (modality or "").upper() == "CT" else 0.0)
        snr = snr_estimate(volume, background=bg)
        if math.isfinite(snr) and snr < min_snr:
            out.append(QCFinding("low_snr", "warning",
                                 f"estimated SNR {snr:.3g} is below {min_snr:g} (Immerkaer/MAD noise estimate)", snr))
    return out


def volume_findings(volume: Any, meta: Mapping[str, Any], *, spacing: Sequence[float] | None = None,
                    rel_tolerance: float = 0.01, uneven_error_rel: float = 0.1, tilt_tolerance_deg: float = 0.5,
                    intensity_fraction: float = 0.005, intensity_error_fraction: float = 0.5,
                    min_snr: float = 5.0) -> list[QCFinding]:
    """QC of a converted volume from its PHI-free ``meta`` (as made by the converter) and its values.

    Reads ``missing_slices``, ``duplicate_positions``, ``uneven_spacing_mm``,
    ``slice_spacing_stats["median_mm"]`` / ``slice_spacing_mm``, ``gantry_tilt_deg``,
    ``modality``, ``units`` and ``channels`` when present; geometry keys that are absent
    are not checked. RGB volumes skip the intensity and SNR checks.
    """
    out: list[QCFinding] = []
    dup = int(meta.get("duplicate_positions") or 0)
    if dup:
        out.append(QCFinding("duplicated_slices", "error", f"{dup} slice(s) share a position with another slice",
                             dup))
    missing = int(meta.get("missing_slices") or 0)
    if missing:
        out.append(QCFinding("missing_slices", "error", f"about {missing} slice(s) missing from the stack", missing))
    stats = meta.get("slice_spacing_stats") or {}
    med = stats.get("median_mm") if isinstance(stats, Mapping) else None
    med = med if med is not None else meta.get("slice_spacing_mm")
    uneven = meta.get("uneven_spacing_mm")
    if not missing and med and uneven is not None and float(med) > 0:
        rel = float(uneven) / float(med)
        if rel > rel_tolerance:
            sev: Severity = "error" if rel > uneven_error_rel else "warning"
            out.append(QCFinding("uneven_spacing", sev, f"slice gaps deviate from the median {float(med):.3g} mm by "
                                 f"up to {100 * rel:.3g} %", rel))
    tilt = meta.get("gantry_tilt_deg")
    if tilt is not None and float(tilt) > tilt_tolerance_deg:
        out.append(QCFinding("gantry_tilt", "warning", f"slices advance at {float(tilt):.3g} deg to their normal",
                             float(tilt)))
    if spacing is not None:
        bad = [s for s in spacing if s is None or not math.isfinite(float(s)) or float(s) <= 0]
        if bad:
            out.append(QCFinding("zero_or_missing_spacing", "error", "voxel spacing has missing, non-finite or "
                                 "non-positive entries", [None if s is None else float(s) for s in spacing]))
    if meta.get("channels") != "RGB":
        out += volume_value_findings(volume, modality=meta.get("modality"), units=meta.get("units"),
                                     intensity_fraction=intensity_fraction,
                                     intensity_error_fraction=intensity_error_fraction, min_snr=min_snr)
    return out


def qc_table(findings: Iterable[QCFinding | Mapping[str, Any]]) -> pd.DataFrame:
    """Findings as a DataFrame with columns ``code, severity, message, value`` (plus any extra dict keys)."""
    import pandas as pd

    rows = [f.as_dict() if isinstance(f, QCFinding) else dict(f) for f in findings]
    cols = ["code", "severity", "message", "value"]
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    extra = [c for c in df.columns if c not in cols]
    return df[[c for c in cols if c in df.columns] + extra]
