"""Supervised classification of case feature tables (issue #5 item 6).

Plain functions of :class:`pandas.DataFrame` feature tables (rows = cases, columns =
numeric features) and label series. Nothing here reads or writes files.

The estimators are scikit-learn pipelines::

    median imputation -> [standardisation] -> classifier [-> probability calibration]

Standardisation is applied for the scale-sensitive models (RBF support vector machine,
logistic regression); trees are scale invariant and get imputation only. Probabilities
are calibrated with :class:`sklearn.calibration.CalibratedClassifierCV` (Platt's
sigmoid or isotonic regression, fitted on cross-validated predictions,
``ensemble=False``), which is the replacement scikit-learn 1.9 recommends for the
deprecated ``SVC(probability=True)``.

Performance is estimated with (nested) stratified cross-validation:
:func:`cross_validate_classifier` evaluates one fixed configuration;
:func:`nested_cross_validate` tunes hyper-parameters in an inner loop on each outer
training set only, so the outer figures are not optimistically biased by the tuning
(Varma & Simon, BMC Bioinformatics 2006; Cawley & Talbot, JMLR 2010). When several cases
(ROIs, volumes) come from one patient, pass ``groups`` (the pseudonymous patient key):
folds are then formed with :class:`~sklearn.model_selection.StratifiedGroupKFold` so that
no patient contributes to both the training and the test side of a split.
"""

from __future__ import annotations

import functools
import math
import platform
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, ParamSpec, TypeVar, get_args

import numpy as np
import pandas as pd
import scipy
import sklearn
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning, UndefinedMetricWarning
from sklearn.impute import SimpleImputer
from sklearn.inspection import permutation_importance
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    make_scorer,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier
from threadpoolctl import threadpool_limits

from imaging.types import CalibrationMethod, Classifier

__all__ = [
    "CLASSIFIERS",
    "METRICS",
    "CVResult",
    "InsufficientDataError",
    "build_classifier",
    "choose_folds",
    "cross_validate_classifier",
    "default_param_grid",
    "fitted_pipeline",
    "model_card",
    "nested_cross_validate",
    "permutation_importance_table",
    "single_threaded",
    "to_jsonable",
]

CLASSIFIERS: tuple[str, ...] = get_args(Classifier)
#: Metrics understood by the cross-validation functions. ``f1``/``precision``/``recall``
#: are for the positive class when the labels are binary, macro-averaged otherwise;
#: ``roc_auc`` is macro one-vs-rest for more than two classes.
METRICS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "roc_auc",
    "f1",
    "precision",
    "recall",
    "brier",
    "log_loss",
)
_TUNING_METRICS = ("accuracy", "balanced_accuracy", "roc_auc", "f1")
_SCALED = frozenset({"svm", "logistic_regression"})

_DEFAULT_GRIDS: dict[str, dict[str, list[Any]]] = {
    "svm": {"C": [0.1, 1.0, 10.0, 100.0], "gamma": ["scale", 0.001, 0.01]},
    "random_forest": {"max_features": ["sqrt", 0.3], "min_samples_leaf": [1, 3]},
    "logistic_regression": {"C": [0.01, 0.1, 1.0, 10.0, 100.0]},
    "decision_tree": {"max_depth": [2, 3, 5, None], "min_samples_leaf": [1, 5, 10]},
}


class InsufficientDataError(ValueError):
    """Too few cases (per class, or per patient group) for the requested cross-validation.

    A :class:`ValueError`, so callers that only validate arguments still see it; the
    discovery stage catches this subclass to report ``status="skipped"`` instead of failing.
    """


# ----------------------------------------------------------------------------- helpers

_P = ParamSpec("_P")
_R = TypeVar("_R")


