"""Tests of knowledge.learn/crossval/cards on real public data bundled with scikit-learn (offline).

Reference figures: Wisconsin diagnostic breast cancer table (569 cases, 30 features,
``sklearn.datasets.load_breast_cancer``); the scaled RBF SVM reaches >= 0.96 accuracy and
>= 0.99 ROC AUC in stratified 10-fold cross-validation.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.impute import SimpleImputer
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from knowledge.cards import fitted_pipeline, model_card, permutation_importance_table
from knowledge.crossval import CVResult, cross_validate_classifier, nested_cross_validate
from knowledge.learn import InsufficientDataError, build_classifier, choose_folds, default_param_grid


@pytest.fixture(scope="module")
def breast_cancer() -> tuple[pd.DataFrame, pd.Series]:
    data = load_breast_cancer(as_frame=True)
    return data.data, data.target


@pytest.fixture(scope="module")
def svm_plain(breast_cancer) -> CVResult:
    X, y = breast_cancer
    return cross_validate_classifier(X, y, kind="svm", folds=10, random_state=0)


# ------------------------------------------------------------------ reference figures


def test_reference_svm_breast_cancer_10fold(svm_plain: CVResult) -> None:
    r = svm_plain
    assert r.mean["accuracy"] >= 0.96
    assert r.mean["roc_auc"] >= 0.99
    assert r.pooled["roc_auc"] >= 0.99
    assert len(r.fold_metrics) == 10 and r.fold_metrics["n_test"].sum() == 569
    assert r.calibrated and r.scores_are_probabilities
    assert r.confusion_matrix.to_numpy().sum() == 569
    assert np.isclose(np.trace(r.confusion_matrix.to_numpy()) / 569, r.pooled["accuracy"])
    roc = r.roc_curve
    assert (roc["fpr"].iloc[0], roc["tpr"].iloc[0]) == (0.0, 0.0)
    assert (roc["fpr"].iloc[-1], roc["tpr"].iloc[-1]) == (1.0, 1.0)
    assert np.all(np.diff(roc["fpr"]) >= 0)
    assert r.oof_proba is not None
    np.testing.assert_allclose(r.oof_proba.sum(axis=1), 1.0)
    assert set(np.unique(r.oof_fold)) == set(range(10))
    # calibration: observed event fraction tracks the mean predicted probability per bin
    cal = r.calibration_curve
    assert cal is not None and cal["n"].sum() == 569
    assert np.average(np.abs(cal["mean_predicted"] - cal["observed_fraction"]), weights=cal["n"]) < 0.05


def test_uncalibrated_cv_equals_sklearn_oracle(breast_cancer) -> None:
    """Same folds and pipeline as scikit-learn's own cross_val_score: identical accuracies."""
    X, y = breast_cancer
    r = cross_validate_classifier(X, y, kind="svm", folds=10, random_state=3, calibrate=False)
    pipe = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), SVC())
    ref = cross_val_score(
        pipe, X, y, cv=StratifiedKFold(10, shuffle=True, random_state=3), scoring="accuracy"
    )
    np.testing.assert_allclose(r.fold_metrics["accuracy"].to_numpy(), ref)
    ref_auc = cross_val_score(
        pipe, X, y, cv=StratifiedKFold(10, shuffle=True, random_state=3), scoring="roc_auc"
    )
    np.testing.assert_allclose(r.fold_metrics["roc_auc"].to_numpy(), ref_auc)
    assert not r.scores_are_probabilities and r.oof_proba is None


def test_nested_cv_svm_breast_cancer(breast_cancer) -> None:
    X, y = breast_cancer
    grid = {"C": [1.0, 10.0], "gamma": ["scale", 0.01]}
    r = nested_cross_validate(X, y, kind="svm", outer_folds=5, inner_folds=3, param_grid=grid, random_state=0)
    assert r.nested and r.outer_folds == 5 and r.inner_folds == 3
    assert r.mean["accuracy"] >= 0.95
    assert r.mean["roc_auc"] >= 0.99
    assert len(r.fold_best_params) == 5
    for params in [*r.fold_best_params, r.best_params]:
        assert params["C"] in grid["C"] and params["gamma"] in grid["gamma"]
    assert isinstance(r.final_model, CalibratedClassifierCV)
    proba = r.final_model.predict_proba(X.iloc[:5])
    assert proba.shape == (5, 2) and np.all((proba >= 0) & (proba <= 1))
    assert r.refit_metric == "roc_auc"


def test_deterministic_for_random_state(breast_cancer) -> None:
    X, y = breast_cancer
    kw = dict(kind="logistic_regression", outer_folds=3, inner_folds=2, param_grid={"C": [0.1, 1.0]})
    a = nested_cross_validate(X, y, random_state=7, **kw)
    b = nested_cross_validate(X, y, random_state=7, **kw)
    c = nested_cross_validate(X, y, random_state=8, **kw)
    pd.testing.assert_frame_equal(a.fold_metrics, b.fold_metrics)
    np.testing.assert_array_equal(a.oof_score, b.oof_score)
    assert not np.array_equal(a.oof_fold, c.oof_fold)


