"""Group scanned files into series, and split a series into geometrically consistent volumes.

A DICOM series (one SeriesInstanceUID) may hold several volumes: echoes, b-values,
different orientations (localizers), image types, repeated slice positions (time
points). :func:`split_volumes` turns one :class:`SeriesGroup` into
:class:`VolumePlan` s, each of which stacks into one array:

* ``"3d"``: single-frame files at distinct positions along the slice normal;
* ``"4d"``: the same grid repeated over time (files at every position repeat the same
  number of times), ordered by AcquisitionNumber / TemporalPositionIdentifier /
  InstanceNumber / TriggerTime;
* ``"mosaic"``: Siemens mosaic files (one 3-D volume per file; several files of the same
  geometry form a 4-D series);
* ``"multiframe"``: one multi-frame file (its frames are split into stacks by
  :mod:`storage.dicom.convert`);
* ``"2d"``: a single projection / secondary-capture / ultrasound image without a 3-D
  position (one file each).
"""

from __future__ import annotations

import functools
import math
import re
from collections import defaultdict
from collections.abc import MutableSequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.dataelem import RawDataElement

from imaging.geometry import position_along_normal, slice_normal
from storage.dicom.attrs import attr, decimal_parts, keyword_tag, numbers
from storage.dicom.guard.common import dictionary_vr
from storage.dicom.model import FileEntry, Rejection, SeriesGroup

__all__ = ["VolumePlan", "group_series", "split_volumes", "is_mosaic", "number_of_frames"]

_POS_TOL_MM = 0.01


@dataclass
class VolumePlan:
    """Files that stack into one array.

    ``entries`` is in stack order (3-D: along the slice normal); for ``"4d"``,
    ``time_groups[t]`` lists the files of time point ``t`` in slice order and ``entries``
    is their concatenation. ``key`` holds PHI-free facts that distinguish this volume
    from its siblings (echo number, image type, b-value, ...).
    """

    entries: list[FileEntry]
    kind: str  # "3d" | "4d" | "mosaic" | "multiframe" | "2d"
    key: dict[str, Any] = field(default_factory=dict)
    time_groups: list[list[FileEntry]] = field(default_factory=list)
    positions: list[float] = field(default_factory=list)  # along the normal, stack order (3d/4d)


def _s(ds, name: str, default: str = "") -> str:
    v = attr(ds, name, default)
    return default if v is None else str(v)


def _size(e: FileEntry) -> int | None:
    try:
        return int(e.path.stat().st_size)
    except (OSError, AttributeError):
        return None


def group_series(entries: list[FileEntry]) -> list[SeriesGroup]:
    """Group files by SeriesInstanceUID (and object kind).

    Non-image objects (RTSTRUCT, SEG, SR, presentation states, RT dose/plan, other) form
    their own groups, keyed by (series UID, kind). Files without a SeriesInstanceUID
    each form a group of their own. Groups come back in a stable order (by the first
    file's path).
    """
    groups: dict[tuple[str, str], SeriesGroup] = {}
    order: list[tuple[str, str]] = []
    for e in entries:
        ds = e.dataset
        suid = _s(ds, "SeriesInstanceUID")
        key = (suid or f"no-series-uid:{e.sha256}", e.object_kind)
        g = groups.get(key)
        if g is None:
            for_uid = _s(ds, "FrameOfReferenceUID") or None
            g = SeriesGroup(series_uid=suid, study_uid=_s(ds, "StudyInstanceUID"), patient_id=_s(ds, "PatientID"),
                            frame_of_reference_uid=for_uid, modality=_s(ds, "Modality"), files=[],
                            object_kind=e.object_kind)
            groups[key] = g
            order.append(key)
        elif g.frame_of_reference_uid is None:
            g.frame_of_reference_uid = _s(ds, "FrameOfReferenceUID") or None
        g.files.append(e)
    out = [groups[k] for k in order]
    for g in out:
        g.files.sort(key=lambda f: str(f.path))
    out.sort(key=lambda g: str(g.files[0].path) if g.files else "")
    return out