def single_threaded(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn`` with BLAS and OpenMP limited to one thread (:mod:`threadpoolctl`).

    The matrices here are small (cases x features); native thread pools only add
    contention: on the 2-core CI machine under load, logistic-regression fits were 20x and
    k-means model selection 50x slower with the default pools. Parallelism, where wanted,
    comes from ``n_jobs`` (process-based) instead.
    """

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with threadpool_limits(limits=1):
            return fn(*args, **kwargs)

    return wrapper


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/pandas/dataclass values to plain JSON-serialisable Python.

    NaN and infinities become ``None`` (strict JSON has no NaN); DataFrames become a list
    of row records; Series and mappings become dicts with string keys.
    """
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, pd.DataFrame):
        return [to_jsonable(rec) for rec in obj.reset_index(drop=obj.index.name is None).to_dict("records")]
    if isinstance(obj, pd.Series):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if obj is pd.NA or obj is pd.NaT:
        return None
    if isinstance(obj, (pd.Timestamp, np.datetime64)):
        return str(obj)
    return str(obj)


def _py(value: Any) -> Any:
    """Numpy scalar -> Python scalar (labels are recorded in results and model cards)."""
    return value.item() if isinstance(value, np.generic) else value


def _check_kind(kind: str) -> None:
    if kind not in CLASSIFIERS:
        raise ValueError(f"kind must be one of {CLASSIFIERS}, got {kind!r}")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _validate_xy(
    features: pd.DataFrame, labels: Any, groups: Any = None
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray | None]:
    """Check and align features, labels and groups; return (X, y, groups)."""
    if not isinstance(features, pd.DataFrame):
        raise TypeError(f"features must be a pandas DataFrame, got {type(features).__name__}")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"features must have at least one row and one column, got shape {features.shape}")
    if features.columns.duplicated().any():
        dup = sorted(map(str, features.columns[features.columns.duplicated()].unique()))
        raise ValueError(f"features has duplicated column names: {dup}")
    non_numeric = [str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c].dtype)]
    if non_numeric:
        raise TypeError(f"features must be numeric; non-numeric column(s): {non_numeric}")
    X = features.astype(float)
    infinite = [str(c) for c in X.columns if np.isinf(X[c].to_numpy()).any()]
    if infinite:
        raise ValueError(f"features contain infinite values in column(s): {infinite}")

    def _align(name: str, values: Any) -> np.ndarray:
        if isinstance(values, pd.Series):
            if not values.index.equals(features.index):
                if len(values) == len(features) and set(values.index) == set(features.index):
                    values = values.reindex(features.index)
                else:
                    raise ValueError(
                        f"{name} index does not match the features index; pass aligned data "
                        f"(or {name}.to_numpy() for positional alignment)"
                    )
            arr = values.to_numpy()
        else:
            arr = np.asarray(values)
        if arr.ndim != 1 or arr.shape[0] != features.shape[0]:
            raise ValueError(
                f"{name} must be one-dimensional with {features.shape[0]} entries, got shape {arr.shape}"
            )
        return arr

    y = _align("labels", labels)
    missing = pd.isna(y)
    if missing.any():
        raise ValueError(
            f"labels contain {int(missing.sum())} missing value(s); drop unlabelled cases before training"
        )
    if np.unique(y).size < 2:
        raise ValueError(f"labels must contain at least two classes, got {np.unique(y).tolist()}")
    g = None
    if groups is not None:
        g = _align("groups", groups)
        if pd.isna(g).any():
            raise ValueError("groups contain missing values")
    return X, y, g


def _class_counts(y: np.ndarray, groups: np.ndarray | None = None) -> dict[Any, int]:
    """Cases per class, or distinct groups per class when ``groups`` is given."""
    classes = np.unique(y)
    if groups is None:
        return {_py(c): int(np.sum(y == c)) for c in classes}
    return {_py(c): int(np.unique(groups[y == c]).size) for c in classes}


def _positive_label(classes: np.ndarray, pos_label: Any) -> Any:
    if classes.size != 2:
        if pos_label is not None:
            raise ValueError(f"pos_label is only meaningful for binary labels; got {classes.size} classes")
        return None
    if pos_label is None:
        return _py(classes[1])
    if pos_label not in classes.tolist():
        raise ValueError(f"pos_label must be one of the classes {classes.tolist()}, got {pos_label!r}")
    return _py(pos_label)


