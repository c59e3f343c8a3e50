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

import math
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np

from imaging.geometry import (
    affine_from_dicom,
    demosaic,
    detect_gantry_tilt,
    mosaic_position_correction,
    mosaic_tile_grid,
    orientation_cosines,
    position_along_normal,
    slice_normal,
    slice_spacing_stats,
)
from storage.dicom.bugs import file_handle, raise_if_bug, series_handle
from storage.dicom.model import ConvertedVolume, FileEntry, Rejection, SeriesGroup
from storage.dicom.pixels import (
    DEFAULT_MAX_PIXEL_BYTES,
    PixelDataError,
    apply_rescale,
    decode_frames,
    read_full,
)
from storage.dicom.series import VolumePlan, _cluster_positions, _floats, _num, _s, split_volumes
from storage.images import spacing_from_affine

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

PetUnits = Literal["as_stored", "suvbw"]

_PROJECTION_MODALITIES = {"CR", "DX", "MG", "IO", "PX", "RF", "XA", "RG"}


# --------------------------------------------------------------------------------------- helpers
def _file_size(entry: FileEntry | None) -> int | None:
    if entry is None:
        return None
    try:
        return int(entry.path.stat().st_size)
    except (OSError, AttributeError):
        return None


def _reject(entry: FileEntry | None, reason: str, detail: str, exc: BaseException | str | None = None) -> Rejection:
    et = exc if isinstance(exc, str) or exc is None else type(exc).__name__
    return Rejection(sha256=entry.sha256 if entry else "", reason=reason, detail=detail, exception_type=et,
                     size=_file_size(entry))


def _seq_item(ds, name: str):
    seq = ds.get(name)
    if seq is None:
        return None
    try:
        return seq[0] if len(seq) else None
    except TypeError:
        return None


def _uid_name(uid) -> str:
    try:
        from pydicom.uid import UID

        u = UID(str(uid))
        return u.name if u.is_valid and u.name != str(uid) else "unknown"
    except Exception:  # noqa: BLE001
        return "unknown"


def _opt_float(ds, name: str) -> float | None:
    v = _num(ds, name)
    return None if v is None or not math.isfinite(v) else v


def _rescale_of(ds) -> tuple[float, float, str | None]:
    slope = _opt_float(ds, "RescaleSlope")
    inter = _opt_float(ds, "RescaleIntercept")
    rtype = _s(ds, "RescaleType") or None
    item = _seq_item(ds, "PixelValueTransformationSequence")
    if item is not None:
        slope = _opt_float(item, "RescaleSlope") if slope is None else slope
        inter = _opt_float(item, "RescaleIntercept") if inter is None else inter
        rtype = rtype or (_s(item, "RescaleType") or None)
    return (1.0 if slope is None or slope == 0 else slope), (0.0 if inter is None else inter), rtype


def base_meta(ds, *, n_files: int) -> dict[str, Any]:
    """PHI-free, JSON-serialisable facts of an image object (whitelist: no names, IDs, dates,
    UIDs, descriptions or institution)."""
    meta: dict[str, Any] = {
        "modality": _s(ds, "Modality") or None,
        "sop_class": _uid_name(ds.get("SOPClassUID", "")),
        "manufacturer": _s(ds, "Manufacturer") or None,
        "model": _s(ds, "ManufacturerModelName") or None,
        "transfer_syntax": _uid_name(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "1.2.840.10008.1.2")),
        "photometric": _s(ds, "PhotometricInterpretation") or None,
        "samples_per_pixel": int(_num(ds, "SamplesPerPixel") or 1),
        "bits_allocated": int(_num(ds, "BitsAllocated") or 0),
        "bits_stored": int(_num(ds, "BitsStored") or 0),
        "pixel_representation": int(_num(ds, "PixelRepresentation") or 0),
        "image_type": [str(v) for v in (ds.get("ImageType") or [])],
        "n_files": int(n_files),
    }
    for key, name in (("series_number", "SeriesNumber"), ("acquisition_number", "AcquisitionNumber"),
                      ("echo_number", "EchoNumbers")):
        v = _num(ds, name)
        if v is not None:
            meta[key] = int(v)
    for key, name in (("slice_thickness_mm", "SliceThickness"), ("spacing_between_slices_mm", "SpacingBetweenSlices"),
                      ("echo_time_ms", "EchoTime"), ("repetition_time_ms", "RepetitionTime"),
                      ("inversion_time_ms", "InversionTime"), ("flip_angle_deg", "FlipAngle"),
                      ("magnetic_field_strength_t", "MagneticFieldStrength"), ("kvp", "KVP"),
                      ("diffusion_b_value", "DiffusionBValue")):
        v = _opt_float(ds, name)
        if v is not None:
            meta[key] = v
    for key, name in (("body_part_examined", "BodyPartExamined"), ("convolution_kernel", "ConvolutionKernel"),
                      ("scanning_sequence", "ScanningSequence"), ("mr_acquisition_type", "MRAcquisitionType"),
                      ("patient_position", "PatientPosition")):
        v = ds.get(name)
        if v not in (None, ""):
            meta[key] = [str(x) for x in v] if hasattr(v, "__iter__") and not isinstance(v, str) else str(v)
    units = _s(ds, "Units")
    if units:
        meta["units"] = units
    elif meta["modality"] == "CT":
        meta["units"] = "HU"
    return meta


