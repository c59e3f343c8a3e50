"""Preprocessing stage task: resampling, denoising, intensity normalisation (Dask over the Zarr chunks)."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from medflow.config import ComputeConfig, PreprocessingConfig
from storage.volumes import geometry, open_array, read_numpy, write_array
from storage.workspace import ArtifactRef, atomic_folder
from tasks.common import Step, dask_context, stage_task


class PreprocessOutput(BaseModel):
    volume: ArtifactRef
    masks: list[ArtifactRef]


def preprocess_array(data, *, spacing, affine, params: PreprocessingConfig):
    """Apply the configured preprocessing chain to one (dask) volume; returns (data, spacing, affine)."""
    data = data.astype(np.float32)
    if params.target_spacing_mm is None and params.denoise == "none" and params.normalisation == "none":
        return data, spacing, affine
    from imaging import preprocess as pp

    if params.target_spacing_mm is not None and tuple(params.target_spacing_mm) != tuple(spacing):
        data, affine = pp.resample(data, spacing=spacing, new_spacing=tuple(params.target_spacing_mm),
                                   interpolation=params.interpolation, affine=affine)
        spacing = tuple(float(s) for s in params.target_spacing_mm)
    if params.denoise == "gaussian":
        data = pp.gaussian(data, spacing=spacing, sigma_mm=params.gaussian_sigma_mm)
    elif params.denoise == "median":
        data = pp.median(data, size=params.median_size)
    if params.normalisation != "none":
        data = pp.normalise(data, method=params.normalisation, window=params.window, percentiles=params.percentiles)
    return data, spacing, affine


@stage_task("preprocessing", "preprocess")
def preprocess(workspace: str, volume: ArtifactRef, masks: list[ArtifactRef], params: PreprocessingConfig,
               compute: ComputeConfig) -> PreprocessOutput:
    """Resample, denoise and normalise one volume; masks follow the volume onto a new grid."""
    step = Step("preprocessing", "preprocess", workspace, volume=volume, masks=masks, params=params)
    src = open_array(step.ws.resolve(volume))
    affine, spacing = geometry(src.attrs)
    with dask_context(compute), atomic_folder(step.folder) as stage:
        data, new_spacing, new_affine = preprocess_array(src.data, spacing=spacing, affine=affine, params=params)
        write_array(stage / "volume", data, affine=new_affine, spacing=new_spacing,
                    attrs={"medflow": {**src.attrs.get("medflow", {}), "spacing": list(new_spacing),
                                       "shape": list(data.shape)},
                           "provenance": step.provenance()})
        regridded = []
        if tuple(new_spacing) != tuple(spacing):
            from imaging import preprocess as pp

            for i, m in enumerate(masks):
                arr, attrs = read_numpy(step.ws.resolve(m))
                res, _ = pp.resample_mask(arr, spacing=spacing, new_spacing=new_spacing,
                                          partial_volume=params.mask_partial_volume, affine=affine)
                meta = {**attrs.get("medflow", {}), "shape": list(res.shape), "voxels": int(np.count_nonzero(res))}
                write_array(stage / f"mask{i}", np.asarray(res, dtype=bool), affine=new_affine, spacing=new_spacing,
                            attrs={"medflow": meta, "provenance": step.provenance()})
                regridded.append((f"mask{i}", meta))
    out_masks = [step.ref("mask", rel, meta=meta) for rel, meta in regridded] if regridded else list(masks)
    vmeta = {**volume.meta, "spacing": list(new_spacing), "shape": list(data.shape)}
    return PreprocessOutput(volume=step.ref("volume", "volume", meta=vmeta), masks=out_masks)