def _splitter(n_splits: int, random_state: int, grouped: bool) -> StratifiedKFold | StratifiedGroupKFold:
    if grouped:
        return StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=random_state)


def _min_class_count(y: np.ndarray, groups: np.ndarray | None) -> tuple[Any, int]:
    counts = _class_counts(y, groups)
    cls = min(counts, key=lambda c: counts[c])
    return cls, counts[cls]


def _unit(groups: np.ndarray | None) -> str:
    return "patient group(s)" if groups is not None else "case(s)"


# ------------------------------------------------------------------------- estimators


def default_param_grid(kind: Classifier) -> dict[str, list[Any]]:
    """Small default hyper-parameter grid for ``kind`` (parameter names of the bare estimator).

    ========================  ==========================================================
    svm                       ``C`` in {0.1, 1, 10, 100} x ``gamma`` in {scale, 1e-3, 1e-2}
    random_forest             ``max_features`` in {sqrt, 0.3} x ``min_samples_leaf`` in {1, 3}
    logistic_regression       ``C`` in {0.01, 0.1, 1, 10, 100} (L2 penalty)
    decision_tree             ``max_depth`` in {2, 3, 5, None} x ``min_samples_leaf`` in {1, 5, 10}
    ========================  ==========================================================
    """
    _check_kind(kind)
    return {k: list(v) for k, v in _DEFAULT_GRIDS[kind].items()}


def _bare_estimator(kind: str, random_state: int, class_weight: Any, params: Mapping[str, Any]) -> Any:
    est: Any
    if kind == "svm":
        est = SVC(kernel="rbf", C=1.0, gamma="scale", class_weight=class_weight, random_state=random_state)
    elif kind == "random_forest":
        est = RandomForestClassifier(
            n_estimators=200, class_weight=class_weight, random_state=random_state, n_jobs=1
        )
    elif kind == "logistic_regression":
        est = LogisticRegression(C=1.0, max_iter=5000, class_weight=class_weight, random_state=random_state)
    else:
        est = DecisionTreeClassifier(class_weight=class_weight, random_state=random_state)
    if params:
        valid = est.get_params()
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise ValueError(f"unknown parameter(s) for kind={kind!r}: {unknown}; valid: {sorted(valid)}")
        est.set_params(**params)
    return est


def build_classifier(
    kind: Classifier,
    *,
    random_state: int,
    calibrate: bool | None = None,
    calibration_method: CalibrationMethod = "sigmoid",
    calibration_folds: int = 5,
    class_weight: str | Mapping[Any, float] | None = None,
    **params: Any,
) -> Pipeline:
    """Build an (unfitted) classification pipeline.

    Parameters
    ----------
    kind : {"svm", "random_forest", "logistic_regression", "decision_tree"}
        ``svm`` is an RBF-kernel :class:`~sklearn.svm.SVC` on standardised features;
        ``logistic_regression`` is L2-penalised on standardised features; the tree models
        see the imputed, unscaled features.
    random_state : int
        Seed for every stochastic component (forest bootstrap, calibration folds).
    calibrate : bool or None
        Wrap the classifier in :class:`~sklearn.calibration.CalibratedClassifierCV`
        (``ensemble=False``: the classifier is refitted on all data, the calibrator on
        cross-validated decision values). ``None`` calibrates only the SVM, which has no
        probabilities otherwise.
    calibration_method : {"sigmoid", "isotonic"}
        Platt scaling or isotonic regression. Isotonic needs many cases (>~1000).
    calibration_folds : int
        Stratified folds used to fit the calibrator (>= 2).
    class_weight : "balanced", dict or None
        Passed to the classifier.
    **params
        Parameters of the bare estimator (e.g. ``C=10, gamma=0.01`` for the SVM).

    Returns
    -------
    sklearn.pipeline.Pipeline
        Steps ``impute`` (median, empty columns kept as 0), ``scale`` (SVM and logistic
        regression only) and ``clf``.
    """
    _check_kind(kind)
    _check_int("random_state", random_state, 0)
    if calibrate is not None and not isinstance(calibrate, bool):
        raise TypeError(f"calibrate must be a bool or None, got {calibrate!r}")
    if calibration_method not in get_args(CalibrationMethod):
        raise ValueError(
            f"calibration_method must be one of {get_args(CalibrationMethod)}, got {calibration_method!r}"
        )
    _check_int("calibration_folds", calibration_folds, 2)
    est = _bare_estimator(kind, random_state, class_weight, params)
    if calibrate is None:
        calibrate = kind == "svm"
    if calibrate:
        est = CalibratedClassifierCV(
            est,
            method=calibration_method,
            cv=StratifiedKFold(n_splits=calibration_folds, shuffle=True, random_state=random_state),
            ensemble=False,
        )
    steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median", keep_empty_features=True))]
    if kind in _SCALED:
        steps.append(("scale", StandardScaler()))
    steps.append(("clf", est))
    return Pipeline(steps)


