"""Processing stage task: enhancement, automatic segmentation, IBSI-2 filter responses, blob detection,
and evaluation against reference masks when they exist."""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel

from medflow.config import ComputeConfig, ProcessingConfig
from storage.volumes import geometry, open_array, read_numpy, write_array
from storage.workspace import ArtifactRef, atomic_folder
from tasks.common import Step, dask_context, stage_task, write_json


class ProcessOutput(BaseModel):
    labels: ArtifactRef
    auto_masks: list[ArtifactRef]
    evaluation: ArtifactRef
    responses: list[ArtifactRef] = []
    detections: ArtifactRef | None = None


def seed_voxels(points_mm: list, references: list, *, affine: np.ndarray, shape: tuple[int, ...]
                ) -> tuple[np.ndarray | None, str]:
    """Region-growing seeds as voxel indices: configured LPS points, else reference-mask centroids."""
    if points_mm:
        inv = np.linalg.inv(affine)
        vox = np.rint((inv @ np.c_[np.asarray(points_mm, dtype=float), np.ones(len(points_mm))].T)[:3].T)
        inside = np.all((vox >= 0) & (vox < np.asarray(shape[:3])), axis=1)
        return (vox[inside].astype(np.int64) if inside.any() else None), "seeded (configured points)"
    cents = []
    for _, m in references:
        inside = np.argwhere(m)
        if len(inside):
            c = np.rint(inside.mean(axis=0)).astype(np.int64)
            cents.append(c if m[tuple(c)] else inside[len(inside) // 2])  # non-convex ROI: a voxel inside it
    return (np.asarray(cents) if cents else None), "assisted (seeds from reference masks)"


@stage_task("processing", "segment")
def segment(workspace: str, volume: ArtifactRef, reference_masks: list[ArtifactRef], params: ProcessingConfig,
            compute: ComputeConfig) -> ProcessOutput:
    """Segment one preprocessed volume, filter it, detect blobs; score against reference masks if any."""
    from imaging.autoseg import auto_segment, detect_candidates, evaluate_segmentation
    from imaging.filter_spec import apply_filter

    step = Step("processing", "segment", workspace, volume=volume, reference_masks=reference_masks, params=params)
    src = open_array(step.ws.resolve(volume))
    affine, spacing = geometry(src.attrs)
    modality = volume.meta.get("modality")
    refs = []
    for m in reference_masks:
        arr, _attrs = read_numpy(step.ws.resolve(m))
        refs.append((m.meta.get("roi_name", "roi"), arr.astype(bool)))
    base = {k: volume.meta.get(k) for k in ("patient_key", "volume_key", "modality")}
    provenance = step.provenance()
    method, seeds, mode = params.method, None, "automatic"
    if method == "region_grow" and modality != "PT":
        seeds, mode = seed_voxels(params.seed_points_mm, refs, affine=affine, shape=src.shape)
        if seeds is None:
            method, mode = "threshold", "automatic (region_grow had no seeds: no seed_points_mm, no reference mask)"
    with dask_context(compute), atomic_folder(step.folder) as stage:
        labels, components = auto_segment(
            src.data, spacing=spacing, modality=modality, log_enhancement=params.log_enhancement,
            threshold=params.threshold, bins=params.histogram_bins, opening_radius=params.opening_radius,
            min_size=params.min_component_voxels, connectivity=params.connectivity, keep_largest=params.keep_largest,
            pet_fraction=params.pet_fraction, method=method, seeds=seeds, grow_k=params.grow_k,
            grow_radius=params.grow_radius, split_touching=params.split_touching,
            split_min_distance_mm=params.split_min_distance_mm, memory_budget_bytes=compute.memory_budget_bytes)
        evaluation = [{**row, "method": "pet_isocontour" if modality == "PT" else method, "mode": mode}
                      for row in evaluate_segmentation(labels, components, refs, spacing=spacing)]
        write_array(stage / "labels", labels, affine=affine, spacing=spacing,
                    attrs={"medflow": {**base, "components": components}, "provenance": provenance})
        metas = []
        for i, comp in enumerate(components):
            meta = {**base, "mask_key": f"{volume.meta.get('volume_key')}.auto{i}", "roi_name": f"auto_{i + 1}",
                    "source": "auto", "voxels": int(comp["voxels"])}
            write_array(stage / f"auto{i}", labels == comp["label"], affine=affine, spacing=spacing,
                        attrs={"medflow": meta, "provenance": provenance})
            metas.append((f"auto{i}", meta))
        responses = []
        for i, spec in enumerate(params.filters):
            name = f"{spec.filter_type}{i}"
            response = apply_filter(src.data, spec, spacing=spacing)
            meta = {**base, "filter": name, "spec": spec.model_dump(mode="json")}
            write_array(stage / f"response{i}", response, affine=affine, spacing=spacing,
                        attrs={"medflow": meta, "provenance": provenance})
            responses.append((f"response{i}", meta))
        detection_summary = None
        if params.detect_blobs:
            found, detection_summary = detect_candidates(
                src.data, spacing=spacing, affine=affine, method=params.blob_method, sigmas_mm=params.blob_sigmas_mm,
                threshold=params.blob_threshold, references=refs)
            found.assign(**base).to_parquet(stage / "detections.parquet", index=False)
            write_json(stage / "detection_score.json", detection_summary)
        pd.DataFrame(evaluation).assign(**base).to_parquet(stage / "evaluation.parquet", index=False)
    return ProcessOutput(
        labels=step.ref("labels", "labels", meta=base),
        auto_masks=[step.ref("mask", rel, meta=meta) for rel, meta in metas],
        evaluation=step.ref("segmentation-evaluation", "evaluation.parquet", meta=base),
        responses=[step.ref("response-map", rel, meta=meta) for rel, meta in responses],
        detections=step.ref("detections", "detections.parquet", meta={**base, "score": detection_summary})
        if params.detect_blobs else None)
