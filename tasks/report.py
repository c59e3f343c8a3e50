"""Report stage task: one self-contained HTML report plus the merged feature table."""

from __future__ import annotations

import json

import pandas as pd
from pydantic import BaseModel

from storage.volumes import read_numpy
from storage.workspace import ArtifactRef, atomic_folder
from tasks.common import Step, stage_task, write_json


class ReportOutput(BaseModel):
    html: ArtifactRef
    features: ArtifactRef


@stage_task("report", "report")
def report(workspace: str, collection: ArtifactRef, volumes: list[ArtifactRef], masks: list[ArtifactRef],
           evaluations: list[ArtifactRef], features: list[ArtifactRef], discovery: ArtifactRef,
           fusions: list[ArtifactRef] | None = None, detections: list[ArtifactRef] | None = None) -> ReportOutput:
    from medflow.report import overlay_png, render

    step = Step("report", "report", workspace, collection=collection, volumes=volumes, masks=masks,
                evaluations=evaluations, features=features, discovery=discovery, fusions=fusions or [],
                detections=detections or [])
    ws = step.ws
    summary = json.loads(ws.resolve(collection).read_text())
    figures = []
    for v in volumes:
        arr, attrs = read_numpy(ws.resolve(v))
        if arr.ndim != 3:
            continue
        vm = [(m.meta.get("roi_name", "roi"), read_numpy(ws.resolve(m))[0].astype(bool)) for m in masks
              if m.meta.get("volume_key") == v.meta.get("volume_key")]
        figures.append((f"{v.meta.get('volume_key')} {v.meta.get('modality')}",
                        overlay_png(arr, vm, spacing=tuple(attrs["spacing"]), title=str(v.meta.get("modality")))))
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
    html = render(volumes=[v.meta for v in volumes], figures=figures, qc=qc, quarantine=quarantine, evaluation=evals,
                  features=feats, discovery=json.loads(ws.resolve(discovery).read_text()),
                  provenance=step.provenance(), fusion=fusion, detection=detection)
    with atomic_folder(step.folder) as stage:
        (stage / "report.html").write_text(html)
        feats.to_parquet(stage / "features.parquet", index=False)
        write_json(stage / "provenance.json", step.provenance())
    return ReportOutput(html=step.ref("report", "report.html"), features=step.ref("features", "features.parquet"))