def test_string_labels_and_positive_class(breast_cancer) -> None:
    X, y = breast_cancer
    names = pd.Series(np.where(y == 1, "benign", "malignant"), index=X.index)
    r = cross_validate_classifier(X, names, kind="logistic_regression", folds=5, random_state=0)
    assert r.classes == ["benign", "malignant"]
    assert r.positive_label == "malignant"  # the larger sorted label, as in scikit-learn
    assert r.mean["roc_auc"] >= 0.99
    r_b = cross_validate_classifier(
        X, names, kind="logistic_regression", folds=5, random_state=0, pos_label="benign"
    )
    assert r_b.positive_label == "benign"
    # AUC does not depend on which class is called positive; F1 does
    np.testing.assert_allclose(r_b.fold_metrics["roc_auc"], r.fold_metrics["roc_auc"], atol=1e-12)
    assert not np.allclose(r_b.fold_metrics["f1"], r.fold_metrics["f1"])
    with pytest.raises(ValueError, match="pos_label"):
        cross_validate_classifier(X, names, kind="svm", folds=5, random_state=0, pos_label="unknown")


def test_multiclass_iris_macro_auc() -> None:
    data = load_iris(as_frame=True)
    species = data.target.map(dict(enumerate(data.target_names)))
    r = nested_cross_validate(
        data.data,
        species,
        kind="logistic_regression",
        outer_folds=5,
        inner_folds=3,
        param_grid={"C": [1.0, 10.0]},
        random_state=0,
    )
    assert r.positive_label is None and len(r.classes) == 3
    assert r.mean["roc_auc"] >= 0.98 and r.mean["accuracy"] >= 0.93
    assert r.refit_metric == "balanced_accuracy"
    assert r.confusion_matrix.shape == (3, 3) and r.confusion_matrix.to_numpy().sum() == 150
    assert set(r.roc_curve["class"]) == set(data.target_names)


def test_other_kinds_and_missing_values(breast_cancer) -> None:
    X, y = breast_cancer
    rng = np.random.default_rng(0)
    Xn = X.mask(rng.random(X.shape) < 0.05)  # 5 % missing at random
    rf = cross_validate_classifier(
        Xn, y, kind="random_forest", folds=5, random_state=0, params={"n_estimators": 50}, calibrate=False
    )
    tree = cross_validate_classifier(
        Xn, y, kind="decision_tree", folds=5, random_state=0, params={"max_depth": 4}
    )
    assert rf.mean["accuracy"] >= 0.93 and rf.mean["roc_auc"] >= 0.97
    assert tree.mean["accuracy"] >= 0.88


def test_grouped_folds_keep_patients_together(breast_cancer) -> None:
    X, y = breast_cancer
    X, y = X.iloc[:200], y.iloc[:200]
    # two ROIs per patient: the second is the first with 1 % multiplicative noise
    rng = np.random.default_rng(1)
    X2 = pd.concat([X, X * (1 + 0.01 * rng.standard_normal(X.shape))], ignore_index=True)
    y2 = pd.concat([y, y], ignore_index=True)
    groups = np.tile([f"pk{i:03d}" for i in range(200)], 2)
    r = cross_validate_classifier(X2, y2, kind="svm", folds=5, random_state=0, groups=groups)
    assert r.grouped and r.n_groups == 200
    fold_of = pd.Series(r.oof_fold).groupby(groups).nunique()
    assert (fold_of == 1).all()


# ------------------------------------------------------------------------ small cohorts


def test_choose_folds() -> None:
    y = np.array(["a"] * 3 + ["b"] * 10)
    assert choose_folds(y, 10) == 3
    assert choose_folds(y, 2) == 2
    groups = np.array(["p1", "p1", "p2"] + [f"q{i}" for i in range(10)])
    assert choose_folds(y, 10, groups=groups) == 2
    with pytest.raises(InsufficientDataError, match=r"class 'a' has 1 case\(s\)"):
        choose_folds(np.array(["a", "b", "b"]), 5)
    with pytest.raises(InsufficientDataError, match="class 'a' has 1 patient group"):
        choose_folds(y, 5, groups=np.array(["p1"] * 3 + [f"q{i}" for i in range(10)]))
    with pytest.raises(InsufficientDataError, match="two classes"):
        choose_folds(np.array(["a", "a"]), 2)
    with pytest.raises(ValueError, match="requested"):
        choose_folds(y, 1)


