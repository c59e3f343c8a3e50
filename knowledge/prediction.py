"""Honest case prediction on a patient-level case base.

Nested cross-validation grouped by patient (:class:`~sklearn.model_selection.StratifiedGroupKFold`):
imputation, scaling and supervised feature selection are steps of one scikit-learn
``Pipeline`` fitted on the training patients of each fold only; the number of selected
features and the regularisation are tuned in the inner folds. The out-of-fold
probabilities give the ROC AUC with a bootstrap interval over patients and a calibration
table. Three feature sets are compared (imaging+clinical, imaging, clinical), and a
label-permutation null runs the same whole procedure on shuffled labels.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn import config_context
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_selection import SelectKBest, f_classif
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

from knowledge.learn import single_threaded

#: classifiers of the patient-level models
MODEL_KINDS = ("logistic_regression", "svm", "random_forest", "decision_tree")


def is_imaging(column: str) -> bool:
    """Imaging columns are named ``<MOD>:<ROIROLE>:<feature>``."""
    return ":" in column and not column.startswith("clin:")


def prefilter(table: pd.DataFrame, columns: list[str], *, max_missing: float = 0.5,
              max_corr: float = 0.98) -> list[str]:
    """Label-free reduction of imaging columns (safe outside the folds: it never sees the label).

    Drops columns missing in more than ``max_missing`` of the patients, constant columns,
    and near-duplicates (|Spearman r| > ``max_corr`` with an earlier kept column).
    """
    if not columns:
        return []
    x = table[columns].to_numpy(dtype=float)
    x = np.where(np.isfinite(x), x, np.nan)
    present = ~np.isnan(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanmin(x, axis=0), np.nanmax(x, axis=0)
        med = np.nanmedian(x, axis=0)
    keep = (present.mean(axis=0) >= 1 - max_missing) & (hi > lo)
    names = [c for c, k in zip(columns, keep, strict=True) if k]
    x = np.where(present, x, med)[:, keep]
    if x.shape[1] == 0:
        return []
    from scipy.stats import rankdata

    ranks = rankdata(x, axis=0)
    sd = ranks.std(axis=0)
    z = (ranks - ranks.mean(axis=0)) / np.where(sd > 0, sd, 1.0) / math.sqrt(len(ranks))
    corr = np.abs(z.T @ z) > max_corr
    np.fill_diagonal(corr, False)
    dropped = np.zeros(z.shape[1], dtype=bool)
    later = np.arange(z.shape[1])
    for j in range(z.shape[1]):
        if not dropped[j]:
            dropped |= corr[j] & (later > j)
    return [c for c, d in zip(names, dropped, strict=True) if not d]


class _SelectK(SelectKBest):
    """SelectKBest whose ``k`` is capped by the number of columns (sklearn refuses k > n_features)."""

    k: Any

    def _check_params(self, X: Any, y: Any) -> None:
        if not isinstance(self.k, str) and self.k > X.shape[1]:
            self.k = X.shape[1]
        super()._check_params(X, y)


class ImputeScale(BaseEstimator, TransformerMixin):
    """Median imputation then standardisation, learnt on the training rows only (vectorised).

    Non-finite values count as missing; a column missing in every training row becomes 0.
    """

    def fit(self, X: Any, y: Any = None) -> ImputeScale:
        arr = np.asarray(X, dtype=float)
        arr = np.where(np.isfinite(arr), arr, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(arr, axis=0)
        self.median_ = np.where(np.isfinite(med), med, 0.0)
        filled = np.where(np.isnan(arr), self.median_, arr)
        self.mean_ = filled.mean(axis=0)
        sd = filled.std(axis=0)
        self.scale_ = np.where(sd > 0, sd, 1.0)
        return self

    def transform(self, X: Any) -> np.ndarray:
        arr = np.asarray(X, dtype=float)
        arr = np.where(np.isfinite(arr), arr, np.nan)
        return (np.where(np.isnan(arr), self.median_, arr) - self.mean_) / self.scale_


def build_pipeline(kind: str, *, random_state: int) -> tuple[Pipeline, dict[str, list[Any]]]:
    """Impute + scale -> select k best (ANOVA F) -> classifier, and its inner-CV grid."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"classifier must be one of {MODEL_KINDS}, got {kind!r}")
    if kind == "logistic_regression":
        model: Any = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000)
        grid: dict[str, list[Any]] = {"model__C": [0.1, 1.0]}
    elif kind == "svm":
        model = SVC(kernel="rbf", C=1.0, gamma="scale", class_weight="balanced",
                    random_state=random_state)
        grid = {"model__C": [1.0, 10.0]}
    elif kind == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        model = RandomForestClassifier(n_estimators=100, min_samples_leaf=2, class_weight="balanced",
                                       random_state=random_state, n_jobs=1)
        grid = {}
    else:
        model = DecisionTreeClassifier(max_depth=3, class_weight="balanced", random_state=random_state)
        grid = {"model__max_depth": [2, 3]}
    pipe = Pipeline([("prepare", ImputeScale()), ("select", _SelectK(f_classif, k=10)), ("model", model)])
    grid = {"select__k": [3, 10], **grid}
    return pipe, grid


