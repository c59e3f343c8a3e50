"""Rasterise RT Structure Set contours onto the grid of their referenced volume.

PS3.3 C.8.8.6 (ROI Contour Module): each ROI has ``CLOSED_PLANAR`` contours, lists of
(x, y, z) points in patient LPS mm lying on an image plane. A contour is mapped to
(row, column) voxel coordinates with the inverse affine of the referenced volume and
filled with the even-odd rule at voxel centres (the crossing test of
:func:`skimage.draw.polygon`, compiled in :func:`imaging.raster.fill_polygon`, which gives
the same pixels); several contours of one ROI on one slice are combined by XOR, so an inner
contour cuts a hole. ContourData (DS, often millions of values per file) is parsed from the raw
element bytes by Arrow's correctly rounded parser, else numpy's (:func:`contour_points`), instead of
one Python object per number; the structure set's sequences are read as raw items
(:mod:`storage.dicom.rawseq`), not as one pydicom data set per item.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Any

import numpy as np

from imaging.raster import fill_polygon
from storage.dicom.bugs import file_handle, raise_if_bug
from storage.dicom.dsparse import parse_decimals
from storage.dicom.model import ConvertedMask, ConvertedVolume, Rejection
from storage.dicom.rawseq import RawItem, sequence_items

__all__ = ["rasterise_rtstruct", "find_referenced_volume", "rasterise_contours", "fill_polygon", "contour_points"]

_SLICE_TOL = 0.1  # a contour's slice coordinate may deviate from an integer by this fraction of a slice


def _sha(ds) -> str:
    return str(getattr(ds, "_medflow_sha256", "") or "")


def _referenced_series_uids(ds) -> list[str]:
    out = []
    for fr in sequence_items(ds, "ReferencedFrameOfReferenceSequence"):
        for st in fr.get("RTReferencedStudySequence") or []:
            for se in st.get("RTReferencedSeriesSequence") or []:
                uid = str(se.get("SeriesInstanceUID", "") or "")
                if uid:
                    out.append(uid)
    return out


def _referenced_instance_uids(ds) -> set[str]:
    out: set[str] = set()
    for fr in sequence_items(ds, "ReferencedFrameOfReferenceSequence"):
        for st in fr.get("RTReferencedStudySequence") or []:
            for se in st.get("RTReferencedSeriesSequence") or []:
                for ci in se.get("ContourImageSequence") or []:
                    out.add(str(ci.get("ReferencedSOPInstanceUID", "")))
    for rc in sequence_items(ds, "ROIContourSequence"):
        for c in rc.get("ContourSequence") or []:
            for ci in c.get("ContourImageSequence") or []:
                out.add(str(ci.get("ReferencedSOPInstanceUID", "")))
    out.discard("")
    return out


def _frame_of_reference_uids(ds) -> set[str]:
    out = {str(fr.get("FrameOfReferenceUID", "")) for fr in sequence_items(ds, "ReferencedFrameOfReferenceSequence")}
    for r in sequence_items(ds, "StructureSetROISequence"):
        out.add(str(r.get("ReferencedFrameOfReferenceUID", "")))
    out.discard("")
    return out


def find_referenced_volume(ds, volumes: list[ConvertedVolume]) -> tuple[ConvertedVolume | None, str]:
    """The volume an RTSTRUCT refers to, and how it was found.

    Tried in order: the referenced SeriesInstanceUID(s); the referenced SOP instances
    (ContourImageSequence) overlapping a volume's instances; a single volume with the
    same FrameOfReferenceUID. Only 3-D (or 4-D) volumes qualify. Among several candidate
    volumes of one series, the one sharing most referenced instances wins.
    """
    spatial = [v for v in volumes if v.kind in ("3d", "4d")]
    inst: set[str] | None = None  # walked only when needed (every contour's image references: costly)

    def best(cands: list[ConvertedVolume]) -> ConvertedVolume:
        nonlocal inst
        if len(cands) == 1:
            return cands[0]
        if inst is None:
            inst = _referenced_instance_uids(ds)
        return max(cands, key=lambda v: len(inst.intersection(v.instance_uids)))

    series = set(_referenced_series_uids(ds))
    cands = [v for v in spatial if v.series_uid and v.series_uid in series]
    if cands:
        return best(cands), "referenced_series"
    inst = _referenced_instance_uids(ds)
    if inst:
        cands = [v for v in spatial if inst.intersection(v.instance_uids)]
        if cands:
            return best(cands), "referenced_instances"
    fors = _frame_of_reference_uids(ds)
    cands = [v for v in spatial if v.frame_of_reference_uid and v.frame_of_reference_uid in fors]
    if len(cands) == 1:
        return cands[0], "frame_of_reference"
    return None, "ambiguous_frame_of_reference" if cands else "not_found"


_CONTOUR_DATA = 0x30060050


def contour_points(item) -> np.ndarray:
    """ContourData of one ContourSequence item as an ``(n, 3)`` float64 array (LPS mm).

    Parsed straight from the raw element bytes (``"x\\y\\z\\..."``) when pydicom has not
    converted the element yet; the values are those ``float(DSfloat)`` gives. Falls back to
    pydicom's conversion otherwise.

    Parameters
    ----------
    item : pydicom.Dataset or RawItem
        One ContourSequence item.

    Raises
    ------
    ValueError
        When the values are not numbers, their count is not a multiple of 3, or (a
        :class:`~storage.dicom.rawseq.RawItem`) the item has no ContourData.
    """
    from pydicom.dataelem import RawDataElement

    if isinstance(item, RawItem):
        elem = item.raw(_CONTOUR_DATA)
        if elem is None:  # (a pydicom item raises AttributeError from pydicom: also a bad contour)
            raise ValueError("the contour has no ContourData")
    else:
        elem = item.get_item(_CONTOUR_DATA) if _CONTOUR_DATA in item else None
    if isinstance(elem, RawDataElement) and isinstance(elem.value, bytes | bytearray):
        raw = bytes(elem.value).rstrip(b" \x00")
        if raw.isascii():
            if not raw.strip():
                return np.empty((0, 3), dtype=np.float64)
            values = _decimals(raw)
            if values is not None and values.size % 3 == 0:
                return values.reshape(-1, 3)
            # otherwise pydicom decides (same outcome as before for odd values)
    values = item.get("ContourData") if isinstance(item, RawItem) else item.ContourData
    return np.asarray([float(v) for v in values], dtype=np.float64).reshape(-1, 3)


def _decimals(raw: bytes) -> np.ndarray | None:
    """The numbers of a backslash-separated ASCII decimal string, or None when one part is not a number.

    The compiled fast path first (:mod:`storage.dicom.dsparse`: the values nearly every ContourData holds,
    correctly rounded), then Arrow's string-to-double cast (the vendored ``fast_float``: correctly rounded, like ``float``,
    about 3x faster than numpy's parser); it refuses spaces, underscores and empty parts, which ``float``
    accepts or refuses part by part. Then numpy's text parser (also correctly rounded) in one call; a value
    it cannot read to its end (it warns and stops there), or an empty part (``"1\\\\2"``, a trailing
    backslash: it skips them, ``float`` refuses them) gives None, like ``float`` raising on that part.
    """
    values = parse_decimals(raw)  # the common case, exactly: m * 10**q with m <= 2**53, |q| <= 22
    if values is not None:
        return values
    values = _decimals_arrow(raw)
    if values is not None:
        return values
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # "string or file could not be read to its end"
        try:
            values = np.fromstring(raw, dtype=np.float64, sep="\\")
        except (ValueError, DeprecationWarning):
            return None
    return values if values.size == raw.count(b"\\") + 1 else None


def _decimals_arrow(raw: bytes) -> np.ndarray | None:
    """Every part of ``raw`` as Arrow's cast to float64 reads it, or None when Arrow refuses a part."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        values = pc.cast(pc.list_flatten(pc.split_pattern(pa.array([raw], type=pa.binary()), "\\")), pa.float64())
    except pa.ArrowInvalid:
        return None
    if values.null_count:
        return None
    return values.to_numpy(zero_copy_only=False, writable=True)


