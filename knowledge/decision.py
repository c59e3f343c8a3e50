"""Per-case classifier prediction with graceful degradation, and per-case decision support summaries."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from knowledge._common import (
    KEY_COLUMNS,
    _check_column,
    _check_columns,
    _check_pos_int,
    _check_table,
    _outcome_kind,
    _ResultMixin,
    _wilson,
    case_key_columns,
)
from knowledge.cards import fitted_pipeline
from knowledge.crossval import CVResult, nested_cross_validate
from knowledge.learn import InsufficientDataError, _py, single_threaded, to_jsonable
from knowledge.similar import SimilarCasesResult
from knowledge.types import Classifier

# ======================================================== classifier case prediction


@dataclass
class CasePredictionResult(_ResultMixin):
    """Cross-validated classifier for a case label, or why it could not be trained."""

    status: str
    reason: str
    label: str = ""
    kind: str = ""
    n_labelled: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    grouped_by_patient: bool = False
    result: CVResult | None = None

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.result is not None:
            from knowledge.cards import model_card

            out["model_card"] = model_card(self.result)
        return out


@single_threaded
def predict_cases(
    table: pd.DataFrame,
    *,
    feature_columns: Sequence[str],
    label: str,
    kind: Classifier = "svm",
    outer_folds: int = 10,
    inner_folds: int = 5,
    param_grid: dict[str, list[Any]] | None = None,
    random_state: int,
    calibrate: bool = True,
    group_by_patient: bool = True,
    adapt_folds: bool = True,
    pos_label: Any = None,
    n_jobs: int = 1,
) -> CasePredictionResult:
    """Case prediction: nested cross-validated classifier on the labelled cases.

    Unlabelled cases are dropped. When some patient has several cases and
    ``group_by_patient``, folds keep each patient's cases together. With ``adapt_folds``
    the fold counts shrink to what the class sizes allow; when even 2 folds are impossible
    the result is ``status="skipped"`` with the reason (e.g. ``not enough labelled cases
    for cross-validation: class 'a' has 2 case(s) ...``) instead of an exception.
    """
    _check_table(table)
    _check_column(table, label, "label")
    cols = _check_columns(table, feature_columns, "feature_columns")
    if not cols:
        raise ValueError("feature_columns must name at least one column")
    case_key_columns(table)
    data = table[table[label].notna()]
    y = data[label]
    counts = {str(k): int(v) for k, v in y.value_counts(sort=False).items()}
    res = CasePredictionResult(
        status="skipped", reason="", label=label, kind=kind, n_labelled=len(data), class_counts=counts
    )
    if len(counts) < 2:
        res.reason = f"case prediction needs two or more label classes among labelled cases: got {counts}"
        return res
    if _outcome_kind(y, "auto") == "continuous":
        res.reason = (
            f"label {label!r} looks continuous ({len(counts)} distinct values); classifier case prediction "
            f"needs class labels (use predict_from_similar for a continuous outcome)"
        )
        res.class_counts = {}
        return res
    groups = None
    if group_by_patient and data["patient_key"].duplicated().any():
        groups = data["patient_key"].to_numpy()
        res.grouped_by_patient = True
    try:
        cv = nested_cross_validate(
            data[cols],
            y.to_numpy(),
            kind=kind,
            outer_folds=outer_folds,
            inner_folds=inner_folds,
            param_grid=param_grid,
            random_state=random_state,
            calibrate=calibrate,
            groups=groups,
            pos_label=pos_label,
            adapt_folds=adapt_folds,
            n_jobs=n_jobs,
        )
    except InsufficientDataError as exc:
        res.reason = str(exc)
        return res
    res.result = cv
    res.status = "ok"
    notes = list(cv.notes)
    if len(data) < 30:
        notes.append(f"fewer than 30 labelled cases ({len(data)}): figures are not reliable")
    res.reason = "; ".join(notes)
    return res




# =================================================================== decision support


@single_threaded
def decision_support(
    case_row: pd.Series | pd.DataFrame,
    *,
    model: CVResult | CasePredictionResult | None,
    similar: SimilarCasesResult | None = None,
    k: int = 5,
    outcome_column: str | None = None,
    n_driving_features: int = 5,
    min_training_cases: int = 30,
    interval_cases: int | None = None,
    confidence: float = 0.95,
    extrapolation_z: float = 4.0,
) -> dict[str, Any]:
    """Per-case decision-support summary (plain data for the report).

    Parameters
    ----------
    case_row : Series or one-row DataFrame
        The case: key columns and the model's feature columns (missing features are
        imputed with the training medians and flagged).
    model : CVResult, CasePredictionResult or None
        A cross-validated classifier (:func:`predict_cases` / ``nested_cross_validate``).
    similar : SimilarCasesResult or None
        Reference cases (:func:`similar_cases` with ``outcome_columns``).
    k : int
        Similar cases to list.
    outcome_column : str or None
        Outcome column of ``similar`` whose values are summarised (default: its first one).
    n_driving_features : int
        Features listed as driving the prediction.
    min_training_cases : int
        Below this cohort size a caveat says the figures are not reliable.
    interval_cases : int or None
        Size of the probability neighbourhood for the calibrated interval (default
        ``max(10, n_cases // 10)``).
    confidence : float
        Level of the probability interval.
    extrapolation_z : float
        Features further than this many training SDs from the training mean are flagged.

    Returns
    -------
    dict
        ``status`` ("ok", "partial", "skipped"), ``reason``, ``case`` (keys),
        ``prediction`` (predicted label, probability, calibrated interval = Wilson interval
        of the observed positive rate among the ``interval_cases`` cross-validated cases whose
        out-of-fold probability is closest to this case's; range over the outer-fold models;
        model's cross-validated metrics), ``similar_cases`` (list with distances and known
        outcomes, outcome summary), ``driving_features`` (method and per-feature
        contributions) and ``caveats`` (list of str). JSON-serialisable.
    """
    row = case_row.to_frame().T if isinstance(case_row, pd.Series) else case_row
    if not isinstance(row, pd.DataFrame) or len(row) != 1:
        raise ValueError("case_row must be a Series or a one-row DataFrame")
    _check_pos_int("k", k)
    _check_pos_int("n_driving_features", n_driving_features)
    _check_pos_int("min_training_cases", min_training_cases)
    if not (isinstance(confidence, float) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be a float in (0, 1), got {confidence!r}")
    if interval_cases is not None:
        _check_pos_int("interval_cases", interval_cases, 2)
    keys = {c: _py(row[c].iloc[0]) for c in KEY_COLUMNS if c in row.columns}
    caveats: list[str] = []
    cv: CVResult | None
    model_reason = ""
    if isinstance(model, CasePredictionResult):
        cv = model.result
        model_reason = model.reason if cv is None else ""
    elif model is None or isinstance(model, CVResult):
        cv = model
    else:
        raise TypeError(f"model must be a CVResult, CasePredictionResult or None, got {type(model).__name__}")
    if similar is not None and not isinstance(similar, SimilarCasesResult):
        raise TypeError(f"similar must be a SimilarCasesResult or None, got {type(similar).__name__}")

    prediction: dict[str, Any]
    driving: dict[str, Any]
    if cv is None:
        prediction = {"status": "skipped", "reason": model_reason or "no trained model"}
        driving = {"status": "skipped", "reason": prediction["reason"], "features": []}
    else:
        prediction, driving, pcaveats = _model_prediction(
            row, cv, n_driving_features, interval_cases, confidence, extrapolation_z
        )
        caveats.extend(pcaveats)
        if cv.n_cases < min_training_cases:
            caveats.append(
                f"fewer than {min_training_cases} training cases ({cv.n_cases}): figures are not reliable"
            )

    sim: dict[str, Any]
    if similar is None:
        sim = {"status": "skipped", "reason": "no reference cases given", "cases": []}
    elif similar.status != "ok":
        sim = {"status": "skipped", "reason": similar.reason, "cases": []}
    else:
        found = similar.query(row, k=k)
        oc = outcome_column or (similar.outcome_columns[0] if similar.outcome_columns else None)
        if oc is not None and oc not in similar.outcome_columns:
            raise ValueError(
                f"outcome_column {oc!r} is not among the similar cases' outcome columns {similar.outcome_columns}"
            )
        sim = {"status": "ok", "reason": "", "k": int(len(found)), "metric": similar.metric, "cases": found}
        if oc is not None:
            known = found[oc].dropna()
            sim["outcome_column"] = oc
            sim["outcome_counts"] = {str(v): int(c) for v, c in known.value_counts(sort=True).items()}
            sim["n_known_outcomes"] = int(known.size)
            if known.size and prediction.get("status") == "ok" and "predicted_label" in prediction:
                majority = known.value_counts().idxmax()
                agree = str(majority) == str(prediction["predicted_label"])
                sim["majority_outcome"] = _py(majority)
                if not agree:
                    caveats.append(
                        f"the most similar cases mostly had {oc}={majority!r}, unlike the model's "
                        f"prediction {prediction['predicted_label']!r}"
                    )
        if len(found) < k:
            caveats.append(f"only {len(found)} similar case(s) available (asked for {k})")
        if found["same_patient"].any():
            caveats.append("some similar cases are other ROIs/volumes of the same patient")

    caveats.append(
        "research use only: not a validated medical device; the figures support, and do not replace, clinical judgement"
    )
    parts_ok = [prediction.get("status") == "ok", sim.get("status") == "ok"]
    status = "ok" if all(parts_ok) else ("partial" if any(parts_ok) else "skipped")
    reasons = [f"prediction: {prediction['reason']}" for _ in [0] if prediction.get("status") != "ok"]
    reasons += [f"similar cases: {sim['reason']}" for _ in [0] if sim.get("status") != "ok"]
    out = {
        "status": status,
        "reason": "; ".join(reasons),
        "case": keys,
        "prediction": prediction,
        "similar_cases": sim,
        "driving_features": driving,
        "caveats": caveats,
    }
    result = to_jsonable(out)
    assert isinstance(result, dict)
    return result


def _model_prediction(
    row: pd.DataFrame,
    cv: CVResult,
    n_driving: int,
    interval_cases: int | None,
    confidence: float,
    extrapolation_z: float,
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    caveats: list[str] = []
    feats = cv.feature_names
    absent = [f for f in feats if f not in row.columns]
    x = row.reindex(columns=feats)
    x = x.apply(pd.to_numeric, errors="coerce").astype(float)
    missing = [f for f in feats if pd.isna(x[f].iloc[0])]
    if missing:
        listed = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        caveats.append(
            f"{len(missing)} feature(s) missing for this case, imputed with training medians: {listed}"
        )
    if absent and len(absent) == len(feats):
        reason = "the case has none of the model's features"
        return (
            {"status": "skipped", "reason": reason},
            {"status": "skipped", "reason": reason, "features": []},
            caveats,
        )
    sd = cv.feature_stds.replace(0, np.nan)
    z = ((x.iloc[0] - cv.feature_means) / sd).abs()
    far = z[z > extrapolation_z].sort_values(ascending=False)
    if len(far):
        caveats.append(
            f"{len(far)} feature(s) lie more than {extrapolation_z:g} SD outside the training cases "
            f"(extrapolation): {', '.join(map(str, far.index[:5]))}"
        )
    final = cv.final_model
    classes = np.array(cv.classes, dtype=object)
    pred_label = _py(final.predict(x)[0])
    pred: dict[str, Any] = {
        "status": "ok",
        "reason": "",
        "model": cv.kind,
        "classes": cv.classes,
        "positive_label": cv.positive_label,
        "predicted_label": pred_label,
        "cross_validated": {
            "mean": cv.mean,
            "std": cv.std,
            "outer_folds": cv.outer_folds,
            "nested": cv.nested,
        },
        "n_training_cases": cv.n_cases,
        "class_counts": {str(c): v for c, v in cv.class_counts.items()},
    }
    has_proba = cv.scores_are_probabilities
    if has_proba:
        proba = final.predict_proba(x)[0]
        model_classes = [_py(c) for c in getattr(final, "classes_", classes)]
        by_class = {str(c): float(p) for c, p in zip(model_classes, proba, strict=True)}
        pred["probabilities"] = by_class
        fold_p = np.array([m.predict_proba(x)[0] for m in cv.fold_models])
        if len(cv.classes) == 2:
            j = model_classes.index(cv.positive_label)
            p_pos = float(proba[j])
            pred["probability"] = p_pos
            pred["fold_model_range"] = (float(fold_p[:, j].min()), float(fold_p[:, j].max()))
            if cv.oof_proba is not None:
                oof = cv.oof_score
                m = interval_cases or max(10, cv.n_cases // 10)
                m = min(m, oof.size)
                near = np.argsort(np.abs(oof - p_pos), kind="stable")[:m]
                y_true = cv.labels
                events = int(np.sum(y_true[near] == cv.positive_label))
                lo, hi = _wilson(events, m, confidence)
                pred["interval"] = {
                    "low": lo,
                    "high": hi,
                    "confidence": confidence,
                    "observed_rate": events / m,
                    "n_cases": int(m),
                    "neighbourhood_probability_range": (float(oof[near].min()), float(oof[near].max())),
                    "method": (
                        "Wilson interval of the observed rate of the positive class among the "
                        f"{m} cross-validated cases whose out-of-fold probability is closest to this case's"
                    ),
                }
        else:
            pred["fold_model_range"] = {
                str(c): (float(fold_p[:, i].min()), float(fold_p[:, i].max()))
                for i, c in enumerate(model_classes)
            }
        spread = np.ptp(fold_p, axis=0).max()
        if spread > 0.3:
            caveats.append(f"the outer-fold models disagree on this case (probability spread {spread:.2f})")
    else:
        caveats.append("the model was not calibrated: no probability is given")
    driving = _driving_features(final, x, cv, n_driving, pred_label)
    if cv.mean.get("roc_auc", math.nan) < 0.7:
        caveats.append(f"weak cross-validated discrimination (ROC AUC {cv.mean.get('roc_auc'):.2f})")
    smallest = min(cv.class_counts.values())
    if smallest < 10:
        caveats.append(f"the smallest class has only {smallest} training case(s)")
    if cv.notes:
        caveats.extend(f"validation: {n}" for n in cv.notes)
    return pred, driving, caveats


def _driving_features(
    final: Any, x: pd.DataFrame, cv: CVResult, n_driving: int, pred_label: Any
) -> dict[str, Any]:
    """Per-case feature contributions.

    Logistic regression: coefficient x standardised value (exact additive log-odds terms
    relative to the average training case). Other models: occlusion - change of the
    predicted-class probability when the feature is set to its training median.
    """
    pipe = fitted_pipeline(final)
    clf = pipe.named_steps["clf"]
    feats = cv.feature_names
    if cv.kind == "logistic_regression" and hasattr(clf, "coef_"):
        zx = pipe[:-1].transform(x)[0]
        coef = clf.coef_
        if coef.shape[0] == 1:
            sign = 1.0 if pred_label == _py(clf.classes_[1]) else -1.0
            contrib = sign * coef[0] * zx
        else:
            j = list(clf.classes_).index(pred_label)
            contrib = coef[j] * zx
        method = (
            "logistic regression: coefficient x standardised value (log-odds towards the predicted class)"
        )
        values = contrib
    elif cv.scores_are_probabilities:
        medians = pipe.named_steps["impute"].statistics_
        xi = pipe.named_steps["impute"].transform(x)[0]
        batch = np.repeat(xi[None, :], len(feats), axis=0)
        batch[np.arange(len(feats)), np.arange(len(feats))] = medians
        classes = [_py(c) for c in final.classes_]
        j = classes.index(pred_label)
        base = final.predict_proba(pd.DataFrame(xi[None, :], columns=feats))[0, j]
        occl = final.predict_proba(pd.DataFrame(batch, columns=feats))[:, j]
        values = base - occl
        method = "occlusion: predicted-class probability minus that with the feature at its training median"
    else:
        return {"status": "skipped", "reason": "no probabilities and no coefficients", "features": []}
    order = np.argsort(-np.abs(values), kind="stable")[:n_driving]
    xv = x.iloc[0]
    features = [
        {"feature": feats[i], "value": _py(xv[feats[i]]), "contribution": float(values[i])} for i in order
    ]
    return {"status": "ok", "reason": "", "method": method, "features": features}
