"""2-D images: projection radiography spacing (magnification), ultrasound, secondary capture."""

from __future__ import annotations

from typing import Any

import numpy as np

from imaging.geometry import (
    affine_from_dicom,
    orientation_cosines,
)
from storage.dicom.convert.common import (
    _PROJECTION_MODALITIES,
    PetUnits,
    _Decoded,
    _load,
    _opt_float,
    _reject,
    _rescale_of,
    _valid_ps,
    base_meta,
)
from storage.dicom.model import ConvertedVolume, Rejection, SeriesGroup
from storage.dicom.pixels import (
    PixelDataError,
    apply_rescale,
)
from storage.dicom.series import VolumePlan, _floats, _num, _s
from storage.images import spacing_from_affine


# --------------------------------------------------------------------------------------- 2-D
def _planar_spacing(ds, *, apply_magnification: bool = True) -> tuple[tuple[float, float] | None, str, dict[str, Any]]:
    """In-plane spacing of a 2-D image and where it comes from (PS3.3 10.7.1.3, C.8.5.5)."""
    notes: dict[str, Any] = {}
    modality = _s(ds, "Modality")
    ps = _valid_ps(ds.get("PixelSpacing"))
    ips = _valid_ps(ds.get("ImagerPixelSpacing"))
    if ps is not None:
        src = "PixelSpacing"
        cal = _s(ds, "PixelSpacingCalibrationType")
        if cal:
            notes["calibration"] = f"PixelSpacing calibrated ({cal})"
        elif ips is not None and np.allclose(ps, ips):
            notes["calibration"] = "PixelSpacing equals ImagerPixelSpacing: at detector, not corrected for magnification"
        elif modality in _PROJECTION_MODALITIES:
            notes["calibration"] = "PixelSpacing given without calibration type (meaning defined by the modality)"
        return ps, src, notes
    if ips is not None:
        emf = _opt_float(ds, "EstimatedRadiographicMagnificationFactor")
        if emf and emf > 0 and apply_magnification:
            notes["calibration"] = ("ImagerPixelSpacing divided by EstimatedRadiographicMagnificationFactor "
                                    f"({emf:g}): estimated size at the patient plane")
            return (ips[0] / emf, ips[1] / emf), "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor", notes
        notes["calibration"] = "ImagerPixelSpacing at detector, not corrected for magnification"
        return ips, "ImagerPixelSpacing", notes
    regions = ds.get("SequenceOfUltrasoundRegions")
    if regions:
        deltas = set()
        for r in regions:
            ux, uy = _num(r, "PhysicalUnitsXDirection"), _num(r, "PhysicalUnitsYDirection")
            dx, dy = _opt_float(r, "PhysicalDeltaX"), _opt_float(r, "PhysicalDeltaY")
            if ux == 3 and uy == 3 and dx and dy and dx > 0 and dy > 0:  # 3 = cm
                deltas.add((round(abs(dy) * 10.0, 9), round(abs(dx) * 10.0, 9)))
        if len(deltas) == 1:
            dy, dx = deltas.pop()
            notes["calibration"] = "SequenceOfUltrasoundRegions PhysicalDeltaY/X (cm) converted to mm"
            return (dy, dx), "SequenceOfUltrasoundRegions", notes
        if len(deltas) > 1:
            notes["calibration"] = "ultrasound regions disagree on spacing; pixel units used"
            return None, "none", notes
    nsp = _valid_ps(ds.get("NominalScannedPixelSpacing"))
    if nsp is not None:
        notes["calibration"] = "NominalScannedPixelSpacing (digitiser), not a patient-plane size"
        return nsp, "NominalScannedPixelSpacing", notes
    notes["calibration"] = "no spacing in the object; 1 pixel = 1 unit"
    return None, "none", notes


def _planar_affine(ds, ps: tuple[float, float] | None) -> np.ndarray:
    ps2 = ps or (1.0, 1.0)
    iop = _floats(ds.get("ImageOrientationPatient"), 6)
    ipp = _floats(ds.get("ImagePositionPatient"), 3)
    if iop is not None:
        try:
            orientation_cosines(iop)
            return affine_from_dicom(iop, ipp or (0.0, 0.0, 0.0), ps2, None)
        except ValueError:
            pass
    return affine_from_dicom((1, 0, 0, 0, 1, 0), (0.0, 0.0, 0.0), ps2, None)


def _build_2d(plan: VolumePlan, group: SeriesGroup, dec: _Decoded, rejections: list[Rejection],
              pet_units: PetUnits) -> list[ConvertedVolume]:
    e = plan.entries[0]
    ds = _load(e, rejections)
    if ds is None:
        return []
    try:
        frames = dec.get(ds, e.sha256)
    except PixelDataError as exc:
        rejections.append(_reject(e, exc.reason, exc.detail, exc.exception_type))
        return []
    slope, inter, _ = _rescale_of(ds)
    colour = frames.ndim == 4
    img = frames[0] if colour else apply_rescale(frames, slope, inter)[0]
    ps, src, notes = _planar_spacing(ds, apply_magnification=dec.apply_magnification)
    affine = _planar_affine(ds, ps)
    meta = base_meta(ds, n_files=1)
    meta.update(plan.key)
    meta.update(notes)
    meta.update(spacing_source=src, dtype=str(img.dtype), channels="RGB" if colour else 1,
                rescale_slope=float(slope), rescale_intercept=float(inter))
    if "ImagerPixelSpacing" in ds and ps is not None:
        meta["imager_pixel_spacing_mm"] = [float(v) for v in ds.ImagerPixelSpacing]
    if _s(ds, "PhotometricInterpretation").upper() == "MONOCHROME1":
        meta["display_note"] = "MONOCHROME1: low values display bright; values kept as stored"
    return [ConvertedVolume(volume=img, affine=affine, spacing=spacing_from_affine(affine)[1:], kind="2d", meta=meta,
                            instance_uids=[_s(ds, "SOPInstanceUID")], series_uid=group.series_uid,
                            frame_of_reference_uid=group.frame_of_reference_uid)]


