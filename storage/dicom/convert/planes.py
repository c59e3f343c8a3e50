"""Single-frame stacks: 3-D volumes along the slice normal and 4-D time series."""

from __future__ import annotations

from typing import Any

import numpy as np

from imaging.geometry import (
    slice_normal,
)
from storage.dicom.convert.common import (
    PetUnits,
    _Decoded,
    _finish_meta,
    _geometry_meta,
    _reject,
    _rescaled,
    _single_slices,
    _Slice,
    _stack_arrays,
    base_meta,
)
from storage.dicom.convert.pet import _apply_pet, _pet_meta
from storage.dicom.model import ConvertedVolume, Rejection, SeriesGroup
from storage.dicom.pixels import (
    PixelDataError,
)
from storage.dicom.series import VolumePlan, _s
from storage.images import spacing_from_affine


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