def _score(model: Any, X: np.ndarray) -> np.ndarray:
    if hasattr(model, "predict_proba"):
        return model.predict_proba(X)[:, 1]
    d = model.decision_function(X)
    return 1.0 / (1.0 + np.exp(-d))


def auc_score(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney, ties count 1/2); NaN when one class is absent."""
    y = np.asarray(y).astype(bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return math.nan
    from scipy.stats import rankdata

    r = rankdata(score)
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def bootstrap_auc(y: np.ndarray, score: np.ndarray, *, n_bootstrap: int, random_state: int,
                  confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC, resampling patients (resamples with one class skipped)."""
    if n_bootstrap <= 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(random_state)
    n = len(y)
    vals = []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, n, n)
        a = auc_score(y[idx], score[idx])
        if not math.isnan(a):
            vals.append(a)
    if not vals:
        return (math.nan, math.nan)
    lo = (1 - confidence) / 2
    return (float(np.quantile(vals, lo)), float(np.quantile(vals, 1 - lo)))


def calibration_table(y: np.ndarray, proba: np.ndarray, *, n_bins: int = 5) -> dict[str, list[float]]:
    """Quantile-binned reliability table: mean predicted vs observed fraction positive, per bin."""
    order = np.argsort(proba, kind="stable")
    bins = [b for b in np.array_split(order, min(n_bins, max(1, len(proba) // 3))) if len(b)]
    return {"mean_predicted": [float(np.mean(proba[b])) for b in bins],
            "fraction_positive": [float(np.mean(y[b])) for b in bins],
            "count": [int(len(b)) for b in bins],
            "upper_edge": [float(np.max(proba[b])) for b in bins]}


def roc_points(y: np.ndarray, score: np.ndarray) -> dict[str, list[float]]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, score)
    return {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]}


@dataclass
class CVOutcome:
    """Out-of-fold results of one feature set."""

    columns: list[str]
    oof: np.ndarray
    auc: float
    selected: list[str] = field(default_factory=list)
    selection_counts: dict[str, int] = field(default_factory=dict)
    chosen_params: list[dict[str, Any]] = field(default_factory=list)

    def most_chosen(self) -> dict[str, Any]:
        """The hyper-parameters the inner searches chose most often (ties: the first fold's)."""
        if not self.chosen_params:
            return {}
        keys = [tuple(sorted(p.items())) for p in self.chosen_params]
        best = max(keys, key=keys.count)
        return dict(best)


def _splits(y: np.ndarray, groups: np.ndarray, n_folds: int, random_state: int) -> list[tuple[np.ndarray, ...]]:
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=random_state)
    return list(splitter.split(np.zeros(len(y)), y, groups))


def feasible_folds(y: np.ndarray, requested: int) -> int:
    """Folds such that every class has a member in each test fold (>= 2 or 0 when impossible)."""
    counts = np.bincount(y.astype(int), minlength=2)
    return int(min(requested, counts.min()))


@single_threaded
def nested_oof(X: pd.DataFrame, y: np.ndarray, groups: np.ndarray, *, kind: str, outer_folds: int,
               inner_folds: int, random_state: int, fixed_params: dict[str, Any] | None = None) -> CVOutcome:
    """Out-of-fold probabilities of the nested-CV pipeline.

    Parameters
    ----------
    X : DataFrame, shape (n_patients, n_columns)
    y : ndarray of 0/1, shape (n_patients,)
    groups : ndarray, shape (n_patients,)
        Patient keys (several rows of one patient never straddle a split).
    fixed_params : dict or None
        Pipeline parameters to use instead of the inner search (the permutation null).
    """
    n_out = feasible_folds(y, outer_folds)
    if n_out < 2:
        raise ValueError(f"cross-validation needs >= 2 patients of each class, got {np.bincount(y, minlength=2)}")
    oof = np.full(len(y), np.nan)
    counts: dict[str, int] = {}
    columns = list(X.columns)
    arr = X.to_numpy(dtype=float)
    chosen = []
    with config_context(assume_finite=True, skip_parameter_validation=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        for i, (tr, te) in enumerate(_splits(y, groups, n_out, random_state)):
            model = _fit(arr[tr], y[tr], groups[tr], kind=kind, inner_folds=inner_folds,
                         random_state=random_state + i, fixed_params=fixed_params)
            oof[te] = _score(model, arr[te])
            chosen.append(getattr(model, "chosen_params_", {}))
            for c in _selected(model, columns):
                counts[c] = counts.get(c, 0) + 1
    return CVOutcome(columns=columns, oof=oof, auc=auc_score(y, oof), selection_counts=counts,
                     chosen_params=chosen)


def _fit(X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, kind: str, inner_folds: int,
         random_state: int, fixed_params: dict[str, Any] | None = None) -> Any:
    pipe, grid = build_pipeline(kind, random_state=random_state)
    if fixed_params is not None:
        pipe.set_params(**fixed_params)
        pipe.fit(X, y)
        pipe.chosen_params_ = dict(fixed_params)
        return pipe
    n_in = feasible_folds(y, inner_folds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        if n_in >= 2 and grid:
            search = GridSearchCV(pipe, grid, scoring="roc_auc", refit=True, error_score=0.5,
                                  cv=StratifiedGroupKFold(n_splits=n_in, shuffle=True, random_state=random_state))
            search.fit(X, y, groups=groups)
            best = search.best_estimator_
            best.chosen_params_ = dict(search.best_params_)
            return best
        pipe.fit(X, y)
        pipe.chosen_params_ = {}
        return pipe


def _selected(model: Any, columns: list[str]) -> list[str]:
    mask = model.named_steps["select"].get_support()
    return [c for c, m in zip(columns, mask, strict=True) if m]


def fit_final(X: pd.DataFrame, y: np.ndarray, groups: np.ndarray, *, kind: str, inner_folds: int,
              random_state: int) -> tuple[Any, list[str]]:
    """The pipeline refitted on every patient (for placing new patients), and its selected columns."""
    with config_context(assume_finite=True, skip_parameter_validation=True):
        model = _fit(X.to_numpy(dtype=float), y, groups, kind=kind, inner_folds=inner_folds,
                     random_state=random_state)
    return model, _selected(model, list(X.columns))


def permutation_null(X: pd.DataFrame, y: np.ndarray, groups: np.ndarray, *, observed: float, kind: str,
                     outer_folds: int, inner_folds: int, n_permutations: int, random_state: int,
                     fixed_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Out-of-fold AUC of the same procedure on shuffled labels; p = (1 + #null >= observed) / (1 + n).

    Feature selection and scaling stay inside the folds for every permutation; with
    ``fixed_params`` (the configuration the observed inner searches chose most often) the
    inner hyper-parameter search is skipped to keep hundreds of permutations affordable.
    """
    if n_permutations <= 0:
        return {"status": "skipped", "reason": "n_permutations is 0", "n_permutations": 0}
    rng = np.random.default_rng(random_state + 7919)
    aucs = []
    for i in range(n_permutations):
        yp = rng.permutation(y)
        res = nested_oof(X, yp, groups, kind=kind, outer_folds=outer_folds, inner_folds=inner_folds,
                         random_state=random_state + 1 + i, fixed_params=fixed_params)
        aucs.append(res.auc)
    arr = np.array([a for a in aucs if not math.isnan(a)])
    p = (1 + int(np.sum(arr >= observed))) / (1 + len(arr)) if len(arr) else math.nan
    return {"auc_mean": float(np.mean(arr)) if len(arr) else math.nan,
            "auc_ci": [float(np.quantile(arr, 0.025)), float(np.quantile(arr, 0.975))] if len(arr) else
            [math.nan, math.nan], "p_value": float(p), "n_permutations": int(len(arr)),
            "fixed_params": {k: v for k, v in (fixed_params or {}).items()}}


def model_summary(name: str, y: np.ndarray, keys: list[str], res: CVOutcome, *, n_bootstrap: int,
                  random_state: int, selected: list[str]) -> dict[str, Any]:
    """The contract's per-model dict (AUC + CI, accuracy, Brier, ROC, calibration, OOF, selected features)."""
    p = res.oof
    return {"auc": res.auc, "auc_ci": list(bootstrap_auc(y, p, n_bootstrap=n_bootstrap, random_state=random_state)),
            "accuracy": float(np.mean((p >= 0.5) == y)), "brier": float(np.mean((p - y) ** 2)),
            "roc": roc_points(y, p), "calibration": calibration_table(y, p),
            "oof": {k: float(v) for k, v in zip(keys, p, strict=True)},
            "selected_features": selected, "n_columns": len(res.columns),
            "selection_frequency": {c: n for c, n in sorted(res.selection_counts.items(), key=lambda kv: -kv[1])[:20]},
            "name": name}
