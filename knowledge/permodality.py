"""Per-modality knowledge discovery over the per-ROI case table (the stage before the patient-level analysis).

One analysis per modality: case mining, similar cases, classifier prediction, efficacy and
decision support (:mod:`knowledge.mining`, :mod:`knowledge.similar`, :mod:`knowledge.decision`,
:mod:`knowledge.efficacy`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from knowledge import decision, efficacy, mining
from knowledge import similar as similar_mod
from knowledge._common import numeric_feature_columns
from knowledge.casebase import case_table
from knowledge.learn import to_jsonable
from knowledge.types import Classifier


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
        cases = mining.join_clinical(cases, clinical, key="patient_key", how="left")
    for modality, table in cases.groupby("modality", sort=True):
        table = table.reset_index(drop=True)
        extra = [c for c in (label_column, treatment_column, outcome_column) if c and c in table.columns]
        feats = numeric_feature_columns(table, exclude=[*extra, "modality"])
        feats = [c for c in feats if table[c].notna().all() and table[c].nunique() > 1]
        res: dict[str, Any] = {"n_cases": int(len(table)), "n_features": len(feats),
                               "cases": table[["patient_key", "volume_key", "roi"]].to_dict("records")}
        if len(table) >= 3 and feats:
            res["mining"] = mining.mine_cases(table, feature_columns=feats, random_state=random_state).to_dict()
        else:
            res["mining"] = {"status": "skipped", "reason": f"case mining needs >= 3 cases, got {len(table)}"}
        similar = None
        if len(table) >= 2 and feats:
            similar = similar_mod.similar_cases(table, feature_columns=feats, k=min(n_similar, len(table) - 1),
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
                pred = decision.predict_cases(table, feature_columns=feats, label=label_column, kind=kind,
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
            res["efficacy"] = efficacy.evaluate_efficacy(table, treatment=treatment_column, outcome=outcome_column,
                                                          random_state=random_state).to_dict()
        else:
            res["efficacy"] = {"status": "skipped", "reason": "needs treatment and outcome columns in the clinical table"}
        model = next((m for m in fitted.values() if getattr(m, "status", "") == "ok"), None)
        support = []
        for i in range(len(table)):
            support.append(decision.decision_support(table.iloc[[i]], model=model, similar=similar,
                                                      k=min(n_similar, max(1, len(table) - 1)),
                                                      outcome_column=outcome_column if outcome_column in table.columns
                                                      else None))
        res["decision_support"] = support
        out["modalities"][str(modality)] = res
    return to_jsonable(out)