def test_too_few_cases_error_names_class_and_adapt(breast_cancer) -> None:
    X, y = breast_cancer
    idx = list(np.flatnonzero(y == 0)[:4]) + list(np.flatnonzero(y == 1)[:40])
    Xs, ys = X.iloc[idx], pd.Series(np.where(y.iloc[idx] == 0, "rare", "common"), index=X.index[idx])
    with pytest.raises(InsufficientDataError, match=r"class 'rare' has 4 case\(s\) \(< 10\)"):
        nested_cross_validate(Xs, ys, kind="logistic_regression", param_grid={"C": [1.0]}, random_state=0)
    r = nested_cross_validate(
        Xs, ys, kind="logistic_regression", param_grid={"C": [1.0]}, random_state=0, adapt_folds=True
    )
    assert r.outer_folds <= 4 and r.inner_folds is not None and r.inner_folds >= 2
    assert any("reduced" in n or "changed" in n for n in r.notes)
    assert r.fold_metrics["n_test"].sum() == len(Xs)
    # three cases per class is the minimum for nested CV (outer 3, inner 2)
    tiny = pd.DataFrame({"f": [0.0, 0.1, 0.2, 1.0, 1.1, 1.2]})
    r3 = nested_cross_validate(
        tiny,
        ["a"] * 3 + ["b"] * 3,
        kind="logistic_regression",
        param_grid={"C": [1.0]},
        random_state=0,
        adapt_folds=True,
    )
    assert (r3.outer_folds, r3.inner_folds) == (3, 2)
    with pytest.raises(InsufficientDataError, match="class 'a'"):
        nested_cross_validate(
            tiny.iloc[1:5], ["a", "a", "b", "b"], kind="svm", random_state=0, adapt_folds=True
        )


# ------------------------------------------------------------------- argument checks


def test_argument_validation(breast_cancer) -> None:
    X, y = breast_cancer
    with pytest.raises(ValueError, match="kind must be one of"):
        build_classifier("knn", random_state=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown parameter"):
        build_classifier("svm", random_state=0, n_estimators=3)
    with pytest.raises(TypeError, match="non-numeric column"):
        cross_validate_classifier(X.assign(site="A"), y, kind="svm", random_state=0)
    with pytest.raises(ValueError, match="missing value"):
        cross_validate_classifier(X, y.where(y.index > 3), kind="svm", random_state=0)
    with pytest.raises(ValueError, match="index does not match"):
        cross_validate_classifier(X, y.set_axis(y.index + 1000), kind="svm", random_state=0)
    with pytest.raises(ValueError, match="infinite"):
        cross_validate_classifier(X.assign(**{"mean radius": np.inf}), y, kind="svm", random_state=0)
    with pytest.raises(ValueError, match="unknown parameter 'depth'"):
        nested_cross_validate(X, y, kind="decision_tree", param_grid={"depth": [1]}, random_state=0)
    with pytest.raises(ValueError, match="unknown metric"):
        cross_validate_classifier(X, y, kind="svm", random_state=0, scoring=("accuracy", "auc"))
    with pytest.raises(ValueError, match="outer_folds must be >= 2"):
        nested_cross_validate(X, y, kind="svm", outer_folds=1, random_state=0)
    with pytest.raises(ValueError, match="at least two classes"):
        cross_validate_classifier(X, np.zeros(len(X)), kind="svm", random_state=0)


def test_build_classifier_structure() -> None:
    svm = build_classifier("svm", random_state=0)
    assert [n for n, _ in svm.steps] == ["impute", "scale", "clf"]
    assert isinstance(svm["clf"], CalibratedClassifierCV) and svm["clf"].estimator.kernel == "rbf"
    rf = build_classifier("random_forest", random_state=0)
    assert [n for n, _ in rf.steps] == ["impute", "clf"]  # trees need no scaling
    lr = build_classifier("logistic_regression", random_state=0, calibrate=True, C=3.0)
    assert lr["clf"].estimator.C == 3.0
    assert set(default_param_grid("svm")) == {"C", "gamma"}


# ---------------------------------------------------------------- provenance, importance


def test_model_card_is_json(svm_plain: CVResult) -> None:
    card = model_card(svm_plain)
    text = json.dumps(card, allow_nan=False)
    back = json.loads(text)
    assert back["data"]["n_cases"] == 569
    assert back["data"]["class_counts"] == {"0": 212, "1": 357}
    assert back["software"]["scikit-learn"]
    assert back["validation"]["outer_folds"] == 10
    assert back["metrics"]["mean"]["roc_auc"] >= 0.99
    assert len(back["metrics"]["per_fold"]) == 10


def test_permutation_importance_and_coefficients(breast_cancer) -> None:
    X, y = breast_cancer
    rng = np.random.default_rng(0)
    Xn = X.assign(noise=rng.standard_normal(len(X)))
    model = build_classifier("logistic_regression", random_state=0).fit(Xn, y)
    imp = permutation_importance_table(model, Xn, y, n_repeats=3, random_state=0)
    assert list(imp.columns) == ["feature", "importance_mean", "importance_std"]
    assert imp["importance_mean"].is_monotonic_decreasing
    noise = float(imp.set_index("feature").loc["noise", "importance_mean"])
    assert abs(noise) < 0.01 < imp["importance_mean"].iloc[0]
    pipe = fitted_pipeline(model)
    assert pipe.named_steps["clf"].coef_.shape == (1, 31)
