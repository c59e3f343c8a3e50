"""(Nested) cross-validation of the classifiers of :mod:`knowledge.learn` (moved from imaging/learn.py)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import (
    confusion_matrix,
    roc_curve,
)
from sklearn.model_selection import GridSearchCV

from knowledge.learn import (
    _TUNING_METRICS,
    InsufficientDataError,
    _bare_params,
    _check_int,
    _check_kind,
    _check_scoring,
    _class_counts,
    _grid_paths,
    _inner_feasible,
    _metrics,
    _min_class_count,
    _outer_splits,
    _positive_label,
    _positive_score,
    _py,
    _splitter,
    _tuning_scorer,
    _unit,
    _validate_xy,
    build_classifier,
    choose_folds,
    default_param_grid,
    single_threaded,
)
from knowledge.types import CalibrationMethod, Classifier

# --------------------------------------------------------------------------- result


@dataclass
class CVResult:
    """Cross-validated performance of one classifier kind, and the final refitted model.

    Attributes
    ----------
    fold_metrics : DataFrame
        One row per outer fold: ``fold``, ``n_test`` and one column per metric.
    mean, std : dict
        Mean and standard deviation (ddof=1) of the per-fold metrics (NaN folds ignored).
    pooled : dict
        Metrics of all out-of-fold predictions pooled together.
    oof_proba : ndarray (n_cases, n_classes) or None
        Out-of-fold (calibrated, when ``calibrated``) probabilities, columns in ``classes`` order.
    oof_score : ndarray
        Out-of-fold positive-class score (binary: probability, or SVM decision value when not
        calibrated) used for the ROC curve; ``(n_cases, n_classes)`` for multi-class.
    roc_curve : DataFrame
        Pooled out-of-fold ROC points ``fpr, tpr, threshold`` (multi-class: one-vs-rest,
        with a ``class`` column).
    calibration_curve : DataFrame or None
        Binary only: ``bin, mean_predicted, observed_fraction, n`` (quantile bins).
    confusion_matrix : DataFrame
        Pooled out-of-fold counts, index = true class, columns = predicted class.
    final_model
        The estimator refitted on all cases (hyper-parameters chosen by inner CV on all
        cases for nested CV), calibrated when ``calibrated``.
    labels : ndarray
        The true labels in case order (for out-of-fold calibration look-ups).
    oof_fold : ndarray of int
        The outer fold in which each case was a test case.
    fold_models : list
        The fitted model of each outer fold (their spread on a new case shows model instability).
    """

    kind: str
    nested: bool
    classes: list[Any]
    positive_label: Any
    feature_names: list[str]
    n_cases: int
    class_counts: dict[Any, int]
    outer_folds: int
    inner_folds: int | None
    random_state: int
    calibrated: bool
    calibration_method: str | None
    scoring: tuple[str, ...]
    refit_metric: str | None
    param_grid: dict[str, list[Any]]
    fold_metrics: pd.DataFrame
    mean: dict[str, float]
    std: dict[str, float]
    pooled: dict[str, float]
    fold_best_params: list[dict[str, Any]]
    best_params: dict[str, Any]
    final_model: Any
    fold_models: list[Any]
    case_index: pd.Index
    labels: np.ndarray
    oof_fold: np.ndarray
    oof_predictions: np.ndarray
    oof_proba: np.ndarray | None
    oof_score: np.ndarray
    scores_are_probabilities: bool
    roc_curve: pd.DataFrame
    calibration_curve: pd.DataFrame | None
    confusion_matrix: pd.DataFrame
    feature_means: pd.Series
    feature_stds: pd.Series
    grouped: bool = False
    n_groups: int | None = None
    notes: list[str] = field(default_factory=list)


def _roc_table(
    y: np.ndarray, score: np.ndarray, classes: np.ndarray, pos_label: Any, is_proba: bool
) -> pd.DataFrame:
    if classes.size == 2:
        fpr, tpr, thr = roc_curve(y == pos_label, score)
        return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thr})
    if not is_proba:
        return pd.DataFrame(columns=["class", "fpr", "tpr", "threshold"])
    parts = []
    for j, c in enumerate(classes):
        fpr, tpr, thr = roc_curve(y == c, score[:, j])
        parts.append(pd.DataFrame({"class": _py(c), "fpr": fpr, "tpr": tpr, "threshold": thr}))
    return pd.concat(parts, ignore_index=True)


def _calibration_table(y_pos: np.ndarray, proba: np.ndarray) -> pd.DataFrame:
    n_bins = int(max(2, min(10, y_pos.size // 20)))
    edges = np.unique(np.quantile(proba, np.linspace(0.0, 1.0, n_bins + 1)))
    if edges.size < 2:
        edges = np.array([proba.min(), proba.max() + 1e-12])
    idx = np.clip(np.searchsorted(edges, proba, side="right") - 1, 0, edges.size - 2)
    rows = []
    for b in range(edges.size - 1):
        sel = idx == b
        if sel.any():
            rows.append(
                {
                    "bin": b,
                    "mean_predicted": float(proba[sel].mean()),
                    "observed_fraction": float(y_pos[sel].mean()),
                    "n": int(sel.sum()),
                }
            )
    return pd.DataFrame(rows)


def _summarise(values: pd.DataFrame, scoring: Sequence[str]) -> tuple[dict[str, float], dict[str, float]]:
    mean = {m: float(np.nanmean(values[m])) if values[m].notna().any() else math.nan for m in scoring}
    std = {
        m: float(np.nanstd(values[m], ddof=1)) if values[m].notna().sum() > 1 else math.nan for m in scoring
    }
    return mean, std


# ----------------------------------------------------------------------------- core


def _fit_calibrated(
    base: Any,
    X: pd.DataFrame,
    y: np.ndarray,
    splits: list[tuple[np.ndarray, np.ndarray]],
    method: str,
) -> CalibratedClassifierCV:
    model = CalibratedClassifierCV(clone(base), method=method, cv=splits, ensemble=False)
    return model.fit(X, y)


def _run_cv_impl(
    features: pd.DataFrame,
    labels: Any,
    *,
    kind: Classifier,
    outer_folds: int,
    inner_folds: int | None,
    grid: Mapping[str, Sequence[Any]] | None,
    params: Mapping[str, Any],
    random_state: int,
    scoring: Sequence[str],
    refit_metric: str | None,
    calibrate: bool,
    calibration_method: str,
    calibration_folds: int,
    groups: Any,
    pos_label: Any,
    class_weight: Any,
    adapt_folds: bool,
    n_jobs: int,
) -> CVResult:
    _check_kind(kind)
    _check_int("random_state", random_state, 0)
    _check_int("outer_folds", outer_folds, 2)
    _check_int("n_jobs", n_jobs, 1)
    nested = grid is not None
    if nested:
        _check_int("inner_folds", inner_folds, 2)
    _check_int("calibration_folds", calibration_folds, 2)
    if not isinstance(calibrate, bool):
        raise TypeError(f"calibrate must be a bool, got {calibrate!r}")
    if calibration_method not in get_args(CalibrationMethod):
        raise ValueError(
            f"calibration_method must be one of {get_args(CalibrationMethod)}, got {calibration_method!r}"
        )
    scoring = _check_scoring(scoring)
    X, y, g = _validate_xy(features, labels, groups)
    classes = np.unique(y)
    pos = _positive_label(classes, pos_label)
    if refit_metric is None:
        refit_metric = "roc_auc" if classes.size == 2 else "balanced_accuracy"
    if refit_metric not in _TUNING_METRICS:
        raise ValueError(f"refit_metric must be one of {_TUNING_METRICS}, got {refit_metric!r}")
    if classes.size > 2 and refit_metric == "roc_auc" and kind == "svm":
        raise ValueError(
            "refit_metric='roc_auc' needs probabilities; use 'balanced_accuracy' for a multi-class SVM"
        )
    notes: list[str] = []

    base = build_classifier(
        kind, random_state=random_state, calibrate=False, class_weight=class_weight, **params
    )
    grid_paths = _grid_paths(base, grid) if nested and grid is not None else {}

    # ---- folds (strict, or adapted to the class sizes) -----------------------------------
    # Each training side must hold >= `need` cases (patient groups) of every class for the
    # inner folds (nested) or calibration folds; >= 1 for a plain uncalibrated fit.
    if adapt_folds:
        feasible = choose_folds(y, outer_folds, groups=g)
        if feasible < outer_folds:
            notes.append(f"outer_folds reduced from {outer_folds} to {feasible} (smallest class)")
            outer_folds = feasible
    what = "inner_folds" if nested else "calibration_folds"
    need = (inner_folds if nested else calibration_folds) if (nested or calibrate) else 1
    assert need is not None
    splits = _outer_splits(X, y, g, outer_folds, random_state)
    worst, where = _inner_feasible(y, g, splits)
    if worst < need:
        if not adapt_folds:
            raise InsufficientDataError(
                f"not enough labelled cases for {what}={need}: {where} (< {need}); "
                f"use fewer folds, choose_folds(), or adapt_folds=True"
            )
        if worst < 2:
            # training sides too small for 2 inner folds: the largest outer count that works
            for k in range(outer_folds - 1, 1, -1):
                trial = _outer_splits(X, y, g, k, random_state)
                if _inner_feasible(y, g, trial)[0] >= 2:
                    notes.append(f"outer_folds reduced from {outer_folds} to {k} so that {what} >= 2 fit")
                    outer_folds, splits = k, trial
                    break
            else:
                cls, count = _min_class_count(y, g)
                raise InsufficientDataError(
                    f"not enough labelled cases for cross-validation: class {cls!r} has {count} {_unit(g)}; "
                    f"every training split needs >= 2 per class for {what} ({where})"
                )
            worst, where = _inner_feasible(y, g, splits)
        if worst < need:
            notes.append(f"{what} reduced from {need} to {worst} ({where})")
            need = worst
    if nested:
        inner_folds = need
    elif calibrate:
        calibration_folds = need

    tuning_scorer = _tuning_scorer(refit_metric, classes.size, pos) if nested else None
    n = X.shape[0]
    oof_pred = np.empty(n, dtype=y.dtype)
    oof_fold = np.full(n, -1, dtype=np.int64)
    oof_proba = np.full((n, classes.size), np.nan) if (calibrate or kind != "svm") else None
    oof_score = np.full(n if classes.size == 2 else (n, classes.size), np.nan)
    rows, fold_params, fold_models = [], [], []
    is_proba = True

    def _fit_one(Xtr: pd.DataFrame, ytr: np.ndarray, gtr: np.ndarray | None) -> tuple[Any, dict[str, Any]]:
        inner: list[tuple[np.ndarray, np.ndarray]] = []
        if nested or calibrate:
            k_inner = inner_folds if nested else calibration_folds
            assert k_inner is not None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                inner = list(_splitter(k_inner, random_state, gtr is not None).split(Xtr, ytr, gtr))
        best_params: dict[str, Any] = dict(params)
        if nested:
            search = GridSearchCV(
                base,
                grid_paths,
                scoring=tuning_scorer,
                cv=inner,
                refit=True,
                n_jobs=n_jobs,
                error_score="raise",
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                search.fit(Xtr, ytr)
            fitted = search.best_estimator_
            best_params.update(_bare_params(search.best_params_))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                fitted = clone(base).fit(Xtr, ytr)
        if calibrate:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                fitted = _fit_calibrated(fitted, Xtr, ytr, inner, calibration_method)
        return fitted, best_params

    for i, (tr, te) in enumerate(splits):
        model, best = _fit_one(X.iloc[tr], y[tr], g[tr] if g is not None else None)
        Xte = X.iloc[te]
        pred = model.predict(Xte)
        score, is_proba = _positive_score(model, Xte, classes, pos)
        oof_pred[te] = pred
        oof_fold[te] = i
        oof_score[te] = score
        if oof_proba is not None:
            oof_proba[te] = model.predict_proba(Xte)
        m = _metrics(y[te], pred, score, classes=classes, pos_label=pos, is_proba=is_proba, scoring=scoring)
        rows.append({"fold": i, "n_test": int(te.size), **m})
        fold_params.append(best)
        fold_models.append(model)

    fold_table = pd.DataFrame(rows)
    undefined = [m for m in scoring if fold_table[m].isna().any()]
    if undefined:
        notes.append(f"metric(s) {undefined} undefined in some folds (e.g. a test fold with one class)")
    mean, std = _summarise(fold_table, scoring)
    pooled = _metrics(
        y, oof_pred, oof_score, classes=classes, pos_label=pos, is_proba=is_proba, scoring=scoring
    )

    final_model, best_params = _fit_one(X, y, g)
    cm = confusion_matrix(y, oof_pred, labels=classes)
    labels_py = [_py(c) for c in classes]
    cal = None
    if classes.size == 2 and is_proba:
        cal = _calibration_table((y == pos).astype(float), oof_score)
    return CVResult(
        kind=kind,
        nested=nested,
        classes=labels_py,
        positive_label=pos,
        feature_names=[str(c) for c in X.columns],
        n_cases=n,
        class_counts=_class_counts(y),
        outer_folds=outer_folds,
        inner_folds=inner_folds,
        random_state=random_state,
        calibrated=calibrate,
        calibration_method=calibration_method if calibrate else None,
        scoring=scoring,
        refit_metric=refit_metric if nested else None,
        param_grid={k: list(v) for k, v in (grid or {}).items()},
        fold_metrics=fold_table,
        mean=mean,
        std=std,
        pooled=pooled,
        fold_best_params=fold_params,
        best_params=best_params,
        final_model=final_model,
        fold_models=fold_models,
        case_index=features.index.copy(),
        labels=y.copy(),
        oof_fold=oof_fold,
        oof_predictions=oof_pred,
        oof_proba=oof_proba,
        oof_score=oof_score,
        scores_are_probabilities=is_proba,
        roc_curve=_roc_table(y, oof_score, classes, pos, is_proba),
        calibration_curve=cal,
        confusion_matrix=pd.DataFrame(
            cm,
            index=pd.Index(labels_py, name="true"),
            columns=pd.Index(labels_py, name="predicted"),
        ),
        feature_means=X.mean(),
        feature_stds=X.std(ddof=0),
        grouped=g is not None,
        n_groups=int(np.unique(g).size) if g is not None else None,
        notes=notes,
    )


def _run_cv(features: pd.DataFrame, labels: Any, **kwargs: Any) -> CVResult:
    return single_threaded(_run_cv_impl)(features, labels, **kwargs)


def nested_cross_validate(
    features: pd.DataFrame,
    labels: Any,
    *,
    kind: Classifier,
    outer_folds: int = 10,
    inner_folds: int = 5,
    param_grid: Mapping[str, Sequence[Any]] | None = None,
    random_state: int,
    scoring: Sequence[str] = ("accuracy", "roc_auc", "balanced_accuracy", "f1"),
    refit_metric: str | None = None,
    calibrate: bool = True,
    calibration_method: CalibrationMethod = "sigmoid",
    groups: Any = None,
    pos_label: Any = None,
    class_weight: str | Mapping[Any, float] | None = None,
    adapt_folds: bool = False,
    n_jobs: int = 1,
) -> CVResult:
    """Nested stratified cross-validation with hyper-parameter tuning in the inner loop.

    For each of ``outer_folds`` stratified outer splits, a grid search with ``inner_folds``
    stratified folds on the outer *training* cases chooses the hyper-parameters
    (``refit_metric``), the chosen model is refitted on the whole outer training set,
    calibrated (``CalibratedClassifierCV`` on the same inner folds) and evaluated on the
    outer test cases. The final model is tuned and calibrated the same way on all cases.

    Parameters
    ----------
    features : DataFrame, shape (n_cases, n_features)
        Numeric features; NaN is imputed (median of the training side) inside the pipeline.
    labels : Series or array-like, shape (n_cases,)
        Class labels (ints, strings or bools). A Series must share the index of ``features``.
    kind : {"svm", "random_forest", "logistic_regression", "decision_tree"}
    outer_folds, inner_folds : int
        Numbers of outer and inner stratified folds (>= 2).
    param_grid : mapping or None
        ``{parameter: [values]}`` with bare estimator names (``C``) or pipeline paths
        (``clf__C``); ``None`` uses :func:`default_param_grid`.
    random_state : int
        Seed for the fold shuffles and the estimators; results are deterministic for it.
    scoring : sequence of str
        Metrics to report, from :data:`METRICS`.
    refit_metric : str or None
        Metric maximised by the inner grid search; default ``roc_auc`` for binary labels,
        ``balanced_accuracy`` for multi-class.
    calibrate : bool
        Calibrate probabilities (required for SVM probabilities).
    calibration_method : {"sigmoid", "isotonic"}
    groups : Series or array-like or None
        Pseudonymous patient keys; when given, folds never split a patient.
    pos_label : label or None
        Positive class for binary labels (default: the larger of the two sorted labels).
    class_weight : "balanced", dict or None
    adapt_folds : bool
        Reduce the fold counts to what the class sizes allow (see :func:`choose_folds`) and
        record it in ``notes``, instead of raising :class:`InsufficientDataError`.
    n_jobs : int
        Parallel jobs of the inner grid search.

    Returns
    -------
    CVResult

    Raises
    ------
    InsufficientDataError
        A class has too few cases for the requested folds (message names the class and its count).
    """
    grid = default_param_grid(kind) if param_grid is None else param_grid
    return _run_cv(
        features,
        labels,
        kind=kind,
        outer_folds=outer_folds,
        inner_folds=inner_folds,
        grid=grid,
        params={},
        random_state=random_state,
        scoring=scoring,
        refit_metric=refit_metric,
        calibrate=calibrate,
        calibration_method=calibration_method,
        calibration_folds=2,
        groups=groups,
        pos_label=pos_label,
        class_weight=class_weight,
        adapt_folds=adapt_folds,
        n_jobs=n_jobs,
    )


def cross_validate_classifier(
    features: pd.DataFrame,
    labels: Any,
    *,
    kind: Classifier,
    folds: int = 10,
    params: Mapping[str, Any] | None = None,
    random_state: int,
    scoring: Sequence[str] = ("accuracy", "roc_auc", "balanced_accuracy", "f1"),
    calibrate: bool = True,
    calibration_method: CalibrationMethod = "sigmoid",
    calibration_folds: int = 5,
    groups: Any = None,
    pos_label: Any = None,
    class_weight: str | Mapping[Any, float] | None = None,
    adapt_folds: bool = False,
) -> CVResult:
    """Plain stratified k-fold cross-validation of one fixed pipeline configuration.

    Same outputs as :func:`nested_cross_validate`, without tuning (``params`` are the
    bare estimator parameters, default: those of :func:`build_classifier`). Calibration,
    when requested, uses ``calibration_folds`` stratified folds of each training side.
    """
    return _run_cv(
        features,
        labels,
        kind=kind,
        outer_folds=folds,
        inner_folds=None,
        grid=None,
        params=dict(params or {}),
        random_state=random_state,
        scoring=scoring,
        refit_metric=None,
        calibrate=calibrate,
        calibration_method=calibration_method,
        calibration_folds=calibration_folds,
        groups=groups,
        pos_label=pos_label,
        class_weight=class_weight,
        adapt_folds=adapt_folds,
        n_jobs=1,
    )
