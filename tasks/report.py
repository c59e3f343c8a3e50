"""Report stage tasks: one figure per volume (in its volume chain), then one self-contained HTML report
plus the merged feature table.

The figure of a volume depends only on that volume and its masks, so it is drawn once, by the volume's
chain (in parallel with the other chains, cached with them); the cohort-level report reads the figures.
Drawn in the report itself, every figure of the cohort was drawn again, one after the other, on every
run that added a patient (104 patients: 40 s of the report's 41 s).
"""

from __future__ import annotations

import base64
import json

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from storage.volumes import read_numpy
from storage.workspace import ArtifactRef, atomic_folder
from tasks.common import Step, cached_step, stage_task, write_json


class ReportOutput(BaseModel):
    html: ArtifactRef
    features: ArtifactRef


class FigureOutput(BaseModel):
    """A volume's report figure: ``png`` (its ``meta`` says which volume and modality), or None for a non-3-D volume."""

    png: ArtifactRef | None


@stage_task("report", "figure")
def figure(workspace: str, volume: ArtifactRef, masks: list[ArtifactRef]) -> FigureOutput:
    """The report's figure of one volume: the axial slice through its largest mask, every mask's contour on top.

    Parameters
    ----------
    workspace : str
        Workspace root (a location: never part of a key).
    volume : ArtifactRef
        The (preprocessed) volume.
    masks : list of ArtifactRef
        The masks drawn on it (reference and automatic), in the order of their legend.
    """
    from medflow.report import overlay_png

    step = Step("report", "figure", workspace, volume=volume, masks=masks)
    ws = step.ws
    arr, attrs = read_numpy(ws.resolve(volume))
    with atomic_folder(step.folder) as stage:
        write_json(stage / "provenance.json", step.provenance())
        if arr.ndim == 3:
            drawn = [(m.meta.get("roi_name", "roi"), read_numpy(ws.resolve(m))[0].astype(bool)) for m in masks]
            (stage / "figure.png").write_bytes(overlay_png(arr, drawn, spacing=tuple(attrs["spacing"]),
                                                           title=str(volume.meta.get("modality"))))
    if arr.ndim != 3:
        return FigureOutput(png=None)
    return FigureOutput(png=step.ref("figure", "figure.png", meta={"volume_key": volume.meta.get("volume_key"),
                                                                  "modality": volume.meta.get("modality")}))


def masks_of(volume: ArtifactRef, masks: list[ArtifactRef]) -> list[ArtifactRef]:
    """The masks among ``masks`` drawn on ``volume`` (same volume key), in their order: a figure's legend."""
    key = volume.meta.get("volume_key")
    return [m for m in masks if m.meta.get("volume_key") == key]


@task(name="volume-figures", cache_policy=NO_CACHE, persist_result=False)
def volume_figures(workspace: str, volumes: list[ArtifactRef], masks: list[ArtifactRef]) -> list[ArtifactRef]:
    """The figure of each volume with its masks (matched by volume key), for a report outside the volume chains.

    Each figure is a content-keyed :func:`figure` step, as in a chain: one drawn before with the same
    volume and masks costs a record read; only the others are drawn. Non-3-D volumes have none.
    """
    out = []
    for v in volumes:
        fig, _state = cached_step(figure, workspace, FigureOutput, volume=v, masks=masks_of(v, masks))
        if fig.png is not None:
            out.append(fig.png)
    return out


@stage_task("report", "report")
def report(workspace: str, collection: ArtifactRef, volumes: list[ArtifactRef], figures: list[ArtifactRef],
           evaluations: list[ArtifactRef], features: list[ArtifactRef], discovery: ArtifactRef,
           fusions: list[ArtifactRef] | None = None, detections: list[ArtifactRef] | None = None) -> ReportOutput:
    """The HTML report of a run (or of the cohort) and its merged feature table.

    ``figures``: the volumes' figures (:func:`figure`), shown in this order under ``<volume key> <modality>``.
    """
    from medflow.report import render

    step = Step("report", "report", workspace, collection=collection, volumes=volumes, figures=figures,
                evaluations=evaluations, features=features, discovery=discovery, fusions=fusions or [],
                detections=detections or [])
    ws = step.ws
    summary = json.loads(ws.resolve(collection).read_text())
    figures_shown = [(f"{f.meta.get('volume_key')} {f.meta.get('modality')}",
                      base64.b64encode(ws.resolve(f).read_bytes()).decode()) for f in figures]
    feats = pd.concat([pd.read_parquet(ws.resolve(f)) for f in features], ignore_index=True) if features else pd.DataFrame()
    evals = pd.concat([pd.read_parquet(ws.resolve(e)) for e in evaluations], ignore_index=True) if evaluations else pd.DataFrame()
    qc = pd.DataFrame(summary.get("qc") or [])
    quarantine = pd.DataFrame(summary.get("rejections") or [])
    if not quarantine.empty:
        quarantine = quarantine.assign(sha256=quarantine["sha256"].str[:16])
    fusion = pd.DataFrame([{k: json.loads(ws.resolve(f).read_text()).get(k) for k in
                            ("moving", "moving_modality", "fixed", "metric", "centre_displacement_mm", "rotation_deg")}
                           for f in fusions or []])
    detection = pd.DataFrame([{"volume": d.meta.get("volume_key"), "modality": d.meta.get("modality"),
                               **(d.meta.get("score") or {})} for d in detections or []])
    html = render(volumes=[v.meta for v in volumes], figures=figures_shown, qc=qc, quarantine=quarantine, evaluation=evals,
                  features=feats, discovery=json.loads(ws.resolve(discovery).read_text()),
                  provenance=step.provenance(), fusion=fusion, detection=detection)
    with atomic_folder(step.folder) as stage:
        (stage / "report.html").write_text(html)
        feats.to_parquet(stage / "features.parquet", index=False)
        write_json(stage / "provenance.json", step.provenance())
    return ReportOutput(html=step.ref("report", "report.html"), features=step.ref("features", "features.parquet"))
