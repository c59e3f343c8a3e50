"""Knowledge discovery over the case base: the composition the discovery stage runs.

Cases are the reference ROIs (one row per patient/volume/ROI), grouped by modality
so that similar-case reasoning compares like with like. The building blocks live
in :mod:`imaging.discovery` (case mining, similar cases, prediction, efficacy,
decision support) and :mod:`imaging.learn` (cross-validated classifiers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from imaging import discovery
from imaging.learn import to_jsonable
from imaging.types import Classifier


def case_table(features: pd.DataFrame, *, include_auto: bool = False) -> pd.DataFrame:
    """Long feature rows -> one row per case (``patient_key, volume_key, roi, modality`` + features).

    The feature column name is ``family.feature.aggregation`` (aggregation omitted
    when the feature has none), prefixed by ``filter:<name>.`` for filter response maps.
    """
    need = {"patient_key", "volume_key", "roi_name", "family", "feature", "value"}
    missing = need - set(features.columns)
    if missing:
        raise ValueError(f"features table lacks columns {sorted(missing)}")
    rows = features if include_auto else features[features.get("roi_source", "") != "auto"]
    if rows.empty:
        return pd.DataFrame(columns=["patient_key", "volume_key", "roi", "modality"])
    agg = (rows["aggregation"] if "aggregation" in rows else pd.Series("", index=rows.index)).fillna("").astype(str)
    image = (rows["image"] if "image" in rows else pd.Series("original", index=rows.index)).fillna("original")
    prefix = image.astype(str).map(lambda v: "" if v == "original" else f"{v}.")
    long = rows.assign(roi=rows["roi_name"], feature_id=prefix + rows["family"].astype(str) + "."
                       + rows["feature"].astype(str) + agg.map(lambda a: f".{a}" if a else ""))
    wide = long.pivot_table(index=["patient_key", "volume_key", "roi"], columns="feature_id", values="value",
                            aggfunc="first").reset_index()
    wide.columns.name = None
    modality = long.drop_duplicates("volume_key").set_index("volume_key")["modality"]
    wide.insert(3, "modality", wide["volume_key"].map(modality))
    return wide


def run_discovery(features: pd.DataFrame, clinical: pd.DataFrame | None, *, label_column: str | None,
                  treatment_column: str | None, outcome_column: str | None, classifiers: Sequence[Classifier],
                  cv_folds: int, n_similar: int, random_state: int,
                  models: dict[str, Any] | None = None) -> dict[str, Any]:
    """Case mining, similar cases, prediction, efficacy and decision support per modality.

    Every analysis that the data cannot support (too few cases, no label column...)
    is reported with ``status="skipped"`` and the reason, never silently dropped.
    When ``models`` is a dict, every cross-validated classifier that could be trained is
    put in it as ``"<modality>/<kind>" -> (fitted calibrated pipeline, feature columns)``.
    """
    cases = case_table(features)
    out: dict[str, Any] = {"n_cases": int(len(cases)), "modalities": {}}
    if clinical is not None and not clinical.empty:
        cases = discovery.join_clinical(cases, clinical, key="patient_key", how="left")
    for modality, table in cases.groupby("modality", sort=True):
        table = table.reset_index(drop=True)
        extra = [c for c in (label_column, treatment_column, outcome_column) if c and c in table.columns]
        feats = discovery.numeric_feature_columns(table, exclude=[*extra, "modality"])
        feats = [c for c in feats if table[c].notna().all() and table[c].nunique() > 1]
        res: dict[str, Any] = {"n_cases": int(len(table)), "n_features": len(feats),
                               "cases": table[["patient_key", "volume_key", "roi"]].to_dict("records")}
        if len(table) >= 3 and feats:
            res["mining"] = discovery.mine_cases(table, feature_columns=feats, random_state=random_state).to_dict()
        else:
            res["mining"] = {"status": "skipped", "reason": f"case mining needs >= 3 cases, got {len(table)}"}
        similar = None
        if len(table) >= 2 and feats:
            similar = discovery.similar_cases(table, feature_columns=feats, k=min(n_similar, len(table) - 1),
                                              outcome_columns=[c for c in (label_column, outcome_column)
                                                               if c and c in table.columns])
            res["similar"] = similar.to_dict()
        else:
            res["similar"] = {"status": "skipped", "reason": f"similar cases need >= 2 cases, got {len(table)}"}
        fitted: dict[str, Any] = {}
        if label_column and label_column in table.columns and not feats:
            res["prediction"] = {kind: {"status": "skipped", "reason": "not enough cases for cross-validation: "
                                        f"{len(table)} case(s) and no feature that varies between cases"}
                                 for kind in classifiers}
        elif label_column and label_column in table.columns:
            for kind in classifiers:
                pred = discovery.predict_cases(table, feature_columns=feats, label=label_column, kind=kind,
                                               outer_folds=cv_folds, inner_folds=min(cv_folds, 3),
                                               random_state=random_state)
                fitted[kind] = pred
                res.setdefault("prediction", {})[kind] = pred.to_dict()
                if models is not None and pred.result is not None:
                    models[f"{modality}/{kind}"] = (pred.result.final_model, list(feats))
        else:
            res["prediction"] = {"status": "skipped", "reason": f"no label column {label_column!r} in the clinical table"
                                 if clinical is not None else "no clinical table given"}
        if treatment_column and outcome_column and {treatment_column, outcome_column} <= set(table.columns):
            res["efficacy"] = discovery.evaluate_efficacy(table, treatment=treatment_column, outcome=outcome_column,
                                                          random_state=random_state).to_dict()
        else:
            res["efficacy"] = {"status": "skipped", "reason": "needs treatment and outcome columns in the clinical table"}
        model = next((m for m in fitted.values() if getattr(m, "status", "") == "ok"), None)
        support = []
        for i in range(len(table)):
            support.append(discovery.decision_support(table.iloc[[i]], model=model, similar=similar,
                                                      k=min(n_similar, max(1, len(table) - 1)),
                                                      outcome_column=outcome_column if outcome_column in table.columns
                                                      else None))
        res["decision_support"] = support
        out["modalities"][str(modality)] = res
    return to_jsonable(out)
