"""Reporting of cross-validated classifiers: permutation importance, model cards, fitted pipelines."""

from __future__ import annotations

import platform
from typing import Any

import numpy as np
import pandas as pd
import scipy
import sklearn
from sklearn.calibration import CalibratedClassifierCV
from sklearn.inspection import permutation_importance
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from knowledge.crossval import CVResult
from knowledge.learn import _TUNING_METRICS, _check_int, _py, _tuning_scorer, _validate_xy, to_jsonable

# ------------------------------------------------------------------------ reporting


def permutation_importance_table(
    model: Any,
    features: pd.DataFrame,
    labels: Any,
    *,
    n_repeats: int = 10,
    random_state: int,
    scoring: str = "balanced_accuracy",
    n_jobs: int = 1,
) -> pd.DataFrame:
    """Permutation importance of each feature for a fitted model (Breiman 2001).

    The drop in ``scoring`` when one column is shuffled, averaged over ``n_repeats``.
    Computed on the data given: on the training data it describes what the model *uses*,
    not what generalises.

    Returns
    -------
    DataFrame
        ``feature, importance_mean, importance_std``, sorted by decreasing importance.
    """
    _check_int("n_repeats", n_repeats, 1)
    _check_int("random_state", random_state, 0)
    if scoring not in _TUNING_METRICS:
        raise ValueError(f"scoring must be one of {_TUNING_METRICS}, got {scoring!r}")
    X, y, _ = _validate_xy(features, labels)
    classes = np.unique(y)
    scorer = _tuning_scorer(scoring, classes.size, _py(classes[-1]) if classes.size == 2 else None)
    with threadpool_limits(limits=1):
        res = permutation_importance(
            model, X, y, scoring=scorer, n_repeats=n_repeats, random_state=random_state, n_jobs=n_jobs
        )
    table = pd.DataFrame(
        {
            "feature": [str(c) for c in X.columns],
            "importance_mean": res.importances_mean,
            "importance_std": res.importances_std,
        }
    )
    return table.sort_values("importance_mean", ascending=False, kind="stable").reset_index(drop=True)


def model_card(result: CVResult) -> dict[str, Any]:
    """JSON-serialisable provenance summary of a :class:`CVResult`.

    Includes the validation design (folds, nesting, grouping, seed), per-fold and summary
    metrics, chosen hyper-parameters, cohort size and class balance, and library versions.
    """
    if not isinstance(result, CVResult):
        raise TypeError(f"result must be a CVResult, got {type(result).__name__}")
    card = {
        "model": {
            "kind": result.kind,
            "pipeline": [name for name, _ in _steps_of(result.final_model)],
            "best_params": result.best_params,
            "calibrated": result.calibrated,
            "calibration_method": result.calibration_method,
        },
        "validation": {
            "design": "nested stratified cross-validation"
            if result.nested
            else "stratified cross-validation",
            "outer_folds": result.outer_folds,
            "inner_folds": result.inner_folds,
            "grouped_by_patient": result.grouped,
            "n_groups": result.n_groups,
            "random_state": result.random_state,
            "refit_metric": result.refit_metric,
            "param_grid": result.param_grid,
            "fold_best_params": result.fold_best_params,
            "notes": result.notes,
        },
        "metrics": {
            "mean": result.mean,
            "std": result.std,
            "pooled_out_of_fold": result.pooled,
            "per_fold": result.fold_metrics,
            "confusion_matrix": {
                "labels": result.classes,
                "counts": result.confusion_matrix.to_numpy(),
            },
        },
        "data": {
            "n_cases": result.n_cases,
            "n_features": len(result.feature_names),
            "features": result.feature_names,
            "classes": result.classes,
            "positive_label": result.positive_label,
            "class_counts": {str(k): v for k, v in result.class_counts.items()},
            "class_balance": {str(k): v / result.n_cases for k, v in result.class_counts.items()},
        },
        "software": {
            "python": platform.python_version(),
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "pandas": pd.__version__,
        },
    }
    out = to_jsonable(card)
    assert isinstance(out, dict)
    return out


def _steps_of(model: Any) -> list[tuple[str, Any]]:
    if isinstance(model, CalibratedClassifierCV):
        inner = model.calibrated_classifiers_[0].estimator
        return [*_steps_of(inner), ("calibration", model)]
    if isinstance(model, Pipeline):
        return list(model.steps)
    return [("clf", model)]


def fitted_pipeline(model: Any) -> Pipeline:
    """The fitted ``impute -> [scale] -> clf`` pipeline inside a (possibly calibrated) model.

    For a :class:`CalibratedClassifierCV` with ``ensemble=False`` this is the estimator
    refitted on all training cases; its ``clf`` step gives coefficients/importances.
    """
    if isinstance(model, CalibratedClassifierCV):
        return fitted_pipeline(model.calibrated_classifiers_[0].estimator)
    if isinstance(model, Pipeline):
        last = model[-1]
        if isinstance(last, CalibratedClassifierCV):
            return Pipeline([*model.steps[:-1], ("clf", last.calibrated_classifiers_[0].estimator)])
        return model
    raise TypeError(f"expected a Pipeline or CalibratedClassifierCV, got {type(model).__name__}")
