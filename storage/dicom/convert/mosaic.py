"""Siemens mosaics: one 3-D volume per file (CSA header or NumberOfImagesInMosaic), 4-D over files."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from imaging.geometry import (
    affine_from_dicom,
    demosaic,
    mosaic_position_correction,
    mosaic_tile_grid,
    slice_normal,
)
from storage.dicom.convert.common import (
    PetUnits,
    _Decoded,
    _load,
    _opt_float,
    _orientation_label,
    _reject,
    _rescale_of,
    _valid_ps,
    base_meta,
)
from storage.dicom.convert.pet import _apply_pet, _pet_meta
from storage.dicom.model import ConvertedVolume, FileEntry, Rejection, SeriesGroup
from storage.dicom.pixels import (
    PixelDataError,
    apply_rescale,
)
from storage.dicom.series import VolumePlan, _floats, _num, _s
from storage.images import spacing_from_affine


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


