"""Knowledge-discovery stage task: case base -> mining, similar cases, prediction, efficacy, decision support."""

from __future__ import annotations

import pandas as pd
from pydantic import BaseModel

from medflow.config import DiscoveryConfig
from storage.models import save_model
from storage.workspace import ArtifactRef, atomic_folder
from tasks.common import Step, stage_task, write_json


class DiscoveryOutput(BaseModel):
    results: ArtifactRef
    cases: ArtifactRef
    n_cases: int
    models: list[ArtifactRef] = []


@stage_task("discovery", "discover")
def discover(workspace: str, features: list[ArtifactRef], clinical: ArtifactRef | None,
             params: DiscoveryConfig) -> DiscoveryOutput:
    from imaging.casebase import case_table, run_discovery

    step = Step("discovery", "discover", workspace, features=features, clinical=clinical, params=params)
    tables = [pd.read_parquet(step.ws.resolve(f)) for f in features]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    clin = pd.read_parquet(step.ws.resolve(clinical)) if clinical is not None else None
    models: dict = {}
    results = run_discovery(table, clin, label_column=params.label_column, treatment_column=params.treatment_column,
                            outcome_column=params.outcome_column, classifiers=params.classifiers,
                            cv_folds=params.cv_folds, n_similar=params.n_similar, random_state=params.random_state,
                            models=models)
    saved = []
    with atomic_folder(step.folder) as stage:
        write_json(stage / "discovery.json", {"provenance": step.provenance(), **results})
        case_table(table).to_parquet(stage / "cases.parquet", index=False)
        for i, (name, (model, columns)) in enumerate(sorted(models.items())):
            modality, kind = name.split("/")
            card = results["modalities"][modality]["prediction"][kind].get("model_card", {})
            rel = f"models/model{i}"
            (stage / rel).mkdir(parents=True)
            save_model(stage / rel / "model.joblib", model)
            write_json(stage / rel / "card.json", {
                "modality": modality, "kind": kind, "feature_columns": columns, "label": params.label_column,
                "cv": card, "provenance": step.provenance()})
            saved.append((rel, {"modality": modality, "kind": kind, "n_features": len(columns)}))
    return DiscoveryOutput(results=step.ref("discovery", "discovery.json"), cases=step.ref("cases", "cases.parquet"),
                           n_cases=int(results["n_cases"]),
                           models=[step.ref("model", rel, meta=meta) for rel, meta in saved])