def rasterise_contours(contours: list[np.ndarray], affine: np.ndarray, shape: tuple[int, int, int],
                       *, slice_tolerance: float = _SLICE_TOL) -> tuple[np.ndarray, dict[str, Any]]:
    """Fill closed planar contours (each an (n, 3) LPS-mm array) on a ``[slice, row, col]`` grid.

    Returns
    -------
    mask : bool ndarray ``shape``
    stats : dict
        ``n_contours``, ``contours_outside_volume`` (slice index out of range),
        ``contours_off_slice`` (slice coordinate further than ``slice_tolerance`` from an
        integer; still filled on the nearest slice), ``contours_not_planar``.
    """
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    mask = np.zeros(shape, dtype=bool)
    per_slice: dict[int, np.ndarray] = {}
    stats = {"n_contours": len(contours), "contours_outside_volume": 0, "contours_off_slice": 0,
             "contours_not_planar": 0, "contours_degenerate": 0}
    for pts in contours:
        if pts.shape[0] < 3:
            stats["contours_degenerate"] += 1
            continue
        homog = np.c_[pts, np.ones(len(pts))]
        idx = homog @ inv.T  # columns: slice, row, column (float)
        k = idx[:, 0]
        kr = np.round(k)
        if np.ptp(kr) > 0:
            stats["contours_not_planar"] += 1
        kk = int(np.round(np.median(k)))
        if np.max(np.abs(k - kk)) > slice_tolerance:
            stats["contours_off_slice"] += 1
        if kk < 0 or kk >= shape[0]:
            stats["contours_outside_volume"] += 1
            continue
        fill = fill_polygon(idx[:, 1], idx[:, 2], shape[1:])
        layer = per_slice.get(kk)
        if layer is None:
            per_slice[kk] = fill
        else:
            layer ^= fill
    for kk, layer in per_slice.items():
        mask[kk] = layer
    return mask, stats


