"""Knowledge-discovery stage task: patient-level case base -> prediction, rules, survival, efficacy, similar cases.

Reads the analysis stage's feature tables and the ingested clinical table, applies the
declared column roles, runs :func:`knowledge.discover` (labelled workspace) or places the
workspace's patients against a stored case base (:func:`knowledge.place_cases`), and
writes ``discovery.json``, ``metrics.json``, ``casebase.parquet``, ``rules*.txt`` and the
fitted models, atomically, with provenance.
"""

from __future__ import annotations

import pathlib

import pandas as pd
from pydantic import BaseModel

from medflow.config import DiscoveryConfig
from storage.workspace import ArtifactRef, atomic_folder
from tasks.common import Step, stage_task


class DiscoveryOutput(BaseModel):
    results: ArtifactRef
    cases: ArtifactRef
    n_cases: int
    models: list[ArtifactRef] = []


def casebase_fingerprint(path: str | pathlib.Path) -> ArtifactRef:
    """Content digest of a stored case base and of the ``schema.yaml`` beside it (never their location)."""
    import hashlib

    from storage.workspace import digest_path

    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"stored case base does not exist: {p}")
    schema = p.with_name("schema.yaml")
    if not schema.is_file():
        raise FileNotFoundError(f"stored case base {p.name} has no schema.yaml beside it")
    digest = hashlib.sha256(f"{digest_path(p)}|{digest_path(schema)}".encode()).hexdigest()
    return ArtifactRef(kind="casebase-source", uri="", digest=f"sha256:{digest}", meta={})


@stage_task("discovery", "discover")
def discover(workspace: str, features: list[ArtifactRef], clinical: ArtifactRef | None, params: DiscoveryConfig,
             casebase: ArtifactRef | None = None, source: str | None = None) -> DiscoveryOutput:
    """Knowledge discovery of one workspace.

    Parameters
    ----------
    features : list of ArtifactRef
        Long feature tables of the analysis stage.
    clinical : ArtifactRef or None
        Ingested clinical table (``patient_key`` + the sheet's non-PHI columns).
    params : DiscoveryConfig
        With the schema inline (:meth:`DiscoveryConfig.resolved`).
    casebase : ArtifactRef, optional
        Content fingerprint of the stored case base (:func:`casebase_fingerprint`); keyed.
    source : str, optional
        Its path (a location: not part of the cache key).
    """
    from medflow.discover_cli import analyse, write_outputs
    from storage.clinical import case_schema_from_dict, read_case_schema
    from storage.models import save_model
    from tasks.common import write_json

    if params.schema_file is not None:
        raise ValueError("discovery params must carry the schema inline (DiscoveryConfig.resolved())")
    if (casebase is None) != (source is None):
        raise ValueError("give both casebase (fingerprint) and source (its path), or neither")
    step = Step("discovery", "discover", workspace, features=features, clinical=clinical, params=params,
                casebase=casebase)
    tables = [pd.read_parquet(step.ws.resolve(f)) for f in features]
    long = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(
        columns=["patient_key", "volume_key", "roi_name", "modality", "family", "feature", "aggregation", "value"])
    clin = pd.read_parquet(step.ws.resolve(clinical)) if clinical is not None else None
    schema = case_schema_from_dict(params.roles, source="discovery.roles") if params.roles is not None else None
    stored = stored_schema = None
    if source is not None:
        stored = pd.read_parquet(source)
        stored_schema = read_case_schema(pathlib.Path(source).with_name("schema.yaml"))
    models: dict = {}
    results, table = analyse(long, clin, schema, params, stored=stored, stored_schema=stored_schema, models=models)
    provenance = step.provenance()
    saved = []
    with atomic_folder(step.folder) as stage:
        write_outputs(stage, results, table, provenance=provenance, lang=params.lang)
        for i, (name, (model, columns)) in enumerate(sorted(models.items())):
            rel = f"models/model{i}"
            (stage / rel).mkdir(parents=True)
            save_model(stage / rel / "model.joblib", model)
            card = ((results.get("prediction") or {}).get("models") or {}).get(name, {})
            write_json(stage / rel / "card.json", {
                "model": name, "feature_columns": list(columns), "label": (results.get("label") or {}).get("name"),
                "cv": {k: card.get(k) for k in ("auc", "auc_ci", "accuracy", "brier")}, "provenance": provenance})
            saved.append((rel, {"model": name, "n_features": len(columns)}))
    return DiscoveryOutput(results=step.ref("discovery", "discovery.json"),
                           cases=step.ref("cases", "casebase.parquet"), n_cases=int(len(table)),
                           models=[step.ref("model", rel, meta=meta) for rel, meta in saved])
