"""Analysis stage task: IBSI-1 features of every ROI of one volume, into a Parquet table."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pandas as pd
from pydantic import BaseModel

from medflow.config import AnalysisConfig
from storage.volumes import read_numpy
from storage.workspace import ArtifactRef, atomic_folder
from tasks.common import Step, stage_task, write_json


class AnalysisOutput(BaseModel):
    features: ArtifactRef
    n_rois: int
    n_values: int


def settings_for(modality: str | None, params: AnalysisConfig):
    """The validated feature settings for one modality (see :class:`AnalysisConfig`)."""
    from medflow.features_cli import parse_feature_settings

    raw = params.settings.get(modality or "", params.settings.get("*"))
    if raw is None:
        raise ValueError(f"no feature settings for modality {modality!r} and no '*' default in analysis.settings")
    return parse_feature_settings(dict(raw), source=f"analysis.settings[{modality!r}]")


@stage_task("analysis", "features")
def features(workspace: str, volume: ArtifactRef, masks: list[ArtifactRef], params: AnalysisConfig,
             responses: list[ArtifactRef] | None = None) -> AnalysisOutput:
    """IBSI-1 features (one row per value) of each ROI of ``volume``; ROIs run in parallel threads.

    For each filter response map in ``responses`` the intensity statistics (IBSI-1 family
    ``stat``) of every ROI are added, with ``image`` naming the filter (IBSI-2 phase 2 style).
    """
    from imaging.features import extract_features

    responses = responses or []
    step = Step("analysis", "features", workspace, volume=volume, masks=masks, params=params, responses=responses)
    image, attrs = read_numpy(step.ws.resolve(volume))
    spacing = tuple(float(s) for s in attrs["spacing"])
    modality = volume.meta.get("modality")
    settings = settings_for(modality, params)
    from medflow.features_cli import settings_digest as digest_of

    settings_digest = digest_of(settings)

    # filter response maps: intensity statistics only, on the raw response (no HU range, rounding or outliers)
    response_settings = settings.model_copy(update={"families": ("stat",), "resegmentation_range": None,
                                                    "outlier_sigma": None, "intensity_rounding": False})
    response_images = [(r.meta.get("filter", "filter"), read_numpy(step.ws.resolve(r))[0]) for r in responses]

    def one(mask_ref: ArtifactRef) -> pd.DataFrame:
        mask, _ = read_numpy(step.ws.resolve(mask_ref))
        roi = mask.astype(bool)
        parts = [extract_features(image, roi, spacing=spacing, settings=settings).assign(image="original")]
        for name, response in response_images:
            filtered = extract_features(response, roi, spacing=spacing, settings=response_settings)
            parts.append(filtered.assign(image=f"filter:{name}"))
        table = pd.concat(parts, ignore_index=True)
        m = mask_ref.meta
        return table.assign(
            patient_key=volume.meta.get("patient_key"), volume_key=volume.meta.get("volume_key"), modality=modality,
            mask_key=m.get("mask_key"), roi_name=m.get("roi_name"), roi_source=m.get("source"),
            image_digest=volume.digest, mask_digest=mask_ref.digest, settings_digest=settings_digest,
            code_version=step.provenance()["code_version"])

    usable = [m for m in masks if int(m.meta.get("voxels") or 0) > 0]
    with ThreadPoolExecutor(max_workers=params.max_workers) as pool:
        tables = list(pool.map(one, usable))
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(
        columns=["family", "feature", "aggregation", "ibsi_code", "value", "patient_key", "volume_key", "mask_key"])
    with atomic_folder(step.folder) as stage:
        table.to_parquet(stage / "features.parquet", index=False)
        write_json(stage / "provenance.json", step.provenance(settings=settings.model_dump(mode="json")))
    return AnalysisOutput(features=step.ref("features", "features.parquet", meta={
        k: volume.meta.get(k) for k in ("patient_key", "volume_key", "modality")}), n_rois=len(usable),
        n_values=len(table))