def _grid_paths(pipeline: Pipeline, grid: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    """Translate bare estimator parameter names to pipeline paths (``C`` -> ``clf__C``)."""
    if not isinstance(grid, Mapping):
        raise TypeError(f"param_grid must be a mapping of parameter -> list of values, got {grid!r}")
    valid = pipeline.get_params()
    out: dict[str, list[Any]] = {}
    for name, values in grid.items():
        path = name if "__" in name else f"clf__{name}"
        if path not in valid:
            raise ValueError(f"param_grid has an unknown parameter {name!r} for this pipeline")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"param_grid[{name!r}] must be a non-empty list of values, got {values!r}")
        out[path] = list(values)
    return out


def _bare_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {(k[5:] if k.startswith("clf__") else k): _py(v) for k, v in params.items()}


# ---------------------------------------------------------------------------- metrics


def _check_scoring(scoring: Sequence[str]) -> tuple[str, ...]:
    if isinstance(scoring, str):
        scoring = (scoring,)
    scoring = tuple(scoring)
    if not scoring:
        raise ValueError("scoring must name at least one metric")
    unknown = [s for s in scoring if s not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) in scoring: {unknown}; allowed: {METRICS}")
    return scoring


def _tuning_scorer(metric: str, n_classes: int, pos_label: Any) -> Any:
    if metric == "roc_auc":
        return "roc_auc" if n_classes == 2 else "roc_auc_ovr"
    if metric == "f1":
        return make_scorer(f1_score, pos_label=pos_label) if n_classes == 2 else "f1_macro"
    return metric


def _metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    score: np.ndarray,
    *,
    classes: np.ndarray,
    pos_label: Any,
    is_proba: bool,
    scoring: Sequence[str],
) -> dict[str, float]:
    """Metrics of one set of predictions; NaN where a metric is undefined (e.g. one class only)."""
    out: dict[str, float] = {}
    binary = classes.size == 2
    present = np.unique(y_true)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", UserWarning)
        for name in scoring:
            value = math.nan
            if name == "accuracy":
                value = accuracy_score(y_true, y_pred)
            elif name == "balanced_accuracy":
                value = balanced_accuracy_score(y_true, y_pred)
            elif name in ("f1", "precision", "recall"):
                fn = {"f1": f1_score, "precision": precision_score, "recall": recall_score}[name]
                if binary:
                    value = fn(y_true, y_pred, pos_label=pos_label, zero_division=0)
                else:
                    value = fn(y_true, y_pred, average="macro", labels=classes, zero_division=0)
            elif name == "roc_auc":
                if binary and present.size == 2:
                    value = roc_auc_score(y_true == pos_label, score)
                elif not binary and is_proba and present.size == classes.size:
                    value = roc_auc_score(y_true, score, multi_class="ovr", average="macro", labels=classes)
            elif name == "brier":
                if binary and is_proba:
                    value = brier_score_loss(y_true == pos_label, score)
            elif name == "log_loss":
                if is_proba:
                    if binary:
                        proba = np.where(
                            (classes == pos_label)[None, :], score[:, None], 1.0 - score[:, None]
                        )
                    else:
                        proba = score
                    value = log_loss(y_true, proba, labels=classes)
            out[name] = float(value)
    return out


