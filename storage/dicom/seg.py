"""DICOM Segmentation (binary, fractional, label map) -> one boolean mask per segment.

PS3.3 C.8.20 (Segmentation IOD). Each frame belongs to one segment
(``SegmentIdentificationSequence/ReferencedSegmentNumber`` in the per-frame functional
groups) and has its own plane position (``PlanePositionSequence``); orientation and
pixel spacing are usually shared. Frames are placed on the grid of the referenced
volume **by position**: every voxel centre of the referenced volume takes the value of
the nearest SEG pixel on the nearest SEG plane (nearest neighbour), provided that
plane lies within half a slice of the voxel. When the SEG grid equals the referenced
grid this is an exact copy; when it differs it is a nearest-neighbour resampling
(``meta["resampled"]``). FRACTIONAL segments are thresholded at
``fractional_threshold`` x MaximumFractionalValue.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from imaging.geometry import orientation_cosines, slice_normal
from storage.dicom.model import ConvertedMask, ConvertedVolume, Rejection
from storage.dicom.pixels import DEFAULT_MAX_PIXEL_BYTES, PixelDataError, decode_frames

__all__ = ["convert_seg"]

SEG_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"}


def _item(ds, name: str):
    seq = ds.get(name) if ds is not None else None
    return seq[0] if seq else None


def _attr(shared, per, macro: str, attr: str):
    for src in (per, shared):
        it = _item(src, macro)
        if it is not None and attr in it:
            return it.get(attr)
    return None


def _floats(v, n: int) -> np.ndarray | None:
    if v is None:
        return None
    try:
        a = np.array([float(x) for x in v], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return a if a.size == n and np.all(np.isfinite(a)) else None


def _referenced(ds, volumes: list[ConvertedVolume]) -> tuple[ConvertedVolume | None, str]:
    spatial = [v for v in volumes if v.kind in ("3d", "4d")]
    inst: set[str] = set()
    series: set[str] = set()
    for rs in ds.get("ReferencedSeriesSequence") or []:
        series.add(str(rs.get("SeriesInstanceUID", "")))
        for ri in rs.get("ReferencedInstanceSequence") or []:
            inst.add(str(ri.get("ReferencedSOPInstanceUID", "")))
    for per in ds.get("PerFrameFunctionalGroupsSequence") or []:
        for der in per.get("DerivationImageSequence") or []:
            for src in der.get("SourceImageSequence") or []:
                inst.add(str(src.get("ReferencedSOPInstanceUID", "")))
    inst.discard("")
    series.discard("")

    def best(c: list[ConvertedVolume]) -> ConvertedVolume:
        return max(c, key=lambda v: len(inst.intersection(v.instance_uids)))

    cands = [v for v in spatial if v.series_uid in series]
    if cands:
        return best(cands), "referenced_series"
    cands = [v for v in spatial if inst.intersection(v.instance_uids)]
    if cands:
        return best(cands), "referenced_instances"
    for_uid = str(ds.get("FrameOfReferenceUID", "") or "")
    cands = [v for v in spatial if for_uid and v.frame_of_reference_uid == for_uid]
    if len(cands) == 1:
        return cands[0], "frame_of_reference"
    return None, "ambiguous_frame_of_reference" if cands else "not_found"


def _resample_segment(frames: np.ndarray, ipps: np.ndarray, iop: np.ndarray, ps: np.ndarray, half_thickness: float,
                      target_affine: np.ndarray, target_shape: tuple[int, int, int]) -> tuple[np.ndarray, bool]:
    """Nearest-neighbour placement of SEG frames (F, R, C) on the target grid. Returns (mask, exact_copy)."""
    x, y = orientation_cosines(iop)
    n = slice_normal(iop)
    d_planes = ipps @ n
    order = np.argsort(d_planes)
    d_sorted = d_planes[order]
    out = np.zeros(target_shape, dtype=bool)
    n_rows, n_cols = frames.shape[1:3]
    k_n, r_n, c_n = target_shape
    rr, cc = np.meshgrid(np.arange(r_n, dtype=np.float64), np.arange(c_n, dtype=np.float64), indexing="ij")
    exact = True
    for k in range(k_n):
        pts = (target_affine[:3, 0] * k + target_affine[:3, 3])[None, None, :] \
            + rr[..., None] * target_affine[:3, 1] + cc[..., None] * target_affine[:3, 2]
        d = pts @ n
        pos = np.searchsorted(d_sorted, d)
        lo = np.clip(pos - 1, 0, len(d_sorted) - 1)
        hi = np.clip(pos, 0, len(d_sorted) - 1)
        pick = np.where(np.abs(d - d_sorted[lo]) <= np.abs(d - d_sorted[hi]), lo, hi)
        dist = np.abs(d - d_sorted[pick])
        ok = dist <= half_thickness + 1e-6
        if not ok.any():
            continue
        f = order[pick]
        rel = pts - ipps[f]
        r_f = rel @ y / ps[0]
        c_f = rel @ x / ps[1]
        ri = np.rint(r_f).astype(np.int64)
        ci = np.rint(c_f).astype(np.int64)
        if exact and (np.abs(r_f - ri).max() > 1e-3 or np.abs(c_f - ci).max() > 1e-3 or dist[ok].max() > 1e-3):
            exact = False
        ok &= (ri >= 0) & (ri < n_rows) & (ci >= 0) & (ci < n_cols)
        vals = np.zeros((r_n, c_n), dtype=bool)
        vals[ok] = frames[f[ok], ri[ok], ci[ok]]
        out[k] = vals
    return out, exact


def convert_seg(ds, volumes: list[ConvertedVolume], *, sha256: str = "",
                max_pixel_bytes: int = DEFAULT_MAX_PIXEL_BYTES,
                fractional_threshold: float = 0.5) -> tuple[list[ConvertedMask], list[Rejection]]:
    """Turn a DICOM SEG into one :class:`ConvertedMask` per segment on the referenced grid.

    Parameters
    ----------
    ds : pydicom.Dataset
        A full Segmentation dataset (with pixel data).
    volumes : list of ConvertedVolume
        Candidate referenced volumes.
    sha256 : str
        Hash of the SEG file (for rejections).
    max_pixel_bytes : int
        Cap on the SEG's decoded pixel bytes (checked before decoding).
    fractional_threshold : float in (0, 1]
        FRACTIONAL segments: voxel is inside when value >= threshold x MaximumFractionalValue.

    Returns
    -------
    masks, rejections
        Rejection reasons: ``seg_reference_not_found``, ``seg_missing_geometry``, pixel
        reasons from :mod:`storage.dicom.pixels`.
    """
    if not 0 < fractional_threshold <= 1:
        raise ValueError(f"fractional_threshold must be in (0, 1], got {fractional_threshold!r}")
    vol, how = _referenced(ds, volumes)
    if vol is None:
        return [], [Rejection(sha256, "seg_reference_not_found",
                              f"no converted volume matches the segmentation's references ({how})")]
    try:
        frames = decode_frames(ds, max_pixel_bytes=max_pixel_bytes)
    except PixelDataError as exc:
        return [], [Rejection(sha256, exc.reason, exc.detail, exc.exception_type)]
    if frames.ndim != 3:
        return [], [Rejection(sha256, "seg_bad_pixels", "segmentation pixels are not single-sample frames")]
    seg_type = str(ds.get("SegmentationType", "BINARY")).upper()
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    per_seq = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_seq) != frames.shape[0]:
        return [], [Rejection(sha256, "seg_missing_geometry",
                              f"{len(per_seq)} per-frame groups for {frames.shape[0]} frames")]
    seg_no = np.zeros(frames.shape[0], dtype=np.int64)
    ipps = np.zeros((frames.shape[0], 3))
    iop = ps = None
    thickness = None
    for i, per in enumerate(per_seq):
        sn = _attr(shared, per, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
        seg_no[i] = int(sn) if sn is not None else 0
        ipp = _floats(_attr(shared, per, "PlanePositionSequence", "ImagePositionPatient"), 3)
        o = _floats(_attr(shared, per, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
        p = _floats(_attr(shared, per, "PixelMeasuresSequence", "PixelSpacing"), 2)
        t = _attr(shared, per, "PixelMeasuresSequence", "SpacingBetweenSlices") or \
            _attr(shared, per, "PixelMeasuresSequence", "SliceThickness")
        if ipp is None or o is None or p is None:
            return [], [Rejection(sha256, "seg_missing_geometry", f"frame {i} lacks plane position/orientation/spacing")]
        if iop is not None and not np.allclose(o, iop, atol=1e-4):
            return [], [Rejection(sha256, "seg_missing_geometry", "frames of one segmentation differ in orientation")]
        ipps[i], iop, ps = ipp, o, p
        if t not in (None, "") and thickness is None:
            thickness = float(t)
    assert iop is not None and ps is not None
    # half a slice of the referenced grid (along the SEG normal) decides whether a plane covers a voxel
    n = slice_normal(iop)
    ref_step = abs(float(np.dot(vol.affine[:3, 0], n)))
    half = 0.5 * (ref_step if ref_step > 1e-6 else (thickness or 1.0))
    target_shape = tuple(vol.volume.shape[1:4] if vol.kind == "4d" else vol.volume.shape[:3])
    labels = {int(s.get("SegmentNumber", 0)): str(s.get("SegmentLabel", "") or "") for s in
              ds.get("SegmentSequence") or []}
    max_frac = float(ds.get("MaximumFractionalValue", 255) or 255)
    masks: list[ConvertedMask] = []
    rejections: list[Rejection] = []
    numbers = sorted(labels) if seg_type != "LABELMAP" else sorted(labels)
    for number in numbers:
        if seg_type == "LABELMAP":
            sel = np.ones(frames.shape[0], dtype=bool)
            fr = frames == number
        else:
            sel = seg_no == number
            if seg_type == "FRACTIONAL":
                fr = frames[sel] >= fractional_threshold * max_frac
            else:
                fr = frames[sel] > 0
        meta: dict[str, Any] = {"segment_number": number, "segmentation_type": seg_type, "reference_found_by": how,
                                "n_frames": int(sel.sum())}
        if seg_type == "FRACTIONAL":
            meta["fractional_threshold"] = fractional_threshold
        if not sel.any():
            mask = np.zeros(target_shape, dtype=bool)
            exact = True
        else:
            mask, exact = _resample_segment(fr, ipps[sel], iop, ps, half, vol.affine, target_shape)  # type: ignore[arg-type]
        meta["resampled"] = not exact
        if not exact:
            meta["resampling"] = "nearest neighbour by position onto the referenced grid"
        meta["n_voxels"] = int(mask.sum())
        masks.append(ConvertedMask(mask=mask, roi_name=labels.get(number) or f"segment_{number}",
                                   referenced_series_uid=vol.series_uid, referenced_volume_index=vol.volume_index,
                                   source="seg", meta=meta))
    return masks, rejections