# --------------------------------------------------------------------------------------- PET SUV
def _dt(date: str, time: str) -> datetime | None:
    date, time = (date or "").strip(), (time or "").strip()
    if not date or not time:
        return None
    t = time.split(".")
    frac = float("0." + t[1]) if len(t) > 1 and t[1].isdigit() else 0.0
    hhmmss = t[0].ljust(6, "0")
    try:
        return datetime.strptime(date[:8] + hhmmss[:6], "%Y%m%d%H%M%S") + timedelta(seconds=frac)
    except ValueError:
        return None


def suvbw_factor(ds) -> tuple[float | None, str]:
    """Factor turning BQML activity into body-weight SUV (g/ml), and a status string.

    ``SUVbw = value [Bq/ml] * weight [g] / decay-corrected injected dose [Bq]`` with the dose
    decayed from RadiopharmaceuticalStartDateTime (or StartTime on SeriesDate) to the scan
    start (SeriesDate/Time, or AcquisitionDate/Time when earlier), following the QIBA
    vendor-neutral pseudo-code for DecayCorrection ``START``.

    Returns
    -------
    (factor or None, status)
        status is ``"computed"``, ``"not_bqml"``, or ``"missing:<tag,...>"`` /
        ``"unsupported:<why>"`` when the tags do not allow it.
    """
    units = _s(ds, "Units").upper()
    if units != "BQML":
        return None, "not_bqml"
    missing = []
    weight = _opt_float(ds, "PatientWeight")
    if not weight or weight <= 0:
        missing.append("PatientWeight")
    rp = _seq_item(ds, "RadiopharmaceuticalInformationSequence")
    dose = _opt_float(rp, "RadionuclideTotalDose") if rp is not None else None
    half = _opt_float(rp, "RadionuclideHalfLife") if rp is not None else None
    if not dose or dose <= 0:
        missing.append("RadionuclideTotalDose")
    if not half or half <= 0:
        missing.append("RadionuclideHalfLife")
    decay = _s(ds, "DecayCorrection").upper()
    series_dt = _dt(_s(ds, "SeriesDate"), _s(ds, "SeriesTime"))
    acq_dt = _dt(_s(ds, "AcquisitionDate") or _s(ds, "SeriesDate"), _s(ds, "AcquisitionTime"))
    scan = min([t for t in (series_dt, acq_dt) if t is not None], default=None)
    inj = None
    if rp is not None:
        sdt = _s(rp, "RadiopharmaceuticalStartDateTime")
        if sdt:
            inj = _dt(sdt[:8], sdt[8:])
        if inj is None:
            inj = _dt(_s(ds, "SeriesDate"), _s(rp, "RadiopharmaceuticalStartTime"))
    if scan is None:
        missing.append("SeriesTime")
    if inj is None:
        missing.append("RadiopharmaceuticalStartTime")
    if missing:
        return None, "missing:" + ",".join(missing)
    if decay not in ("START", "ADMIN"):
        return None, f"unsupported:DecayCorrection={decay or 'absent'}"
    assert weight and dose and half and scan and inj
    dt_s = (scan - inj).total_seconds() if decay == "START" else 0.0
    if dt_s < 0:
        return None, "unsupported:scan_before_injection"
    decayed = dose * math.exp(-math.log(2.0) * dt_s / half)
    return weight * 1000.0 / decayed, "computed"