def _positive_score(
    model: Any, X: pd.DataFrame, classes: np.ndarray, pos_label: Any
) -> tuple[np.ndarray, bool]:
    """Scores for ROC analysis: calibrated/native probabilities when available, else decision values.

    Returns ``(score, is_proba)``. For binary labels ``score`` is 1-D (positive class);
    otherwise it is ``(n, n_classes)`` in the order of ``classes``.
    """
    if _has_proba(model):
        proba = model.predict_proba(X)
        if classes.size == 2:
            return proba[:, int(np.flatnonzero(classes == pos_label)[0])], True
        return proba, True
    dec = np.asarray(model.decision_function(X))
    if classes.size == 2:
        return (dec if pos_label == _py(classes[1]) else -dec), False
    return dec, False


def _has_proba(model: Any) -> bool:
    """Whether ``model`` yields probabilities (an uncalibrated SVC yields decision values only)."""
    if isinstance(model, CalibratedClassifierCV):
        return True
    last = model[-1] if isinstance(model, Pipeline) else model
    if isinstance(last, CalibratedClassifierCV):
        return True
    if isinstance(last, SVC):
        return False
    return hasattr(last, "predict_proba")


# --------------------------------------------------------------------------- folds


def choose_folds(labels: Any, requested: int, *, groups: Any = None) -> int:
    """Largest feasible number of stratified folds, at most ``requested`` and at least 2.

    Stratified k-fold needs every class to have at least ``k`` cases (``k`` patient groups
    when ``groups`` is given). This is the graceful-degradation path for small cohorts.

    Raises
    ------
    InsufficientDataError
        When even 2 folds are impossible; the message names the class and its count.
    """
    _check_int("requested", requested, 2)
    y = np.asarray(labels.to_numpy() if isinstance(labels, pd.Series) else labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {y.shape}")
    keep = ~pd.isna(y)
    y = y[keep]
    g = None
    if groups is not None:
        g = np.asarray(groups.to_numpy() if isinstance(groups, pd.Series) else groups)
        if g.shape != keep.shape:
            raise ValueError(f"groups must have the same shape as labels {keep.shape}, got {g.shape}")
        g = g[keep]
    classes = np.unique(y)
    if classes.size < 2:
        raise InsufficientDataError(
            f"cross-validation needs at least two classes; labels have {classes.tolist()}"
        )
    cls, count = _min_class_count(y, g)
    if count < 2:
        raise InsufficientDataError(
            f"not enough labelled cases for cross-validation: class {cls!r} has {count} {_unit(g)} (< 2)"
        )
    return min(requested, count)


def _outer_splits(
    X: pd.DataFrame, y: np.ndarray, g: np.ndarray | None, n_splits: int, random_state: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    cls, count = _min_class_count(y, g)
    if count < n_splits:
        raise InsufficientDataError(
            f"not enough labelled cases for {n_splits}-fold cross-validation: class {cls!r} has "
            f"{count} {_unit(g)} (< {n_splits}); use choose_folds() or fewer folds"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return list(_splitter(n_splits, random_state, g is not None).split(X, y, g))


def _inner_feasible(
    y: np.ndarray, g: np.ndarray | None, splits: list[tuple[np.ndarray, np.ndarray]]
) -> tuple[int, str]:
    """Smallest per-class count (cases or groups) over the training sides of ``splits``."""
    worst, where = np.iinfo(np.int64).max, ""
    classes = np.unique(y)
    for i, (tr, _) in enumerate(splits):
        ytr = y[tr]
        gtr = g[tr] if g is not None else None
        for c in classes:
            sel = ytr == c
            n = int(np.unique(gtr[sel]).size) if gtr is not None else int(sel.sum())
            if n < worst:
                worst, where = n, f"outer fold {i} training set has {n} {_unit(g)} of class {_py(c)!r}"
    return int(worst), where


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
