"""Shared pieces of the converter: rejections, base meta, slices, decoding once per file, geometry meta."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from imaging.geometry import (
    affine_from_dicom,
    detect_gantry_tilt,
    position_along_normal,
    slice_spacing_stats,
)
from storage.dicom.attrs import attr, numbers
from storage.dicom.bugs import file_handle, raise_if_bug
from storage.dicom.model import FileEntry, Rejection
from storage.dicom.pixels import (
    PixelDataError,
    apply_rescale,
    decode_frames,
    read_full,
)
from storage.dicom.series import _floats, _num, _plane_floats, _s

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
    seq = attr(ds, name)  # (``ds.get(name)``, cheaper)
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
    if entry.full:  # parsed once from the file's bytes by the ingest (pixel data included)
        return entry.dataset
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


# --------------------------------------------------------------------------------------- builders
def _single_slices(entries: list[FileEntry], rejections: list[Rejection]) -> list[_Slice]:
    out = []
    for e in entries:
        ds = _load(e, rejections)
        if ds is None:
            continue
        slope, inter, _ = _rescale_of(ds)
        out.append(_Slice(e, ds, 0, np.array(_plane_floats(ds, "ImagePositionPatient", 3)),
                          _plane_floats(ds, "ImageOrientationPatient", 6), _valid_ps(numbers(ds, "PixelSpacing")),
                          slope, inter))
    return out


def _valid_ps(v) -> tuple[float, float] | None:
    ps = _floats(v, 2)
    if ps is None or ps[0] <= 0 or ps[1] <= 0:
        return None
    return ps  # type: ignore[return-value]


