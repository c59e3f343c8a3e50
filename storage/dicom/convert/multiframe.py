"""Enhanced multi-frame objects (per-frame / shared functional groups) and legacy multi-frame cine."""

from __future__ import annotations

from typing import Any

import numpy as np

from imaging.geometry import (
    affine_from_dicom,
    position_along_normal,
    slice_normal,
)
from storage.dicom.convert.common import (
    PetUnits,
    _Decoded,
    _finish_meta,
    _geometry_meta,
    _load,
    _opt_float,
    _orientation_label,
    _reject,
    _rescale_of,
    _rescaled,
    _seq_item,
    _Slice,
    _stack_arrays,
    _valid_ps,
    base_meta,
)
from storage.dicom.convert.pet import _apply_pet, _pet_meta
from storage.dicom.convert.planar import _planar_affine, _planar_spacing
from storage.dicom.convert.planes import _volume_from_slices
from storage.dicom.model import ConvertedVolume, FileEntry, Rejection, SeriesGroup
from storage.dicom.pixels import (
    PixelDataError,
    apply_rescale,
)
from storage.dicom.series import VolumePlan, _cluster_positions, _floats, _num, _s
from storage.images import spacing_from_affine


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


