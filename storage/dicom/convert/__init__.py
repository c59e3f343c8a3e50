"""Convert one DICOM series into volumes (arrays + LPS affine + PHI-free meta).

Handles classic single-frame stacks (3-D), repeated positions over time (4-D), Siemens
mosaics, enhanced multi-frame objects (per-frame / shared functional groups), legacy
multi-frame cine, and 2-D projection / ultrasound / secondary-capture images.

Geometry (PS3.3 C.7.6.2.1.1): slices are ordered along the normal ``X x Y`` of
ImageOrientationPatient by their ImagePositionPatient; the slice step is the vector
between consecutive IPPs (not SliceThickness). A step that is not parallel to the normal
(CT gantry tilt) is kept as a sheared affine: the data stay as acquired and the affine
is the honest geometry; ``meta["gantry_tilt_deg"]`` says so.

Nothing here raises on a bad file: a problem becomes a
:class:`~storage.dicom.model.Rejection` with a stable reason code, and the rest of the
series is converted when that is safe (missing slices are reported in ``meta``).
"""

from __future__ import annotations

import numpy as np

from storage.dicom.bugs import raise_if_bug, series_handle
from storage.dicom.convert.common import PetUnits, _Decoded, _load, _reject  # noqa: F401
from storage.dicom.convert.mosaic import _build_mosaic
from storage.dicom.convert.multiframe import _build_multiframe
from storage.dicom.convert.pet import suvbw_factor
from storage.dicom.convert.planar import _build_2d, _planar_spacing  # noqa: F401
from storage.dicom.convert.planes import _build_3d, _build_4d
from storage.dicom.model import ConvertedVolume, Rejection, SeriesGroup
from storage.dicom.pixels import DEFAULT_MAX_PIXEL_BYTES, PixelDataError
from storage.dicom.series import split_volumes

__all__ = ["convert_series", "suvbw_factor", "DEFAULT_MAX_PIXEL_BYTES", "REASON_CODES"]

#: Reason codes produced by scan / series / convert / rtstruct / seg in addition to the guard's
#: (:data:`storage.dicom.guard.REASON_CODES`; shared codes such as ``not_dicom``, ``dicomdir``,
#: ``unreadable_file``, ``pixel_length_mismatch``, ``absurd_dimensions``, ``decode_failed``,
#: ``unsupported_transfer_syntax``, ``missing_required_attribute`` and
#: ``duplicate_instance_conflict`` keep the guard's meaning).
REASON_CODES: dict[str, str] = {
    "unreadable_header": "pydicom could not parse the header (scan)",
    "missing_geometry": "no usable ImageOrientationPatient / ImagePositionPatient / PixelSpacing where a "
                        "3-D stack, mosaic or segmentation needs them",
    "duplicate_slice_positions": "slice positions repeat without forming complete time points; the first "
                                 "file at each position was kept",
    "incomplete_time_point": "a time point of a 4-D series lost slices and was dropped",
    "inconsistent_geometry": "files expected to share one grid (mosaic time series) do not",
    "mosaic_without_slice_count": "a MOSAIC image without NumberOfImagesInMosaic",
    "series_split_failed": "the series could not be split into volumes",
    "conversion_failed": "a volume could not be assembled (unexpected error; exception type recorded)",
    "rtstruct_reference_not_found": "no converted volume matches the RTSTRUCT's references",
    "rtstruct_no_contours": "an ROI has no CLOSED_PLANAR contour",
    "rtstruct_bad_contour": "ContourData could not be read",
    "rtstruct_failed": "the RTSTRUCT could not be rasterised (unexpected error)",
    "seg_reference_not_found": "no converted volume matches the segmentation's references",
    "seg_missing_geometry": "segmentation frames lack plane position/orientation/spacing or disagree",
    "seg_bad_pixels": "segmentation pixels are not single-sample frames",
    "seg_failed": "the segmentation could not be converted (unexpected error)",
    "non_image_object:<kind>": "routing record (not a rejection): SR, presentation state, RT dose/plan, other",
}



# --------------------------------------------------------------------------------------- entry point
_BUILDERS = {"3d": _build_3d, "4d": _build_4d, "mosaic": _build_mosaic, "multiframe": _build_multiframe,
             "2d": _build_2d}


def convert_series(group: SeriesGroup, *, max_pixel_bytes: int = DEFAULT_MAX_PIXEL_BYTES,
                   pet_units: PetUnits = "as_stored",
                   apply_magnification: bool = True) -> tuple[list[ConvertedVolume], list[Rejection]]:
    """Convert one image series into volumes.

    Parameters
    ----------
    group : SeriesGroup
        Files of one series (from :func:`storage.dicom.series.group_series`).
    max_pixel_bytes : int
        Cap on the decoded size of one object's pixel data, checked from the header
        before any pixel byte is read (``Rows*Columns*SamplesPerPixel*frames*BitsAllocated/8``).
    pet_units : {"as_stored", "suvbw"}
        PET values as stored*slope+intercept (default; ``meta["units"]`` says what they
        are) or multiplied by the body-weight SUV factor when ``Units == BQML`` and the
        header allows it (``meta["suvbw_status"]``, ``meta["suvbw_applied"]``).
    apply_magnification : bool
        Projection radiography with ImagerPixelSpacing only: divide by
        EstimatedRadiographicMagnificationFactor when present (spacing at the patient plane,
        default) or keep the detector spacing; ``meta["calibration"]`` says which.

    Returns
    -------
    volumes : list of ConvertedVolume
        ``volume_index`` numbers them within the series.
    rejections : list of Rejection
        Per-file problems (reason codes) and, for non-image objects,
        ``non_image_object:<kind>`` routing records.
    """
    if not isinstance(max_pixel_bytes, int | np.integer) or max_pixel_bytes <= 0:
        raise ValueError(f"max_pixel_bytes must be a positive int, got {max_pixel_bytes!r}")
    if pet_units not in ("as_stored", "suvbw"):
        raise ValueError(f"pet_units must be 'as_stored' or 'suvbw', got {pet_units!r}")
    if group.object_kind != "image":
        return [], [_reject(e, f"non_image_object:{group.object_kind}",
                            f"{group.object_kind} object routed, not converted as an image") for e in group.files]
    rejections: list[Rejection] = []
    try:
        plans, rej = split_volumes(group)
    except Exception as exc:  # noqa: BLE001
        raise_if_bug(exc, stage="series split", input_key=series_handle([e.sha256 for e in group.files]))
        return [], [_reject(e, "series_split_failed", "the series could not be split into volumes", exc)
                    for e in group.files]
    rejections.extend(rej)
    volumes: list[ConvertedVolume] = []
    for plan in plans:
        dec = _Decoded(int(max_pixel_bytes), apply_magnification=bool(apply_magnification))
        try:
            built = _BUILDERS[plan.kind](plan, group, dec, rejections, pet_units)
        except PixelDataError as exc:
            rejections.extend(_reject(e, exc.reason, exc.detail, exc.exception_type) for e in plan.entries)
            continue
        except Exception as exc:  # noqa: BLE001 - a bad volume never crashes the collection; a bug does
            raise_if_bug(exc, stage="conversion", input_key=series_handle([e.sha256 for e in plan.entries]))
            rejections.extend(_reject(e, "conversion_failed", "the volume could not be assembled", exc)
                              for e in plan.entries)
            continue
        for v in built:
            v.source_sha256s = sorted({e.sha256 for e in plan.entries})
        volumes.extend(built)
    for i, v in enumerate(volumes):
        v.volume_index = i
    return volumes, rejections
