"""Processing stage task: log enhancement, automatic segmentation, evaluation against reference masks."""

from __future__ import annotations

import pandas as pd
from pydantic import BaseModel

from medflow.config import ComputeConfig, ProcessingConfig
from storage.volumes import geometry, open_array, read_numpy, write_array
from storage.workspace import ArtifactRef, atomic_folder
from tasks.common import Step, dask_context, stage_task


class ProcessOutput(BaseModel):
    labels: ArtifactRef
    auto_masks: list[ArtifactRef]
    evaluation: ArtifactRef


@stage_task("processing", "segment")
def segment(workspace: str, volume: ArtifactRef, reference_masks: list[ArtifactRef], params: ProcessingConfig,
            compute: ComputeConfig) -> ProcessOutput:
    """Segment one preprocessed volume and score the result against reference masks when they exist."""
    from imaging.autoseg import auto_segment, evaluate_segmentation

    step = Step("processing", "segment", workspace, volume=volume, reference_masks=reference_masks, params=params)
    src = open_array(step.ws.resolve(volume))
    affine, spacing = geometry(src.attrs)
    modality = volume.meta.get("modality")
    with dask_context(compute):
        labels, components = auto_segment(
            src.data, spacing=spacing, modality=modality, log_enhancement=params.log_enhancement,
            threshold=params.threshold, bins=params.histogram_bins, opening_radius=params.opening_radius,
            min_size=params.min_component_voxels, connectivity=params.connectivity, keep_largest=params.keep_largest)
    refs = []
    for m in reference_masks:
        arr, _attrs = read_numpy(step.ws.resolve(m))
        refs.append((m.meta.get("roi_name", "roi"), arr.astype(bool)))
    evaluation = evaluate_segmentation(labels, components, refs, spacing=spacing)
    base = {k: volume.meta.get(k) for k in ("patient_key", "volume_key", "modality")}
    with atomic_folder(step.folder) as stage:
        write_array(stage / "labels", labels, affine=affine, spacing=spacing,
                    attrs={"medflow": {**base, "components": components}, "provenance": step.provenance()})
        metas = []
        for i, comp in enumerate(components):
            meta = {**base, "mask_key": f"{volume.meta.get('volume_key')}.auto{i}", "roi_name": f"auto_{i + 1}",
                    "source": "auto", "voxels": int(comp["voxels"])}
            write_array(stage / f"auto{i}", labels == comp["label"], affine=affine, spacing=spacing,
                        attrs={"medflow": meta, "provenance": step.provenance()})
            metas.append((f"auto{i}", meta))
        pd.DataFrame(evaluation).assign(**base).to_parquet(stage / "evaluation.parquet", index=False)
    return ProcessOutput(labels=step.ref("labels", "labels", meta=base),
                         auto_masks=[step.ref("mask", rel, meta=meta) for rel, meta in metas],
                         evaluation=step.ref("segmentation-evaluation", "evaluation.parquet", meta=base))