def _pet_meta(ds, meta: dict[str, Any]) -> float | None:
    if meta.get("modality") != "PT":
        return None
    meta["decay_correction"] = _s(ds, "DecayCorrection") or None
    meta["corrected_image"] = [str(v) for v in (ds.get("CorrectedImage") or [])]
    factor, status = suvbw_factor(ds)
    meta["suvbw_status"] = status
    meta["suvbw_factor"] = factor
    if _s(ds, "Units").upper() == "GML":
        meta["suv_note"] = "values are already SUV (Units=GML) as stored*slope+intercept"
    return factor


# --------------------------------------------------------------------------------------- frames
@dataclass
class _Slice:
    """One 2-D frame of a stack, with its geometry and Modality LUT."""

    entry: FileEntry
    ds: Any  # full dataset (deferred pixel data)
    frame: int  # index into the decoded frames of ``ds``
    ipp: np.ndarray | None
    iop: tuple[float, ...] | None
    ps: tuple[float, ...] | None
    slope: float
    intercept: float


class _Decoded:
    """Per-plan context: decode each file once (cache by sha256) and carry the conversion options."""

    def __init__(self, max_pixel_bytes: int, *, apply_magnification: bool = True):
        self.max = max_pixel_bytes
        self.apply_magnification = apply_magnification
        self.cache: dict[str, np.ndarray] = {}

    def get(self, ds, key: str) -> np.ndarray:
        if key not in self.cache:
            self.cache[key] = decode_frames(ds, max_pixel_bytes=self.max)
        return self.cache[key]


def _load(entry: FileEntry, rejections: list[Rejection]):
    try:
        return read_full(entry.path)
    except Exception as exc:  # noqa: BLE001
        raise_if_bug(exc, stage="conversion", input_key=file_handle(entry.sha256))
        rejections.append(_reject(entry, "unreadable_file", "the file could not be read in full", exc))
        return None


def _stack_arrays(slices: list[_Slice], dec: _Decoded, rejections: list[Rejection]) -> tuple[list[_Slice], list[np.ndarray]]:
    kept, arrays = [], []
    for s in slices:
        try:
            frames = dec.get(s.ds, s.entry.sha256)
        except PixelDataError as exc:
            rejections.append(_reject(s.entry, exc.reason, exc.detail, exc.exception_type))
            continue
        if s.frame >= frames.shape[0]:
            rejections.append(_reject(s.entry, "decode_failed", "fewer frames decoded than declared"))
            continue
        kept.append(s)
        arrays.append(frames[s.frame])
    return kept, arrays


def _rescaled(arrays: list[np.ndarray], slices: list[_Slice]) -> np.ndarray:
    stored = np.stack(arrays)
    if stored.ndim == 4 and stored.shape[-1] in (3, 4):  # colour: no Modality LUT
        return stored
    return apply_rescale(stored, [s.slope for s in slices], [s.intercept for s in slices])


