"""The IBSI-1 feature extractor: one entry point, :func:`extract_features`.

Processing order (IBSI reference manual, figure "image processing scheme"):
interpolation of image and ROI -> intensity rounding -> partial-volume
binarisation (morphological mask) -> re-segmentation (intensity mask) ->
feature families, with discretisation for the intensity histogram and the
texture matrices and a separate discretisation for the IVH.

The function is pure and keeps no global state, so it can run per ROI in a
thread pool; the heavy parts (scipy.ndimage, FFTs, sorting, cc3d) run in C.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from imaging.features import intensity as fi
from imaging.features import morphology as fm
from imaging.features import texture as ft
from imaging.features.codes import FEATURE_CODES, ibsi_code
from imaging.features.preprocess import (
    PARTIAL_VOLUME_EPS,
    InterpolationGrid,
    discretise,
    discretise_ivh,
    interpolation_grid,
    resample_to_grid,
    resegment,
)
from imaging.features.settings import FeatureSettings

COLUMNS = ["family", "feature", "aggregation", "ibsi_code", "value"]

_SUPPORT = {"nearest": 1, "linear": 2, "cubic": 16}  # input voxels needed around a sample (cubic: prefilter)


@dataclass(frozen=True)
class PreparedRoi:
    """A ROI after the IBSI image-processing chain, cropped around the ROI.

    Attributes
    ----------
    image : ndarray float64 (n0, n1, n2)
        Interpolated (and rounded) intensities; extends one local-intensity sphere
        radius beyond the ROI where the source image does.
    morph_mask, intensity_mask : ndarray of bool
        Morphological (G5KJ) and re-segmented intensity (SEFI) masks.
    spacing : tuple of 3 float, mm
    """

    image: np.ndarray
    morph_mask: np.ndarray
    intensity_mask: np.ndarray
    spacing: tuple[float, float, float]


def _target_spacing(spacing: np.ndarray, settings: FeatureSettings) -> np.ndarray | None:
    if settings.new_spacing is None:
        return None
    if settings.interpolation_dim == "2d":
        ip = settings.in_plane_spacing
        assert ip is not None
        return np.array([spacing[0], ip[0], ip[1]], dtype=np.float64)
    return np.asarray(settings.new_spacing, dtype=np.float64)


def prepare_roi(volume: np.ndarray, mask: np.ndarray, *, spacing: tuple[float, ...],
                settings: FeatureSettings) -> PreparedRoi:
    """Run the IBSI-1 image-processing chain on one ROI.

    Parameters
    ----------
    volume : ndarray (n0, n1, n2)
        Image intensities, axis 0 = slices.
    mask : ndarray (n0, n1, n2), bool or int
        ROI; non-zero voxels belong to it.
    spacing : tuple of 3 float
        Voxel size in mm, array-axis order.
    settings : FeatureSettings

    Returns
    -------
    PreparedRoi

    Raises
    ------
    ValueError
        For mismatched shapes, invalid spacing, or a ROI that is empty (before or
        after interpolation / re-segmentation).
    """
    if not isinstance(settings, FeatureSettings):
        raise TypeError(f"settings must be a FeatureSettings, got {type(settings).__name__}")
    vol = np.asarray(volume)
    roi = np.asarray(mask)
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3-D [slice, row, column], got shape {vol.shape!r}")
    if roi.shape != vol.shape:
        raise ValueError(f"mask shape {roi.shape!r} differs from volume shape {vol.shape!r}")
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be three positive numbers (mm), got {spacing!r}")
    roi = roi != 0
    if not roi.any():
        raise ValueError("mask is empty: the ROI holds no voxel")
    idx = np.nonzero(roi)
    lo = np.array([int(i.min()) for i in idx])
    hi = np.array([int(i.max()) for i in idx])
    new_sp = _target_spacing(sp, settings)
    margin_mm = fi.PEAK_RADIUS_MM + float(np.max(sp if new_sp is None else new_sp))
    shape = np.array(vol.shape)

    if new_sp is None:
        pad = np.ceil(margin_mm / sp).astype(int)
        a = np.maximum(lo - pad, 0)
        b = np.minimum(hi + pad, shape - 1)
        sl = tuple(slice(int(x), int(y) + 1) for x, y in zip(a, b, strict=True))
        image = vol[sl].astype(np.float64)
        morph = roi[sl]
        out_sp = sp
    else:
        grid: InterpolationGrid = interpolation_grid(vol.shape, spacing=tuple(sp), new_spacing=tuple(new_sp))
        roi_reach = 3.0 if settings.roi_interpolation == "cubic" else 1.0
        margin_idx = margin_mm / sp + roi_reach
        k_lo = np.ceil((lo - margin_idx - grid.origin) / grid.step).astype(int)
        k_hi = np.floor((hi + margin_idx - grid.origin) / grid.step).astype(int)
        k_lo = np.clip(k_lo, 0, np.array(grid.shape) - 1)
        k_hi = np.clip(k_hi, 0, np.array(grid.shape) - 1)
        out_shape = tuple(int(v) for v in (k_hi - k_lo + 1))
        x_lo = grid.origin + k_lo * grid.step
        x_hi = grid.origin + k_hi * grid.step
        support = max(_SUPPORT[settings.interpolation], _SUPPORT[settings.roi_interpolation])
        in_lo = np.maximum(np.floor(x_lo).astype(int) - support, 0)
        in_hi = np.minimum(np.ceil(x_hi).astype(int) + support, shape - 1)
        sl = tuple(slice(int(x), int(y) + 1) for x, y in zip(in_lo, in_hi, strict=True))
        start = tuple(int(v) for v in k_lo)
        offset = tuple(int(v) for v in in_lo)
        image = resample_to_grid(vol[sl], grid, method=settings.interpolation, start=start, out_shape=out_shape,
                                 input_offset=offset)
        frac = resample_to_grid(roi[sl].astype(np.float64), grid, method=settings.roi_interpolation, start=start,
                                out_shape=out_shape, input_offset=offset)
        morph = frac >= settings.roi_partial_volume - PARTIAL_VOLUME_EPS
        out_sp = np.asarray(grid.spacing)
    if settings.intensity_rounding:
        image = np.round(image)
    if not morph.any():
        raise ValueError("the ROI is empty after interpolation (no voxel reaches the partial-volume threshold "
                         f"{settings.roi_partial_volume})")
    intensity_mask = resegment(image, morph, intensity_range=settings.resegmentation_range,
                               outlier_sigma=settings.outlier_sigma)
    if not intensity_mask.any():
        raise ValueError("the intensity mask is empty after re-segmentation "
                         f"(range {settings.resegmentation_range!r}, outlier_sigma {settings.outlier_sigma!r})")
    return PreparedRoi(image=image, morph_mask=morph, intensity_mask=intensity_mask,
                       spacing=(float(out_sp[0]), float(out_sp[1]), float(out_sp[2])))


def _bbox(mask: np.ndarray) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)


def extract_prepared(roi: PreparedRoi, settings: FeatureSettings) -> pd.DataFrame:
    """Feature table of an already prepared ROI (see :func:`extract_features`)."""
    rows: list[tuple[str, str, str, float]] = []

    def add(family: str, values: dict[str, float], aggregation: str = "") -> None:
        for key, val in values.items():
            rows.append((family, key, aggregation, float(val)))

    fams = set(settings.families)
    image, morph, imask, sp = roi.image, roi.morph_mask, roi.intensity_mask, roi.spacing
    box = _bbox(morph)
    img_b, morph_b, imask_b = image[box], morph[box], imask[box]
    values = image[imask]

    if "morph" in fams:
        add("morph", fm.morphology_features(morph_b, imask_b, img_b, spacing=sp))
    if "loc" in fams:
        add("loc", fi.local_intensity_features(image, imask, spacing=sp))
    if "stat" in fams:
        add("stat", fi.statistics_features(values))
    texture_fams = fams & {"cm", "rlm", "szm", "dzm", "ngt", "ngl"}
    if "ih" in fams or texture_fams:
        lower = settings.fbs_minimum
        if lower is None and settings.resegmentation_range is not None:
            lower = settings.resegmentation_range[0]
        disc = discretise(img_b, imask_b, method=settings.discretisation, bin_number=settings.bin_number,
                          bin_width=settings.bin_width, minimum=lower)
        levels = disc.levels
        ng = disc.n_levels
        if "ih" in fams:
            add("ih", fi.histogram_features(levels[imask_b], ng))
        dims = settings.texture_dims
        two = "2d" in dims or "2.5d" in dims
        three = "3d" in dims
        n_slices = levels.shape[0]
        if "cm" in fams:
            s2 = ft.glcm_stack(levels, distance=settings.glcm_distance, two_d=True) if two else None
            s3 = ft.glcm_stack(levels, distance=settings.glcm_distance, two_d=False) if three else None
            for tok, vals in ft.aggregate_directional(s2, s3, lambda s: ft.glcm_features(s, ng), n_slices,
                                                      dims).items():
                add("cm", vals, tok)
        if "rlm" in fams:
            s2 = ft.glrlm_stack(levels, two_d=True) if two else None
            s3 = ft.glrlm_stack(levels, two_d=False) if three else None
            for tok, vals in ft.aggregate_directional(s2, s3, lambda s: ft.zone_features(s, "rlm"), n_slices,
                                                      dims).items():
                add("rlm", vals, tok)
        if "szm" in fams:
            s2 = ft.glszm_stack(levels, two_d=True) if two else None
            s3 = ft.glszm_stack(levels, two_d=False) if three else None
            for tok, vals in ft.aggregate_slicewise(s2, s3, lambda s: ft.zone_features(s, "szm"), dims).items():
                add("szm", vals, tok)
        if "dzm" in fams:
            s2 = ft.gldzm_stack(levels, morph_b, two_d=True) if two else None
            s3 = ft.gldzm_stack(levels, morph_b, two_d=False) if three else None
            for tok, vals in ft.aggregate_slicewise(s2, s3, lambda s: ft.zone_features(s, "dzm"), dims).items():
                add("dzm", vals, tok)
        if "ngt" in fams:
            for tok, vals in ft.aggregate_ngtdm(levels, distance=settings.ngtdm_distance, dims=dims).items():
                add("ngt", vals, tok)
        if "ngl" in fams:
            kw = {"distance": settings.ngldm_distance, "coarseness": settings.ngldm_coarseness}
            s2 = ft.ngldm_stack(levels, two_d=True, **kw) if two else None  # type: ignore[arg-type]
            s3 = ft.ngldm_stack(levels, two_d=False, **kw) if three else None  # type: ignore[arg-type]
            for tok, vals in ft.aggregate_slicewise(s2, s3, lambda s: ft.zone_features(s, "ngl"), dims).items():
                add("ngl", vals, tok)
    if "ivh" in fams:
        data = discretise_ivh(values, method=settings.ivh_discretisation,
                              intensity_range=settings.resegmentation_range,
                              bin_width=settings.ivh_bin_width, bin_number=settings.ivh_bin_number)
        add("ivh", fi.ivh_features(data))

    frame = pd.DataFrame(rows, columns=["family", "feature", "aggregation", "value"])
    frame["ibsi_code"] = [ibsi_code(f, a) for f, a in zip(frame["feature"], frame["aggregation"], strict=True)]
    return frame[COLUMNS]


def extract_features(volume: np.ndarray, mask: np.ndarray, *, spacing: tuple[float, ...],
                     settings: FeatureSettings) -> pd.DataFrame:
    """Compute IBSI-1 features of one ROI.

    Parameters
    ----------
    volume : ndarray (n0, n1, n2)
        Image intensities, ``volume[slice, row, column]``.
    mask : ndarray (n0, n1, n2), bool or int
        ROI on the grid of ``volume`` (non-zero = inside).
    spacing : tuple of 3 float
        Voxel size in mm, array-axis order.
    settings : FeatureSettings
        Processing and feature settings (see :data:`imaging.features.settings.PRESETS`).

    Returns
    -------
    pandas.DataFrame
        One row per feature value with columns ``family`` (IBSI prefix, e.g. ``cm``),
        ``feature`` (IBSI short name, e.g. ``cm.joint.max``), ``aggregation`` (texture
        aggregation token such as ``3d_avg``, empty otherwise), ``ibsi_code``
        (``GYBY:ITBB``; bare feature code without aggregation) and ``value``.
    """
    roi = prepare_roi(volume, mask, spacing=spacing, settings=settings)
    return extract_prepared(roi, settings)


def feature_keys() -> list[str]:
    """Every feature key the extractor knows (all families)."""
    return list(FEATURE_CODES)


def is_close_ibsi(value: float, reference: float, tolerance: float) -> bool:
    """The IBSI match rule: round ``value`` to 3 significant digits, then ``|value - ref| <= tol``."""
    if not math.isfinite(value):
        return False
    if value == 0:
        rounded = 0.0
    else:
        rounded = round(value, 2 - int(math.floor(math.log10(abs(value)))))
    return abs(rounded - reference) <= tolerance + 1e-12 * max(1.0, abs(reference))
