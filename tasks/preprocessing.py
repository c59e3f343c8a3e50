"""Preprocessing stage tasks: the per-volume chain (resample, bias field, denoise, normalise) and fusion."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from medflow.config import ComputeConfig, FusionConfig, PreprocessingConfig
from storage.volumes import geometry, open_array, read_numpy, write_array
from storage.workspace import ArtifactRef, atomic_folder
from tasks.common import Step, dask_context, stage_task, write_json


class PreprocessOutput(BaseModel):
    volume: ArtifactRef
    masks: list[ArtifactRef]


class FusionOutput(BaseModel):
    volume: ArtifactRef
    transform: ArtifactRef


@stage_task("preprocessing", "preprocess")
def preprocess(workspace: str, volume: ArtifactRef, masks: list[ArtifactRef], params: PreprocessingConfig,
               compute: ComputeConfig) -> PreprocessOutput:
    """Resample, bias-correct, denoise and normalise one volume; masks follow the volume onto a new grid.

    When the settings apply nothing (the defaults), nothing is written: the output references
    the input volume and masks unchanged (same digest, same dtype -- int16 CT stays int16).
    """
    from imaging.chain import preprocess_volume

    step = Step("preprocessing", "preprocess", workspace, volume=volume, masks=masks, params=params)
    src = open_array(step.ws.resolve(volume))
    affine, spacing = geometry(src.attrs)
    with dask_context(compute):
        # lazy on the dask-backed volume: steps that apply nothing build no graph and read nothing
        data, new_spacing, new_affine, applied = preprocess_volume(
            src.data, spacing=spacing, affine=affine, modality=volume.meta.get("modality"),
            **params.model_dump(exclude={"mask_partial_volume"}))
        if not applied:
            # nothing changed: store nothing new, reference the input volume and masks (same digests, same dtype)
            vmeta = {**volume.meta, "spacing": list(spacing), "shape": list(src.shape)}
            return PreprocessOutput(volume=volume.model_copy(update={"meta": vmeta}), masks=list(masks))
        with atomic_folder(step.folder) as stage:
            write_array(stage / "volume", data, affine=new_affine, spacing=new_spacing,
                        attrs={"medflow": {**src.attrs.get("medflow", {}), "spacing": list(new_spacing),
                                           "shape": list(data.shape)},
                               "provenance": step.provenance(applied=applied)})
            regridded = []
            if tuple(new_spacing) != tuple(spacing):
                from imaging import preprocess as pp

                for i, m in enumerate(masks):
                    arr, attrs = read_numpy(step.ws.resolve(m))
                    res, _ = pp.resample_mask(arr, spacing=spacing, new_spacing=new_spacing,
                                              partial_volume=params.mask_partial_volume, affine=affine)
                    res = np.asarray(res, dtype=bool)
                    meta = {**attrs.get("medflow", {}), "shape": list(res.shape),
                            "voxels": int(np.count_nonzero(res))}
                    write_array(stage / f"mask{i}", res, affine=new_affine, spacing=new_spacing,
                                attrs={"medflow": meta, "provenance": step.provenance()})
                    regridded.append((f"mask{i}", meta))
    out_masks = [step.ref("mask", rel, meta=meta) for rel, meta in regridded] if regridded else list(masks)
    vmeta = {**volume.meta, "spacing": list(new_spacing), "shape": list(data.shape)}
    return PreprocessOutput(volume=step.ref("volume", "volume", meta=vmeta), masks=out_masks)


@stage_task("preprocessing", "fuse")
def fuse(workspace: str, fixed: ArtifactRef, moving: ArtifactRef, params: FusionConfig,
         compute: ComputeConfig) -> FusionOutput:
    """Register ``moving`` onto ``fixed`` (mutual information by default) and resample it onto the fixed grid."""
    from imaging import preprocess as pp

    step = Step("preprocessing", "fuse", workspace, fixed=fixed, moving=moving, params=params)
    f_arr, f_attrs = read_numpy(step.ws.resolve(fixed))
    m_arr, m_attrs = read_numpy(step.ws.resolve(moving))
    f_aff, f_sp = geometry(f_attrs)
    m_aff, m_sp = geometry(m_attrs)
    with dask_context(compute):
        transform = pp.register_rigid(f_arr, m_arr, fixed_spacing=f_sp, moving_spacing=m_sp, fixed_affine=f_aff,
                                      moving_affine=m_aff, metric=params.metric, transform=params.transform,
                                      iterations=params.iterations)
        fused = pp.resample_to_grid(m_arr, moving_affine=m_aff, target_shape=f_arr.shape, target_affine=f_aff,
                                    transform=transform, interpolation=params.interpolation)
    centre = f_aff @ np.append((np.asarray(f_arr.shape, dtype=np.float64) - 1) / 2, 1.0)
    translation = float(np.linalg.norm((transform @ centre - centre)[:3]))  # displacement at the grid centre
    rot = transform[:3, :3]
    angle = float(np.degrees(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1.0, 1.0))))
    summary = {"transform_fixed_to_moving_lps": np.asarray(transform).tolist(), "centre_displacement_mm": translation,
               "rotation_deg": angle, "fixed": fixed.meta.get("volume_key"), "moving": moving.meta.get("volume_key"),
               "moving_modality": moving.meta.get("modality"), "metric": params.metric}
    meta = {**moving.meta, "fused_onto": fixed.meta.get("volume_key"), "shape": list(f_arr.shape),
            "spacing": list(f_sp), "centre_displacement_mm": translation, "rotation_deg": angle}
    with atomic_folder(step.folder) as stage:
        write_array(stage / "volume", np.asarray(fused, dtype=np.float32), affine=f_aff, spacing=f_sp,
                    attrs={"medflow": meta, "provenance": step.provenance(fusion=summary)})
        write_json(stage / "transform.json", summary)
    return FusionOutput(volume=step.ref("fused-volume", "volume", meta=meta),
                        transform=step.ref("transform", "transform.json", meta=summary))