def _geometry_meta(slices: list[_Slice], normal: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Affine + spacing/tilt meta for slices already in stack order."""
    first = slices[0]
    ipps = np.array([s.ipp for s in slices], dtype=np.float64)
    meta: dict[str, Any] = {}
    if len(slices) >= 2:
        d = position_along_normal(ipps, normal)
        stats = slice_spacing_stats(d)
        steps = np.diff(ipps, axis=0)
        if stats["uneven"] or stats["missing_slices"]:
            step = np.median(steps, axis=0)
        else:
            step = (ipps[-1] - ipps[0]) / (len(slices) - 1)
        tilt = detect_gantry_tilt(first.iop, ipps)
        meta.update(
            slice_spacing_mm=float(np.linalg.norm(step)),
            slice_spacing_perpendicular_mm=float(abs(np.dot(step, normal))),
            uneven_spacing_mm=float(stats["uneven_spacing_mm"]),
            uneven_spacing=bool(stats["uneven"]),
            missing_slices=int(stats["missing_slices"]),
            slice_spacing_stats={k: stats[k] for k in ("median_mm", "min_mm", "max_mm", "std_mm")},
            gantry_tilt_deg=float(tilt["tilt_deg"]),
        )
        if tilt["tilted"]:
            meta["gantry_tilt_note"] = ("slice step not parallel to the slice normal (gantry tilt / sheared stack); "
                                        "data kept as acquired with a sheared affine (honest geometry, not resampled)")
        if stats["duplicates"]:
            meta["duplicate_positions"] = int(stats["duplicates"])
    else:
        step = normal * float(_opt_float(first.ds, "SpacingBetweenSlices") or _opt_float(first.ds, "SliceThickness") or 1.0)
        meta.update(slice_spacing_mm=float(np.linalg.norm(step)), missing_slices=0, uneven_spacing_mm=0.0,
                    gantry_tilt_deg=0.0, single_slice=True)
    affine = affine_from_dicom(first.iop, first.ipp, first.ps, step)
    meta["orientation"] = _orientation_label(normal)
    return affine, meta


def _orientation_label(normal: np.ndarray) -> str:
    ax = int(np.argmax(np.abs(normal)))
    return ("sagittal", "coronal", "axial")[ax] + ("" if abs(normal[ax]) > 0.99 else "-oblique")


def _finish_meta(meta: dict[str, Any], vol: np.ndarray, slices: list[_Slice]) -> None:
    slopes = np.array([s.slope for s in slices])
    inters = np.array([s.intercept for s in slices])
    meta["rescale_slope"] = float(slopes[0]) if np.all(slopes == slopes[0]) else "per-slice"
    meta["rescale_intercept"] = float(inters[0]) if np.all(inters == inters[0]) else "per-slice"
    meta["dtype"] = str(vol.dtype)
    meta["channels"] = "RGB" if vol.ndim >= 3 and meta.get("samples_per_pixel", 1) == 3 and vol.shape[-1] == 3 else 1


def _apply_pet(vol: np.ndarray, meta: dict[str, Any], factor: float | None, pet_units: PetUnits) -> np.ndarray:
    if meta.get("modality") != "PT":
        return vol
    if pet_units == "suvbw" and factor is not None:
        meta["units_stored"] = meta.get("units")
        meta["units"] = "SUVbw"
        meta["suvbw_applied"] = True
        return (vol.astype(np.float64) * factor).astype(np.float32)
    meta["suvbw_applied"] = False
    return vol


# --------------------------------------------------------------------------------------- builders
def _single_slices(entries: list[FileEntry], rejections: list[Rejection]) -> list[_Slice]:
    out = []
    for e in entries:
        ds = _load(e, rejections)
        if ds is None:
            continue
        slope, inter, _ = _rescale_of(ds)
        out.append(_Slice(e, ds, 0, np.array(_floats(ds.get("ImagePositionPatient"), 3)),
                          _floats(ds.get("ImageOrientationPatient"), 6), _valid_ps(ds.get("PixelSpacing")),
                          slope, inter))
    return out


def _valid_ps(v) -> tuple[float, float] | None:
    ps = _floats(v, 2)
    if ps is None or ps[0] <= 0 or ps[1] <= 0:
        return None
    return ps  # type: ignore[return-value]


def _build_3d(plan: VolumePlan, group: SeriesGroup, dec: _Decoded, rejections: list[Rejection],
              pet_units: PetUnits) -> list[ConvertedVolume]:
    slices = _single_slices(plan.entries, rejections)
    slices, arrays = _stack_arrays(slices, dec, rejections)
    if not slices:
        return []
    return [_volume_from_slices(slices, arrays, plan.key, len(plan.entries), group, pet_units)]


def _volume_from_slices(slices: list[_Slice], arrays: list[np.ndarray], key: dict[str, Any], n_expected: int,
                        group: SeriesGroup, pet_units: PetUnits) -> ConvertedVolume:
    first = slices[0]
    if first.ps is None:
        raise PixelDataError("missing_geometry", "PixelSpacing is absent or not positive")
    normal = slice_normal(first.iop)
    affine, gmeta = _geometry_meta(slices, normal)
    vol = _rescaled(arrays, slices)
    meta = base_meta(first.ds, n_files=len({s.entry.sha256 for s in slices}))
    meta.update(key)
    meta.update(gmeta)
    meta["n_slices"] = len(slices)
    if n_expected > len(slices):
        meta["dropped_slices"] = n_expected - len(slices)
        meta["missing_slices"] = max(int(meta.get("missing_slices", 0)), n_expected - len(slices))
    meta["spacing_source"] = "PixelSpacing+ImagePositionPatient"
    factor = _pet_meta(first.ds, meta)
    _finish_meta(meta, vol, slices)
    vol = _apply_pet(vol, meta, factor, pet_units)
    return ConvertedVolume(volume=vol, affine=affine, spacing=spacing_from_affine(affine), kind="3d", meta=meta,
                           instance_uids=[_s(s.ds, "SOPInstanceUID") for s in slices],
                           series_uid=group.series_uid, frame_of_reference_uid=group.frame_of_reference_uid)


def _build_4d(plan: VolumePlan, group: SeriesGroup, dec: _Decoded, rejections: list[Rejection],
              pet_units: PetUnits) -> list[ConvertedVolume]:
    vols: list[np.ndarray] = []
    first_slices: list[_Slice] | None = None
    uids: list[str] = []
    all_slices: list[_Slice] = []
    dropped = 0
    n_pos = len(plan.time_groups[0])
    for tg in plan.time_groups:
        local_rej: list[Rejection] = []
        slices = _single_slices(tg, local_rej)
        slices, arrays = _stack_arrays(slices, dec, local_rej)
        rejections.extend(local_rej)
        if len(slices) != n_pos:
            dropped += 1
            for s in slices:
                rejections.append(_reject(s.entry, "incomplete_time_point",
                                          "a time point of a 4-D series lost slices; the time point was dropped"))
            continue
        vols.append(_rescaled(arrays, slices))
        all_slices.extend(slices)
        if first_slices is None:
            first_slices = slices
            uids = [_s(s.ds, "SOPInstanceUID") for s in slices]
    if first_slices is None:
        return []
    first = first_slices[0]
    if first.ps is None:
        raise PixelDataError("missing_geometry", "PixelSpacing is absent or not positive")
    normal = slice_normal(first.iop)
    affine, gmeta = _geometry_meta(first_slices, normal)
    dts = {v.dtype for v in vols}
    common = np.result_type(*dts) if len(dts) > 1 else vols[0].dtype
    vol = np.stack([v.astype(common, copy=False) for v in vols])
    meta = base_meta(first.ds, n_files=len({s.entry.sha256 for s in all_slices}))
    meta.update(plan.key)
    meta.update(gmeta)
    meta.update(n_slices=n_pos, n_time_points=len(vols), dropped_time_points=dropped,
                time_order="AcquisitionNumber,TemporalPositionIdentifier,InstanceNumber,TriggerTime",
                spacing_source="PixelSpacing+ImagePositionPatient")
    factor = _pet_meta(first.ds, meta)
    _finish_meta(meta, vol, all_slices)
    vol = _apply_pet(vol, meta, factor, pet_units)
    return [ConvertedVolume(volume=vol, affine=affine, spacing=spacing_from_affine(affine), kind="4d", meta=meta,
                            instance_uids=uids, series_uid=group.series_uid,
                            frame_of_reference_uid=group.frame_of_reference_uid)]


# --------------------------------------------------------------------------------------- mosaic
def _csa_image_header(ds) -> dict[str, Any] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from nibabel.nicom import csareader

            return csareader.get_csa_header(ds, "image")
    except Exception:  # noqa: BLE001 - a broken CSA header falls back to standard tags
        return None


def _csa_value(csa: dict[str, Any] | None, name: str):
    if not csa:
        return None
    tag = csa.get("tags", {}).get(name)
    if not tag or not tag.get("items"):
        return None
    return tag["items"]


def _mosaic_volume(entry: FileEntry, ds, dec: _Decoded) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    csa = _csa_image_header(ds)
    n = _num(ds, (0x0019, 0x100A)) if (0x0019, 0x100A) in ds else None  # type: ignore[arg-type]
    if n is None:
        items = _csa_value(csa, "NumberOfImagesInMosaic")
        n = float(items[0]) if items else None
    if not n or n < 1:
        raise PixelDataError("mosaic_without_slice_count", "MOSAIC image without NumberOfImagesInMosaic")
    n_slices = int(n)
    frames = dec.get(ds, entry.sha256)
    tiles = demosaic(frames[0], n_slices)
    iop = _floats(ds.get("ImageOrientationPatient"), 6)
    ipp = _floats(ds.get("ImagePositionPatient"), 3)
    ps = _valid_ps(ds.get("PixelSpacing"))
    if iop is None or ipp is None or ps is None:
        raise PixelDataError("missing_geometry", "mosaic without IOP/IPP/PixelSpacing")
    g = mosaic_tile_grid(n_slices)
    rows, cols = frames.shape[1:3]
    ipp0 = mosaic_position_correction(ipp, iop, ps, (rows, cols), (rows // g, cols // g))
    cross = slice_normal(iop)
    csa_normal = _csa_value(csa, "SliceNormalVector")
    meta: dict[str, Any] = {"mosaic": True, "mosaic_tiles": n_slices, "mosaic_grid": g,
                            "mosaic_note": "tiles cut in mosaic order without flipping; IPP moved from the mosaic "
                                           "corner to the first tile (as dcm2niix/nibabel)"}
    if csa_normal is not None and len(csa_normal) == 3:
        normal = np.asarray(csa_normal, dtype=np.float64)
        normal = normal / np.linalg.norm(normal)
        meta["slice_normal_source"] = "CSA SliceNormalVector"
    else:
        normal = cross
        meta["slice_normal_source"] = "ImageOrientationPatient cross product"
    gap = _opt_float(ds, "SpacingBetweenSlices") or _opt_float(ds, "SliceThickness")
    if not gap:
        raise PixelDataError("missing_geometry", "mosaic without SpacingBetweenSlices/SliceThickness")
    meta["spacing_source"] = "PixelSpacing+SpacingBetweenSlices" if _opt_float(ds, "SpacingBetweenSlices") \
        else "PixelSpacing+SliceThickness"
    affine = affine_from_dicom(iop, ipp0, ps, normal * gap)
    slope, inter, _ = _rescale_of(ds)
    vol = apply_rescale(tiles[None], [slope], [inter])[0]
    return vol, affine, meta


def _build_mosaic(plan: VolumePlan, group: SeriesGroup, dec: _Decoded, rejections: list[Rejection],
                  pet_units: PetUnits) -> list[ConvertedVolume]:
    vols, affines, metas, used = [], [], [], []
    for e in plan.entries:
        ds = _load(e, rejections)
        if ds is None:
            continue
        try:
            v, a, m = _mosaic_volume(e, ds, dec)
        except PixelDataError as exc:
            rejections.append(_reject(e, exc.reason, exc.detail, exc.exception_type))
            continue
        vols.append(v)
        affines.append(a)
        metas.append(m)
        used.append((e, ds))
    if not vols:
        return []
    if plan.time_groups and len(vols) > 1:
        same = all(v.shape == vols[0].shape for v in vols) and all(np.allclose(a, affines[0], atol=1e-3) for a in affines)
        if not same:  # pragma: no cover - guarded by split_volumes' position clustering
            rejections.extend(_reject(e, "inconsistent_geometry", "mosaics of one 4-D series differ in geometry")
                              for e, _ in used[1:])
            vols, used = vols[:1], used[:1]
    first_ds = used[0][1]
    meta = base_meta(first_ds, n_files=len(used))
    meta.update(plan.key)
    meta.update(metas[0])
    meta["n_slices"] = int(vols[0].shape[0])
    meta["orientation"] = _orientation_label(slice_normal(_floats(first_ds.get("ImageOrientationPatient"), 6)))
    meta["missing_slices"] = 0
    meta["uneven_spacing_mm"] = 0.0
    meta["gantry_tilt_deg"] = 0.0
    if len(vols) > 1:
        dts = {v.dtype for v in vols}
        common = np.result_type(*dts) if len(dts) > 1 else vols[0].dtype
        vol = np.stack([v.astype(common, copy=False) for v in vols])
        kind = "4d"
        meta["n_time_points"] = len(vols)
        meta["time_order"] = "AcquisitionNumber,TemporalPositionIdentifier,InstanceNumber,TriggerTime"
    else:
        vol, kind = vols[0], "3d"
    meta["dtype"] = str(vol.dtype)
    meta["channels"] = 1
    factor = _pet_meta(first_ds, meta)
    vol = _apply_pet(vol, meta, factor, pet_units)
    return [ConvertedVolume(volume=vol, affine=affines[0], spacing=spacing_from_affine(affines[0]), kind=kind, meta=meta,
                            instance_uids=[_s(ds, "SOPInstanceUID") for _, ds in used], series_uid=group.series_uid,
                            frame_of_reference_uid=group.frame_of_reference_uid)]


# --------------------------------------------------------------------------------------- multi-frame
def _fg(item, name: str):
    """First item of a functional-group macro sequence, or None."""
    return _seq_item(item, name) if item is not None else None


def _frame_attr(shared, per, macro: str, attr: str):
    for src in (per, shared):
        it = _fg(src, macro)
        if it is not None and attr in it:
            return it.get(attr)
    return None


def _frame_type(shared, per) -> tuple[str, ...]:
    for macro in ("MRImageFrameTypeSequence", "CTImageFrameTypeSequence", "PETFrameTypeSequence",
                  "XAXRFFrameCharacteristicsSequence", "FrameContentSequence"):
        v = _frame_attr(shared, per, macro, "FrameType")
        if v:
            return tuple(str(x) for x in v)
    return ()


def _build_multiframe(plan: VolumePlan, group: SeriesGroup, dec: _Decoded, rejections: list[Rejection],
                      pet_units: PetUnits) -> list[ConvertedVolume]:
    e = plan.entries[0]
    ds = _load(e, rejections)
    if ds is None:
        return []
    n_frames = int(_num(ds, "NumberOfFrames") or 1)
    per_seq = ds.get("PerFrameFunctionalGroupsSequence")
    shared = _seq_item(ds, "SharedFunctionalGroupsSequence")
    if per_seq is None or len(per_seq) != n_frames:
        return _build_legacy_multiframe(e, ds, group, dec, rejections, pet_units)
    slices: list[_Slice] = []
    keys: list[tuple] = []
    tkeys: list[tuple] = []
    s_slope, s_inter, _ = _rescale_of(ds)
    for i, per in enumerate(per_seq):
        ipp = _floats(_frame_attr(shared, per, "PlanePositionSequence", "ImagePositionPatient"), 3)
        iop = _floats(_frame_attr(shared, per, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
        ps = _valid_ps(_frame_attr(shared, per, "PixelMeasuresSequence", "PixelSpacing"))
        slope = _frame_attr(shared, per, "PixelValueTransformationSequence", "RescaleSlope")
        inter = _frame_attr(shared, per, "PixelValueTransformationSequence", "RescaleIntercept")
        slope_f = float(slope) if slope not in (None, "") else s_slope
        inter_f = float(inter) if inter not in (None, "") else s_inter
        if ipp is None or iop is None or ps is None:
            rejections.append(_reject(e, "missing_geometry", f"frame {i} lacks plane position/orientation/spacing"))
            continue
        stack_id = _frame_attr(shared, per, "FrameContentSequence", "StackID")
        temporal = _frame_attr(shared, per, "FrameContentSequence", "TemporalPositionIndex")
        in_stack = _frame_attr(shared, per, "FrameContentSequence", "InStackPositionNumber")
        dim = _frame_attr(shared, per, "FrameContentSequence", "DimensionIndexValues")
        echo = _frame_attr(shared, per, "MREchoSequence", "EffectiveEchoTime")
        bval = _frame_attr(shared, per, "MRDiffusionSequence", "DiffusionBValue")
        ftype = _frame_type(shared, per)
        keys.append((tuple(round(v, 4) + 0.0 for v in iop), tuple(round(v, 5) for v in ps), ftype,
                     str(stack_id) if stack_id is not None else None,
                     None if echo is None else round(float(echo), 3), None if bval is None else float(bval)))
        dims = tuple(int(x) for x in (dim if isinstance(dim, list | tuple) or hasattr(dim, "__iter__") else [dim])) \
            if dim is not None else ()
        tkeys.append((int(temporal) if temporal is not None else 0, dims, int(in_stack) if in_stack else 0, i))
        slices.append(_Slice(e, ds, i, np.array(ipp), iop, ps, slope_f, inter_f))
    parts: dict[tuple, list[int]] = {}
    for idx, k in enumerate(keys):
        parts.setdefault(k, []).append(idx)
    out: list[ConvertedVolume] = []
    for k, idxs in parts.items():
        part = [slices[i] for i in idxs]
        normal = slice_normal(part[0].iop)
        d = position_along_normal(np.array([s.ipp for s in part]), normal)
        labels = _cluster_positions(d)
        n_pos = int(labels.max()) + 1
        counts = np.bincount(labels, minlength=n_pos)
        key_meta: dict[str, Any] = {"frame_type": list(k[2])}
        if k[3] is not None:
            key_meta["stack_id"] = k[3]
        if k[4] is not None:
            key_meta["effective_echo_time_ms"] = k[4]
        if k[5] is not None:
            key_meta["diffusion_b_value"] = k[5]
        if np.all(counts == 1):
            order = np.argsort(d, kind="stable")
            sl = [part[i] for i in order]
            kept, arrays = _stack_arrays(sl, dec, rejections)
            if not kept:
                continue
            v = _volume_from_slices(kept, arrays, key_meta, len(sl), group, pet_units)
            v.meta["n_frames"] = n_frames
            v.meta["enhanced_multiframe"] = True
            out.append(v)
        elif np.all(counts == counts[0]):
            by_pos: list[list[int]] = [[] for _ in range(n_pos)]
            for i, lab in enumerate(labels):
                by_pos[lab].append(i)
            for lst in by_pos:
                lst.sort(key=lambda i: tkeys[idxs[i]])
            pos_order = sorted(range(n_pos), key=lambda p: float(np.mean(d[by_pos[p]])))
            vols = []
            first: list[_Slice] | None = None
            alls: list[_Slice] = []
            for t in range(int(counts[0])):
                sl = [part[by_pos[p][t]] for p in pos_order]
                kept, arrays = _stack_arrays(sl, dec, rejections)
                if len(kept) != len(sl):
                    continue
                vols.append(_rescaled(arrays, kept))
                alls.extend(kept)
                first = first or kept
            if not vols or first is None:
                continue
            affine, gmeta = _geometry_meta(first, normal)
            dts = {v.dtype for v in vols}
            vol = np.stack([v.astype(np.result_type(*dts), copy=False) for v in vols])
            meta = base_meta(ds, n_files=1)
            meta.update(key_meta)
            meta.update(gmeta)
            meta.update(n_slices=n_pos, n_time_points=len(vols), n_frames=n_frames, enhanced_multiframe=True,
                        time_order="TemporalPositionIndex,DimensionIndexValues,InStackPositionNumber",
                        spacing_source="PixelMeasuresSequence+PlanePositionSequence")
            factor = _pet_meta(ds, meta)
            _finish_meta(meta, vol, alls)
            vol = _apply_pet(vol, meta, factor, pet_units)
            out.append(ConvertedVolume(volume=vol, affine=affine, spacing=spacing_from_affine(affine), kind="4d", meta=meta,
                                       instance_uids=[_s(ds, "SOPInstanceUID")], series_uid=group.series_uid,
                                       frame_of_reference_uid=group.frame_of_reference_uid))
        else:
            rejections.append(_reject(e, "duplicate_slice_positions",
                                      "frames repeat slice positions without forming complete time points"))
    return out


def _build_legacy_multiframe(e: FileEntry, ds, group: SeriesGroup, dec: _Decoded, rejections: list[Rejection],
                             pet_units: PetUnits) -> list[ConvertedVolume]:
    """Multi-frame object without per-frame functional groups (US/XA cine, NM, downsized enhanced)."""
    try:
        frames = dec.get(ds, e.sha256)
    except PixelDataError as exc:
        rejections.append(_reject(e, exc.reason, exc.detail, exc.exception_type))
        return []
    iop = _floats(ds.get("ImageOrientationPatient"), 6)
    ipp = _floats(ds.get("ImagePositionPatient"), 3)
    gap = _opt_float(ds, "SpacingBetweenSlices")
    slope, inter, _ = _rescale_of(ds)
    meta = base_meta(ds, n_files=1)
    meta["n_frames"] = int(frames.shape[0])
    colour = frames.ndim == 4
    vol = frames if colour else apply_rescale(frames, slope, inter)
    ps, src, notes = _planar_spacing(ds, apply_magnification=dec.apply_magnification)
    if iop is not None and ipp is not None and gap and ps is not None and _s(ds, "Modality") not in ("US", "XA", "RF"):
        normal = slice_normal(iop)
        affine = affine_from_dicom(iop, ipp, ps, normal * gap)
        meta.update(spacing_source="PixelSpacing+SpacingBetweenSlices", missing_slices=0, uneven_spacing_mm=0.0,
                    gantry_tilt_deg=0.0, orientation=_orientation_label(normal),
                    slice_positions_note="frames assumed equally spaced along the normal by SpacingBetweenSlices")
        kind = "3d"
    else:
        affine = _planar_affine(ds, ps)
        meta.update(spacing_source=src, frames_are="time", **notes)
        ft = _opt_float(ds, "FrameTime")
        if ft:
            meta["frame_time_ms"] = ft
        kind = "2d+t"
    meta["dtype"] = str(vol.dtype)
    meta["channels"] = "RGB" if colour else 1
    meta["rescale_slope"], meta["rescale_intercept"] = float(slope), float(inter)
    return [ConvertedVolume(volume=vol, affine=affine, spacing=spacing_from_affine(affine) if kind == "3d" else spacing_from_affine(affine)[1:],
                            kind=kind, meta=meta, instance_uids=[_s(ds, "SOPInstanceUID")], series_uid=group.series_uid,
                            frame_of_reference_uid=group.frame_of_reference_uid)]


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
        volumes.extend(built)
    for i, v in enumerate(volumes):
        v.volume_index = i
    return volumes, rejections
