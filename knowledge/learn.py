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
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from typing import Any, ParamSpec, TypeVar, get_args

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    f1_score,
    log_loss,
    make_scorer,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier
from threadpoolctl import ThreadpoolController

from knowledge.types import CalibrationMethod, Classifier

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
        with _thread_pools(len(sys.modules)).limit(limits=1):
            return fn(*args, **kwargs)

    return wrapper


@functools.lru_cache(maxsize=1)
def _thread_pools(n_modules: int) -> Any:
    """The process's native thread pools (a ``threadpoolctl.ThreadpoolController``), found once.

    ``threadpool_limits`` walks every loaded shared library on each call (7 ms here, 200
    calls per discovery); the controller is reused while no module has been imported since
    (``n_modules``, the length of ``sys.modules``: a newly loaded native pool comes with an import).
    """
    return ThreadpoolController()


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