def number_of_frames(ds) -> int:
    try:
        return max(1, int(attr(ds, "NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def is_mosaic(ds) -> bool:
    """Siemens mosaic: ImageType contains MOSAIC (or the private NumberOfImagesInMosaic is set)."""
    it = [str(v).upper() for v in (attr(ds, "ImageType") or [])]
    if "MOSAIC" in it:
        return True
    return False


def _floats(v, n: int | None = None) -> tuple[float, ...] | None:
    """Numbers of a (multi-valued) element as floats, or None when absent/invalid/wrong length."""
    if v is None or v == "":
        return None
    try:
        seq = [v] if isinstance(v, str | bytes) or not hasattr(v, "__iter__") else list(v)
        vals = tuple(float(x) for x in seq)
    except (TypeError, ValueError):
        return None
    if n is not None and len(vals) != n:
        return None
    if not all(map(math.isfinite, vals)):
        return None
    return vals


#: a DS value (PS3.5 6.2): a fixed or floating point number, optionally signed, with leading/trailing spaces
_DS_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _ds_text_ok(text: str) -> bool:
    """One value of a DS element is empty or a finite decimal number as PS3.5 writes it."""
    text = text.strip(" \x00")
    return not text or (_DS_RE.fullmatch(text) is not None and math.isfinite(float(text)))


_NUM_B = rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
#: a whole raw DS value whose every backslash-separated part is what :func:`_ds_text_ok` accepts
_DS_RAW_RE = re.compile(rb"[ \x00]*(?:%s)?[ \x00]*(?:\\[ \x00]*(?:%s)?[ \x00]*)*" % (_NUM_B, _NUM_B))


@functools.lru_cache(maxsize=1 << 14)
def _ds_raw_ok(raw: bytes) -> bool:
    """:func:`_ds_text_ok` for every part of a raw DS value, in one match for the usual value.

    A value without an exponent and shorter than 300 bytes cannot overflow a double, so the
    match decides; otherwise each part is checked as text (finiteness included).
    """
    if _DS_RAW_RE.fullmatch(raw) is None:
        return False
    if len(raw) < 300 and b"e" not in raw and b"E" not in raw:
        return True
    return all(_ds_text_ok(t) for t in raw.decode("latin-1").split("\\"))


def _ds_value_ok(value) -> bool:
    """A value pydicom converted: DSfloat (keeps the file's text), a plain string (pydicom could not read it)."""
    if value is None:
        return True
    text = getattr(value, "original_string", None)
    if text is None and not isinstance(value, str):
        try:
            return math.isfinite(float(value))
        except (TypeError, ValueError):
            return False
    return _ds_text_ok(str(value if text is None else text))


def unreadable_decimal(ds) -> str | None:
    """Keyword (or tag) of the first top-level DS element holding a value that is not a decimal number.

    pydicom (reading validation mode WARN) keeps such a value as a plain string instead of raising,
    so the ingest's "every top-level value decodes under its VR" check lets it through, and the
    number readers here (:func:`_floats`, :func:`_num`) would treat it like an *absent* value: a
    damaged ImagePositionPatient made a CT slice a 2-D image at the origin, a damaged SliceThickness
    made a single-slice volume 1 mm thick (fuzz seed 7). A damaged value is a data defect, not a
    missing one. (IS values are converted eagerly by pydicom: an unreadable IS already fails the
    ingest's check.) Values still raw are checked from their bytes, without converting any element.
    Of a data set read from the guard's table, only the elements its compiled walk marked as DS or as
    possibly DS (UN, or a VR pydicom's hook decides) are looked at; an explicit VR other than DS and UN
    stays what it is on conversion.
    """
    from pydicom.datadict import keyword_for_tag
    from pydicom.dataelem import RawDataElement

    from storage.dicom.rawread import value_checks

    only = value_checks(ds, 2)  # the elements the reader recorded as DS, or as possibly DS once converted
    items = list(ds._dict.items()) if only is None else [(t, ds._dict[t]) for t in only]
    for tag, elem in items:  # what ``ds.get_item(tag)`` returns for each tag, without the calls
        if isinstance(elem, RawDataElement) and elem.value is None and elem.length != 0:
            elem = ds.get_item(tag)  # a deferred read: get_item reads and converts it (an empty value is not one)
        vr = elem.VR
        if vr is None:  # implicit VR, not converted yet: the dictionary's VR (private tags are not checked)
            vr = dictionary_vr(int(tag))
            if vr is None:
                continue
        if vr != "DS":
            continue
        if isinstance(elem, RawDataElement):
            ok = elem.value is None or _ds_raw_ok(bytes(elem.value))
        else:
            value = elem.value
            ok = all(_ds_value_ok(v) for v in (value if isinstance(value, MutableSequence | tuple) else [value]))
        if not ok:
            return keyword_for_tag(tag) or str(tag)
    return None


#: plane geometry (PS3.3 C.7.6.2): keyword, number of values
_PLANE_GEOMETRY = (("ImagePositionPatient", 3), ("ImageOrientationPatient", 6), ("PixelSpacing", 2))


def _plane_floats(ds, keyword: str, n: int) -> tuple[float, ...] | None:
    """``_floats(numbers(ds, keyword), n)``, a raw value's parts (:func:`~storage.dicom.attrs.decimal_parts`)
    parsed here without the single-value and sequence handling :func:`_floats` does for any value."""
    parts = decimal_parts(ds, keyword_tag(keyword))
    if parts is None:
        return _floats(numbers(ds, keyword), n)
    if len(parts) != n:
        return None
    vals = tuple(map(float, parts))
    return vals if all(map(math.isfinite, vals)) else None


def unreadable_geometry(ds) -> str | None:
    """Keyword of a plane geometry attribute that is present, not empty, and yet not readable as its
    numbers: another VR than DS (e.g. US or AT: its bytes decode as integers or tags), or not that many
    finite values. Such a file would otherwise be taken for one *without* geometry and become a 2-D image
    placed at the origin (fuzz seed 7: ImagePositionPatient with VR US or AT, ImageOrientationPatient with VR AT).
    """
    for name, n in _PLANE_GEOMETRY:
        elem = ds._dict.get(keyword_tag(name))  # (the VR is all that is read of it: a deferred value need not be loaded)
        if elem is None:
            continue
        if type(elem) is RawDataElement and (elem.VR or "DS") == "DS" and type(elem.value) is bytes \
                and elem.value and _plane_floats(ds, name, n) is not None:
            continue  # n finite decimal numbers (fast path, or what the checks below accept)
        vr = elem.VR or "DS"  # implicit VR, not converted yet: the dictionary's VR
        try:
            value = numbers(ds, name)  # a well-formed raw value is read as floats and left raw
        except Exception:  # noqa: BLE001 - a value that does not decode is unreadable (the ingest rejects it first)
            return name
        if value is None or (isinstance(value, str | bytes) and not value.strip()) or \
                (isinstance(value, MutableSequence) and len(value) == 0):
            continue  # empty: absent
        if vr != "DS" or _floats(value, n) is None:
            return name
    return None


def _num(ds, name: str) -> float | None:
    v = numbers(ds, name)
    if v is None or v == "":
        return None
    try:
        if hasattr(v, "__iter__") and not isinstance(v, str):
            v = list(v)[0]
        return float(v)
    except (TypeError, ValueError, IndexError):
        return None


def _time_key(e: FileEntry) -> tuple[float, float, float, float]:
    ds = e.dataset
    vals = []
    for name in ("AcquisitionNumber", "TemporalPositionIdentifier", "InstanceNumber", "TriggerTime"):
        v = _num(ds, name)
        vals.append(v if v is not None else 0.0)
    return tuple(vals)  # type: ignore[return-value]


#: the elements :func:`_split_key` reads (its value is a function of theirs)
_SPLIT_KEYWORDS = ("ImageOrientationPatient", "PixelSpacing", "ImageType", "EchoNumbers", "DiffusionBValue",
                   "DiffusionGradientOrientation", "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation",
                   "BitsAllocated")
_SPLIT_KEYS: dict[tuple, tuple] = {}


def _split_key(ds) -> tuple:
    """The facts that must be equal for slices to stack into one volume (:func:`_split_key_of`), memoised.

    A series repeats these values in every file: when each of the elements is absent or still raw (little
    endian), the answer is remembered under their VRs and bytes, which decide it (pydicom converts a raw
    value from them alone: none of these elements is text in a character set). Nothing is remembered for
    a data set holding one of them converted, or when reading them raises.
    """
    elements = ds._dict
    src = []
    for keyword in _SPLIT_KEYWORDS:
        elem = elements.get(keyword_tag(keyword))
        if elem is None:
            src.append(None)
        elif type(elem) is RawDataElement and elem.is_little_endian and type(elem.value) is bytes:
            src.append((elem.VR, elem.value))
        else:
            return _split_key_of(ds)
    memo = tuple(src)
    key = _SPLIT_KEYS.get(memo)
    if key is None:
        key = _split_key_of(ds)
        if len(_SPLIT_KEYS) > 4096:
            _SPLIT_KEYS.clear()
        _SPLIT_KEYS[memo] = key
    return key


def _split_key_of(ds) -> tuple:
    iop = _floats(numbers(ds, "ImageOrientationPatient"), 6)
    iop_r = tuple(round(v, 4) + 0.0 for v in iop) if iop else None
    ps = _floats(numbers(ds, "PixelSpacing"), 2)
    ps_r = tuple(round(v, 5) for v in ps) if ps else None
    image_type = tuple(str(v).upper() for v in (attr(ds, "ImageType") or []))
    echo = _num(ds, "EchoNumbers")
    bval = _num(ds, "DiffusionBValue")
    grad = _floats(attr(ds, "DiffusionGradientOrientation"), 3)
    grad_r = tuple(round(v, 4) for v in grad) if grad else None
    return (iop_r, int(attr(ds, "Rows", 0) or 0), int(attr(ds, "Columns", 0) or 0), ps_r, image_type, echo, bval, grad_r,
            int(attr(ds, "SamplesPerPixel", 1) or 1), _s(ds, "PhotometricInterpretation"),
            int(attr(ds, "BitsAllocated", 0) or 0), is_mosaic(ds))


def _key_meta(key: tuple) -> dict[str, Any]:
    iop, rows, cols, ps, image_type, echo, bval, grad, spp, phot, bits, mosaic = key
    meta: dict[str, Any] = {"image_type": list(image_type)}
    if echo is not None:
        meta["echo_number"] = int(echo)
    if bval is not None:
        meta["diffusion_b_value"] = float(bval)
    if grad is not None:
        meta["diffusion_gradient"] = list(grad)
    return meta


def _cluster_positions(d: np.ndarray, tol: float = _POS_TOL_MM) -> np.ndarray:
    """Integer cluster label per position (positions within ``tol`` mm share a label), ordered."""
    order = np.argsort(d, kind="stable")
    labels = np.empty(d.size, dtype=np.int64)
    lab = 0
    prev = None
    for idx in order:
        if prev is not None and d[idx] - prev > tol:
            lab += 1
        labels[idx] = lab
        prev = d[idx]
    return labels


def split_volumes(group: SeriesGroup) -> tuple[list[VolumePlan], list[Rejection]]:
    """Split one image series into volumes that are each geometrically consistent.

    Returns
    -------
    plans : list of VolumePlan
        In a stable order (by partition, then time/acquisition).
    rejections : list of Rejection
        Files that fit no volume: ``duplicate_instance_conflict`` (same SOPInstanceUID,
        different bytes), ``duplicate_slice_positions`` (repeated positions that do not form
        complete time points), ``missing_geometry`` (no usable IOP/IPP where a 3-D stack was
        expected, or only one of the two), ``invalid_attribute`` (a grouping attribute that cannot
        be read as its type, a top-level DS value that is not a number: :func:`unreadable_decimal`,
        a plane geometry attribute present but unreadable: :func:`unreadable_geometry`).
    """
    rejections: list[Rejection] = []
    # 1. exact duplicates (same SOPInstanceUID): keep one copy; conflicting bytes are rejected
    seen: dict[str, FileEntry] = {}
    files: list[FileEntry] = []
    for e in group.files:
        uid = _s(e.dataset, "SOPInstanceUID")
        if uid and uid in seen:
            if seen[uid].sha256 != e.sha256:
                rejections.append(Rejection(e.sha256, "duplicate_instance_conflict",
                                            "two files share a SOP Instance UID with different content",
                                            size=_size(e)))
            continue
        if uid:
            seen[uid] = e
        files.append(e)

    plans: list[VolumePlan] = []
    partitions: dict[tuple, list[FileEntry]] = defaultdict(list)
    for e in files:
        ds = e.dataset
        bad = unreadable_decimal(ds)
        if bad is not None:  # a damaged number must never read as an absent one (geometry, spacing, rescale)
            rejections.append(Rejection(e.sha256, "invalid_attribute", f"{bad} holds a value that is not a decimal "
                                        "number (DS)", size=_size(e)))
            continue
        bad = unreadable_geometry(ds)
        if bad is not None:  # a damaged position/orientation/spacing must never read as an absent one (2-D image)
            rejections.append(Rejection(e.sha256, "invalid_attribute", f"{bad} is present but cannot be read as "
                                        "its decimal numbers (wrong VR or number of values)", size=_size(e)))
            continue
        try:  # one file's unreadable attribute (e.g. BitsAllocated with a wrong VR) rejects that file, not its series
            frames, key = number_of_frames(ds), _split_key(ds)
        except (ValueError, TypeError, OverflowError) as exc:
            rejections.append(Rejection(e.sha256, "invalid_attribute", "an attribute that groups slices into "
                                        "volumes (geometry, matrix, pixel format) cannot be read as its type",
                                        type(exc).__name__, size=_size(e)))
            continue
        if frames > 1 and not is_mosaic(ds):
            plans.append(VolumePlan([e], "multiframe", {"image_type": [str(v) for v in (attr(ds, "ImageType") or [])]}))
            continue
        has_iop = _plane_floats(ds, "ImageOrientationPatient", 6) is not None
        has_ipp = _plane_floats(ds, "ImagePositionPatient", 3) is not None
        if has_iop != has_ipp:  # half a plane (the other attribute absent): a 2-D image would invent the other half
            rejections.append(Rejection(e.sha256, "missing_geometry", "ImagePositionPatient without "
                                        "ImageOrientationPatient or the reverse: the plane cannot be placed",
                                        size=_size(e)))
            continue
        if not has_iop:  # no plane geometry at all: a projection / secondary-capture / ultrasound image
            plans.append(VolumePlan([e], "2d", {"image_type": [str(v) for v in (attr(ds, "ImageType") or [])]}))
            continue
        partitions[key].append(e)

    for key, part in partitions.items():
        meta = _key_meta(key)
        iop = key[0]
        try:
            normal = slice_normal(iop)
        except ValueError:
            for e in part:
                rejections.append(Rejection(e.sha256, "missing_geometry", "ImageOrientationPatient is degenerate",
                                            size=_size(e)))
            continue
        if key[-1]:  # mosaic
            plans.extend(_plan_mosaics(part, normal, meta))
            continue
        plans.extend(_plan_stack(part, normal, meta, rejections))
    return plans, rejections


def _positions(part: list[FileEntry], normal: np.ndarray) -> np.ndarray:
    ipp = np.array([_plane_floats(e.dataset, "ImagePositionPatient", 3) for e in part], dtype=np.float64)
    return position_along_normal(ipp, normal)


def _plan_mosaics(part: list[FileEntry], normal: np.ndarray, meta: dict[str, Any]) -> list[VolumePlan]:
    d = _positions(part, normal)
    labels = _cluster_positions(d)
    out: list[VolumePlan] = []
    for lab in np.unique(labels):
        members = sorted((part[i] for i in np.flatnonzero(labels == lab)), key=_time_key)
        if len(members) == 1:
            out.append(VolumePlan(members, "mosaic", dict(meta)))
        else:
            out.append(VolumePlan(members, "mosaic", dict(meta), time_groups=[[m] for m in members]))
    return out


def _plan_stack(part: list[FileEntry], normal: np.ndarray, meta: dict[str, Any],
                rejections: list[Rejection]) -> list[VolumePlan]:
    d = _positions(part, normal)
    labels = _cluster_positions(d)
    n_pos = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=n_pos)
    if np.all(counts == 1):
        order = np.argsort(d, kind="stable")
        return [VolumePlan([part[i] for i in order], "3d", dict(meta), positions=[float(d[i]) for i in order])]
    if np.all(counts == counts[0]):
        n_t = int(counts[0])
        by_pos: list[list[int]] = [[] for _ in range(n_pos)]
        for i, lab in enumerate(labels):
            by_pos[lab].append(i)
        for lst in by_pos:
            lst.sort(key=lambda i: _time_key(part[i]))
        pos_order = sorted(range(n_pos), key=lambda p: float(np.mean(d[by_pos[p]])))
        time_groups = [[part[by_pos[p][t]] for p in pos_order] for t in range(n_t)]
        entries = [e for tg in time_groups for e in tg]
        positions = [float(np.mean(d[by_pos[p]])) for p in pos_order]
        return [VolumePlan(entries, "4d", dict(meta, n_time_points=n_t), time_groups=time_groups,
                           positions=positions)]
    # unequal repeats: try to separate acquisitions (AcquisitionNumber / TemporalPositionIdentifier)
    for name in ("AcquisitionNumber", "TemporalPositionIdentifier", "TriggerTime", "EchoTime"):
        vals = [_num(e.dataset, name) for e in part]
        if any(v is None for v in vals) or len(set(vals)) < 2:
            continue
        sub: dict[float, list[FileEntry]] = defaultdict(list)
        for e, v in zip(part, vals, strict=True):
            sub[v].append(e)  # type: ignore[index]
        if all(np.all(np.bincount(_cluster_positions(_positions(s, normal))) == 1) for s in sub.values()):
            out = []
            for v in sorted(sub):
                s = sub[v]
                ds_ = _positions(s, normal)
                order = np.argsort(ds_, kind="stable")
                out.append(VolumePlan([s[i] for i in order], "3d", dict(meta, split_by=name),
                                      positions=[float(ds_[i]) for i in order]))
            return out
    # keep the first file (by time key) at each position; reject the rest
    keep: list[int] = []
    for lab in range(n_pos):
        idx = sorted(np.flatnonzero(labels == lab), key=lambda i: _time_key(part[i]))
        keep.append(idx[0])
        for i in idx[1:]:
            rejections.append(Rejection(part[i].sha256, "duplicate_slice_positions",
                                        "slice position repeated without forming complete time points",
                                        size=_size(part[i])))
    order = sorted(keep, key=lambda i: d[i])
    return [VolumePlan([part[i] for i in order], "3d", dict(meta, duplicates_dropped=int(len(part) - len(keep))),
                       positions=[float(d[i]) for i in order])]
