"""Per-patient decision support, and placing new patients against a stored case base.

Every patient gets: the (out-of-fold, or for a new patient: stored-model) risk of the label
with an interval (the Wilson interval of the observed outcome rate among stored patients in
the same out-of-fold risk quantile bin), the decision-tree rule that fires (en/zh), the most
similar stored patients with their outcomes, the survival risk group, missing modalities and
QC flags. :func:`place_cases` fits everything on the stored patients only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from knowledge import cbr, prediction, rules
from knowledge._common import _wilson
from knowledge.learn import to_jsonable
from knowledge.roles import CaseSchema

KEY = "patient_key"


def risk_bins(oof: pd.Series | None, y: np.ndarray | None, keys: list[str], *, n_bins: int = 5) -> list[dict]:
    """Quantile bins of the out-of-fold risk with the observed outcome count per bin."""
    if oof is None or y is None:
        return []
    lab = {k: v for k, v in zip(keys, y, strict=True) if v >= 0}
    pairs = sorted((float(p), lab[k]) for k, p in oof.items() if k in lab and np.isfinite(p))
    if not pairs:
        return []
    chunks = [c for c in np.array_split(np.arange(len(pairs)), min(n_bins, max(1, len(pairs) // 3))) if len(c)]
    return [{"lo": pairs[c[0]][0], "hi": pairs[c[-1]][0], "n": len(c), "events": int(sum(pairs[i][1] for i in c))}
            for c in chunks]


def risk_interval(risk: float, bins: list[dict]) -> list[float] | None:
    """Wilson 95% interval of the outcome rate in the risk bin nearest to ``risk``."""
    if not bins or risk is None or not np.isfinite(risk):
        return None
    best = min(bins, key=lambda b: 0.0 if b["lo"] <= risk <= b["hi"] else min(abs(risk - b["lo"]), abs(risk - b["hi"])))
    lo, hi = _wilson(best["events"], best["n"], 0.95)
    return [float(lo), float(hi)]


def _fired(tree: dict[str, Any] | None, row: pd.Series) -> dict[str, list[str]]:
    if tree is None:
        return {"en": [], "zh": []}
    values = row.reindex(tree["columns"]).astype(float)
    values = values.where(np.isfinite(values)).fillna(tree["median"])
    idx = rules.fired_rules(tree["result"]["rules"], values)
    return {lang: [tree["result"]["text"][lang][i] for i in idx] for lang in ("en", "zh")}


def patient_entries(table: pd.DataFrame, *, keys: list[str], oof: pd.Series | None, calibration_from: Any,
                    y: np.ndarray | None, tree: dict[str, Any] | None, neighbours: dict[str, list],
                    survival_groups: dict[str, str], missing: dict[str, list[str]], label: str | None,
                    bins: list[dict] | None = None) -> dict[str, Any]:
    """The per-patient dicts of the contract (risk, risk_ci, rules_fired, similar, survival_group, ...)."""
    bins = bins if bins is not None else risk_bins(oof, y, keys)
    imaging = [c for c in table.columns if prediction.is_imaging(str(c))]
    out = {}
    for i, key in enumerate(keys):
        row = table.iloc[i]
        risk = float(oof[key]) if oof is not None and key in oof.index and np.isfinite(oof[key]) else None
        flags = [f"no {m} images" for m in missing.get(key, [])]
        if imaging and row[imaging].astype(float).isna().mean() > 0.5:
            flags.append("more than half of the imaging features are missing")
        if label is not None and (y is None or y[i] < 0):
            flags.append(f"label {label} unknown")
        out[key] = {"risk": risk, "risk_ci": risk_interval(risk, bins) if risk is not None else None,
                    "rules_fired": _fired(tree, row), "similar": neighbours.get(key, []),
                    "survival_group": survival_groups.get(key), "missing_modalities": missing.get(key, []),
                    "qc_flags": flags}
    return out


def place_cases(new_cases: pd.DataFrame, stored: pd.DataFrame, schema: CaseSchema, *, k_similar: int = 3,
                label: str | None = None, random_state: int = 0, classifier: str = "logistic_regression",
                outer_folds: int = 5, inner_folds: int = 3, max_tree_depth: int = 3) -> dict[str, Any]:
    """Place new patients against a stored case base without training anything on them.

    Parameters
    ----------
    new_cases : DataFrame
        New patients (``patient_key`` + imaging/``clin:`` columns; missing columns count as missing values).
    stored : DataFrame
        The stored case base (:attr:`CaseBase.table`) with the label; models, standardisation,
        risk bins and the survival-group threshold come from it only.
    schema : CaseSchema
    k_similar, random_state, classifier, outer_folds, inner_folds, max_tree_depth
        As in :func:`knowledge.discover`.

    Returns
    -------
    dict
        ``{"patients": {key: {...per-patient dict...}}, "model": {...}}``.
    """
    from knowledge.analysis import _modalities, _tree, model_inputs, resolve_label

    for name, frame in (("new_cases", new_cases), ("stored", stored)):
        if not isinstance(frame, pd.DataFrame) or KEY not in frame.columns:
            raise ValueError(f"{name} must be a DataFrame with a {KEY!r} column")
    if k_similar < 1:
        raise ValueError(f"k_similar must be >= 1, got {k_similar}")
    imaging, clinical = model_inputs(stored, schema)
    model_inputs(new_cases, schema)
    label = resolve_label(stored, schema, label)
    if label is None:
        raise ValueError("the stored case base has no label column declared in the schema")
    if new_cases.empty:
        return {"patients": {}, "model": {"status": "skipped", "classifier": classifier, "label": label,
                                          "reason": "no new patient with imaging features to place"}}
    stored = stored.copy()
    stored[KEY] = stored[KEY].astype(str)
    new = new_cases.copy()
    new[KEY] = new[KEY].astype(str)
    yv = stored[label].to_numpy(dtype=float)
    lab = ~np.isnan(yv)
    sub, y = stored[lab].reset_index(drop=True), yv[lab].astype(int)
    img_cols = prediction.prefilter(sub, imaging)
    cols = img_cols + clinical
    for c in cols:
        if c not in new.columns:
            new[c] = np.nan
    groups = sub[KEY].to_numpy()
    res = prediction.nested_oof(sub[cols], y, groups, kind=classifier, outer_folds=outer_folds,
                                inner_folds=inner_folds, random_state=random_state)
    model, selected = prediction.fit_final(sub[cols], y, groups, kind=classifier, inner_folds=inner_folds,
                                           random_state=random_state)
    risk = prediction._score(model, new[cols].to_numpy(dtype=float))
    oof = pd.Series(res.oof, index=sub[KEY])
    bins = risk_bins(oof, y, sub[KEY].tolist())
    threshold = float(np.median(res.oof))
    tree = _tree(sub, y, selected, label, max_tree_depth, random_state) if selected else None
    sim_cols = selected or cols
    outcomes_cols = [c for c in (label, schema.event, schema.time) if c and c in stored.columns]
    neigh = cbr.neighbours(new, new[KEY].tolist(), sub, sub[KEY].tolist(), sim_cols,
                           k=min(k_similar, len(sub)), outcomes=sub.set_index(KEY)[outcomes_cols],
                           exclude_self=False)
    _, missing = _modalities(new, [c for c in new.columns if prediction.is_imaging(str(c)) and c in imaging])
    new_risk = pd.Series(risk, index=new[KEY])
    groups_sv = {k: ("high" if r > threshold else "low") for k, r in new_risk.items()}
    patients = patient_entries(new, keys=new[KEY].tolist(), oof=new_risk, calibration_from=None, y=None, tree=tree,
                               neighbours=neigh, survival_groups=groups_sv, missing=missing, label=None, bins=bins)
    return to_jsonable({"patients": patients, "model": {
        "classifier": classifier, "label": label, "n_stored": int(len(sub)), "selected_features": selected,
        "stored_oof_auc": res.auc, "risk_threshold": threshold,
        "note": "models, standardisation and thresholds fitted on the stored patients only"}})