def rasterise_rtstruct(ds_rtstruct, volumes: list[ConvertedVolume], *, sha256: str = "",
                       slice_tolerance: float = _SLICE_TOL) -> tuple[list[ConvertedMask], list[Rejection]]:
    """Rasterise every ROI of an RT Structure Set on its referenced volume.

    Parameters
    ----------
    ds_rtstruct : pydicom.Dataset
        A full RTSTRUCT dataset.
    volumes : list of ConvertedVolume
        Candidate volumes (e.g. everything converted from the same folder).
    sha256 : str
        Hash of the RTSTRUCT file, used in rejections.
    slice_tolerance : float
        Allowed deviation of a contour's slice coordinate from a slice centre (fraction of
        a slice) before it is counted as off-slice in ``meta``.

    Returns
    -------
    masks : list of ConvertedMask
        One per ROI with at least one CLOSED_PLANAR contour (an empty mask when all of its
        contours lie outside the referenced volume, with the count in ``meta``).
    rejections : list of Rejection
        ``rtstruct_reference_not_found``, ``rtstruct_no_contours`` (ROI without contours),
        ``rtstruct_bad_contour`` (unparseable ContourData).
    """
    rejections: list[Rejection] = []
    vol, how = find_referenced_volume(ds_rtstruct, volumes)
    if vol is None:
        return [], [Rejection(sha256, "rtstruct_reference_not_found",
                              f"no converted volume matches the structure set's references ({how})")]
    spatial_shape = vol.volume.shape[-3:] if vol.kind == "3d" else vol.volume.shape[1:4]
    if vol.meta.get("channels") == "RGB":
        spatial_shape = vol.volume.shape[-4:-1]
    names = {}
    for r in sequence_items(ds_rtstruct, "StructureSetROISequence"):
        names[int(r.get("ROINumber", -1))] = str(r.get("ROIName", "") or "")
    interp = {}
    for o in sequence_items(ds_rtstruct, "RTROIObservationsSequence"):
        interp[int(o.get("ReferencedROINumber", -1))] = str(o.get("RTROIInterpretedType", "") or "")
    masks: list[ConvertedMask] = []
    for rc in sequence_items(ds_rtstruct, "ROIContourSequence"):
        number = int(rc.get("ReferencedROINumber", -1))
        name = names.get(number, f"roi_{number}")
        contours: list[np.ndarray] = []
        other_types: dict[str, int] = defaultdict(int)
        bad = 0
        for c in rc.get("ContourSequence") or []:
            ctype = str(c.get("ContourGeometricType", "") or "").upper()
            if ctype != "CLOSED_PLANAR":
                other_types[ctype or "UNKNOWN"] += 1
                continue
            try:
                pts = contour_points(c)
            except Exception as exc:  # noqa: BLE001 - unreadable values are data; a medflow bug is not
                raise_if_bug(exc, stage="rtstruct", input_key=file_handle(sha256))
                bad += 1
                continue
            if not np.all(np.isfinite(pts)):
                bad += 1
                continue
            contours.append(pts)
        if bad:
            rejections.append(Rejection(sha256, "rtstruct_bad_contour",
                                        f"{bad} contour(s) of ROI number {number} have unreadable ContourData"))
        if not contours:
            rejections.append(Rejection(sha256, "rtstruct_no_contours",
                                        f"ROI number {number} has no CLOSED_PLANAR contour"))
            continue
        mask, stats = rasterise_contours(contours, vol.affine, tuple(spatial_shape),  # type: ignore[arg-type]
                                         slice_tolerance=slice_tolerance)
        meta: dict[str, Any] = dict(stats)
        meta.update(roi_number=number, reference_found_by=how, n_voxels=int(mask.sum()),
                    fill_rule="even-odd at voxel centres (skimage.draw.polygon), XOR per slice",
                    interpreted_type=interp.get(number) or None)
        if other_types:
            meta["skipped_contour_types"] = dict(other_types)
        masks.append(ConvertedMask(mask=mask, roi_name=name, referenced_series_uid=vol.series_uid,
                                   referenced_volume_index=vol.volume_index, source="rtstruct", meta=meta))
    return masks, rejections
