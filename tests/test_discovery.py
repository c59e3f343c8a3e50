"""Tests of the per-case analyses of knowledge/ (mining, similar, decision, efficacy): case mining, associations, similar cases, kNN prediction,
classifier case prediction, efficacy evaluation, decision support.

Real data: the Wisconsin diagnostic breast cancer table bundled with scikit-learn, turned
into a case table with synthetic pseudonymous keys. Efficacy uses seeded synthetic cohorts
whose true effect is known. Tiny cohorts mirror the demo (1-2 patients, 1-3 ROIs each).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.datasets import load_breast_cancer, make_blobs
from sklearn.impute import SimpleImputer
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import LeaveOneOut, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from knowledge._common import numeric_feature_columns
from knowledge.cards import fitted_pipeline
from knowledge.decision import CasePredictionResult, decision_support, predict_cases
from knowledge.efficacy import evaluate_efficacy
from knowledge.mining import feature_associations, join_clinical, mine_cases
from knowledge.similar import predict_from_similar, similar_cases


def _expit(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@pytest.fixture(scope="module")
def cases() -> tuple[pd.DataFrame, list[str]]:
    """Breast-cancer case table: patient_key, 30 features, diagnosis (benign/malignant)."""
    data = load_breast_cancer(as_frame=True)
    feats = [c.replace(" ", "_") for c in data.data.columns]
    table = data.data.set_axis(feats, axis=1)
    table.insert(0, "patient_key", [f"pk-{i:04x}" for i in range(len(table))])
    table["diagnosis"] = np.where(data.target == 1, "benign", "malignant")
    return table, feats


def _tiny(n_patients: int, n_rois: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for r in range(n_rois):
            rows.append(
                {
                    "patient_key": f"pk{p}",
                    "roi": f"roi{r}",
                    "f1": rng.normal(),
                    "f2": rng.normal(),
                    "f3": 1.0,
                    "label": "ab"[p % 2],
                    "treatment": p % 2,
                    "outcome": float(p),
                }
            )
    return pd.DataFrame(rows)


def _json(obj: object) -> object:
    return json.loads(json.dumps(obj, allow_nan=False))


# ======================================================================== join_clinical


def _long_table(cases_table: pd.DataFrame, feats: list[str]) -> pd.DataFrame:
    sub = cases_table.iloc[:20]
    long = sub.melt(id_vars=["patient_key"], value_vars=feats[:3], var_name="feature", value_name="value")
    long["volume_key"] = "vk-" + long["patient_key"]
    long["roi"] = "GTV"
    return long


def test_join_clinical_pivots_and_joins(cases) -> None:
    table, feats = cases
    long = _long_table(table, feats)
    clinical = table.iloc[:15][["patient_key", "diagnosis"]].assign(age=np.arange(15) + 40)
    wide = join_clinical(long, clinical)
    assert len(wide) == 20
    assert list(wide.columns) == ["patient_key", "volume_key", "roi", *sorted(feats[:3]), "diagnosis", "age"]
    merged = wide.set_index("patient_key")
    for f in feats[:3]:
        np.testing.assert_array_equal(
            merged[f].to_numpy(), table.iloc[:20].set_index("patient_key")[f].to_numpy()
        )
    assert merged["diagnosis"].isna().sum() == 5  # left join keeps the imaged cases without clinical data
    assert len(join_clinical(long, clinical, how="inner")) == 15
    assert len(join_clinical(long, None)) == 20


def test_join_clinical_composite_feature_names() -> None:
    long = pd.DataFrame(
        {
            "patient_key": ["a", "a", "a", "b", "b", "b"],
            "roi": "1",
            "feature": ["cm.joint.max", "cm.joint.max", "morph.volume"] * 2,
            "aggregation": ["2d_avg", "3d_avg", np.nan] * 2,
            "value": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        }
    )
    wide = join_clinical(long, None, feature_column=("feature", "aggregation"))
    assert list(wide.columns) == [
        "patient_key",
        "roi",
        "cm.joint.max__2d_avg",
        "cm.joint.max__3d_avg",
        "morph.volume",
    ]
    assert wide["morph.volume"].tolist() == [3.0, 6.0]
    with pytest.raises(ValueError, match=r"duplicated \(case, feature\).*patient_key='a'"):
        join_clinical(long, None, feature_column="feature")


def test_join_clinical_errors_name_keys(cases) -> None:
    table, feats = cases
    long = _long_table(table, feats)
    dup_clin = pd.DataFrame({"patient_key": ["pk-0001", "pk-0001", "pk-0002"], "age": [1, 2, 3]})
    with pytest.raises(ValueError, match=r"duplicated 'patient_key'.*pk-0001"):
        join_clinical(long, dup_clin)
    with pytest.raises(ValueError, match="directly identifying column"):
        join_clinical(long, pd.DataFrame({"patient_key": ["pk-0001"], "PatientName": ["Doe^J"]}))
    with pytest.raises(ValueError, match="in both features and clinical"):
        join_clinical(long, pd.DataFrame({"patient_key": ["pk-0001"], "roi": ["x"]}))
    with pytest.raises(ValueError, match="rows with duplicated case keys"):
        join_clinical(table.iloc[[0, 0, 1]][["patient_key", feats[0]]], None)
    with pytest.raises(ValueError, match="non-numeric"):
        join_clinical(long.assign(value="high"), None)
    with pytest.raises(ValueError, match="how must be"):
        join_clinical(long, None, how="cross")
    with pytest.raises(ValueError, match="key 'subject' is not a column"):
        join_clinical(long, None, key="subject")


# ========================================================================= case mining


def test_mine_cases_recovers_known_clusters() -> None:
    X, truth = make_blobs(n_samples=90, centers=3, n_features=6, cluster_std=1.0, random_state=0)
    table = pd.DataFrame(X, columns=[f"f{i}" for i in range(6)])
    table.insert(0, "patient_key", [f"b{i}" for i in range(90)])
    table["constant"] = 5.0
    res = mine_cases(table, feature_columns=[*table.columns[1:]], random_state=0)
    assert res.status == "ok" and res.n_clusters == 3
    assert adjusted_rand_score(truth, res.assignments["cluster"]) == 1.0
    assert max(res.silhouette, key=res.silhouette.get) == 3
    assert res.features_dropped == {"constant": "constant"}
    assert res.profiles["n_cases"].tolist() == [30, 30, 30]
    assert set(res.top_features) == {0, 1, 2}
    _json(res.to_dict())


def test_mine_cases_breast_cancer(cases) -> None:
    table, feats = cases
    res = mine_cases(table, feature_columns=feats, random_state=0, label="diagnosis")
    assert res.status == "ok" and res.n_clusters == 2
    # unsupervised clusters align with the diagnosis (ARI 0.67 measured)
    assert adjusted_rand_score(table["diagnosis"], res.assignments["cluster"]) > 0.5
    assert (
        res.label_distribution is not None
        and res.label_distribution[["benign", "malignant"]].sum().sum() == 569
    )
    assert 2 <= res.n_components <= 30 and sum(res.explained_variance_ratio) == pytest.approx(1.0)
    fixed = mine_cases(table, feature_columns=feats, random_state=0, n_clusters=4)
    assert fixed.n_clusters == 4 and fixed.assignments["cluster"].nunique() == 4


# ==================================================================== associations


def test_feature_associations_mann_whitney_matches_scipy(cases) -> None:
    table, feats = cases
    rng = np.random.default_rng(0)
    noisy = table.assign(noise=rng.standard_normal(len(table)))
    res = feature_associations(noisy, label="diagnosis", feature_columns=[*feats, "noise"])
    assert res.status == "ok" and res.groups == ["benign", "malignant"]
    t = res.table.set_index("feature")
    f = "worst_perimeter"
    ref = stats.mannwhitneyu(
        table.loc[table.diagnosis == "malignant", f], table.loc[table.diagnosis == "benign", f]
    )
    assert t.loc[f, "p_value"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert t.loc[f, "effect"] == pytest.approx(ref.statistic / (212 * 357))
    assert t.loc[f, "effect"] > 0.95  # malignant tumours are larger
    np.testing.assert_allclose(
        res.table["q_value"], stats.false_discovery_control(res.table["p_value"], method="bh")
    )
    assert t.loc["noise", "q_value"] > 0.05
    assert res.table["p_value"].is_monotonic_increasing


def test_feature_associations_kruskal_and_spearman(cases) -> None:
    table, feats = cases
    rng = np.random.default_rng(1)
    t3 = table.assign(grade=pd.cut(table["worst_radius"], 3, labels=[1, 2, 3]).astype(int))
    res = feature_associations(t3, label="grade", feature_columns=feats[:5])
    assert res.outcome_kind == "categorical" and (res.table["test"] == "kruskal_wallis").all()
    cont = table.assign(score=table["mean_area"] + rng.normal(0, 100, len(table)))
    res = feature_associations(cont, label="score", feature_columns=["mean_area", "mean_texture"])
    assert res.outcome_kind == "continuous"
    row = res.table.set_index("feature").loc["mean_area"]
    assert row["test"] == "spearman" and row["effect"] > 0.8
    assert row["effect"] == pytest.approx(stats.spearmanr(cont["mean_area"], cont["score"])[0])


# ===================================================================== similar cases


def test_similar_cases_matches_brute_force(cases) -> None:
    table, feats = cases
    sub = table.iloc[:120].reset_index(drop=True)
    res = similar_cases(sub, feature_columns=feats, k=3, outcome_columns=["diagnosis"])
    assert res.status == "ok" and res.k == 3 and len(res.neighbours) == 360
    z = StandardScaler().fit_transform(sub[feats])
    d = np.linalg.norm(z[:, None, :] - z[None, :, :], axis=2)
    np.fill_diagonal(d, np.inf)
    nb = res.neighbours
    for i in (0, 17, 119):
        got = nb[nb["patient_key"] == sub.at[i, "patient_key"]].sort_values("rank")
        expect = np.argsort(d[i], kind="stable")[:3]
        assert got["neighbour_patient_key"].tolist() == sub.loc[expect, "patient_key"].tolist()
        np.testing.assert_allclose(got["distance"], d[i, expect])
        assert got["neighbour_diagnosis"].tolist() == sub.loc[expect, "diagnosis"].tolist()
    assert (nb["patient_key"] != nb["neighbour_patient_key"]).all()
    # query() of a reference case excludes the case itself and agrees with the table
    q = res.query(sub.iloc[17], k=3)
    assert (
        q["patient_key"].tolist()
        == nb[nb["patient_key"] == sub.at[17, "patient_key"]]["neighbour_patient_key"].tolist()
    )
    _json(res.to_dict())


def test_similar_cases_same_patient_exclusion() -> None:
    t = _tiny(3, 3, seed=2)
    incl = similar_cases(t, feature_columns=["f1", "f2"], k=8)
    excl = similar_cases(t, feature_columns=["f1", "f2"], k=8, exclude_same_patient=True)
    assert incl.neighbours["same_patient"].any()
    assert not excl.neighbours["same_patient"].any()
    assert excl.neighbours.groupby(["patient_key", "roi"]).size().eq(6).all()


# ================================================================ kNN case prediction


def test_predict_from_similar_equals_sklearn_knn_loo(cases) -> None:
    table, feats = cases
    sub = table.iloc[:80].reset_index(drop=True)
    res = predict_from_similar(sub, feature_columns=feats, label="diagnosis", k=5)
    assert res.status == "ok" and res.evaluation == "leave-one-patient-out"
    knn = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), KNeighborsClassifier(5))
    with threadpool_limits(limits=1):
        ref = cross_val_predict(knn, sub[feats], sub["diagnosis"], cv=LeaveOneOut())
    assert res.predictions["predicted"].tolist() == ref.tolist()


def test_predict_from_similar_breast_cancer_figures(cases) -> None:
    table, feats = cases
    res = predict_from_similar(table, feature_columns=feats, label="diagnosis", k=5)
    assert res.metrics["accuracy"] >= 0.95 and res.metrics["roc_auc"] >= 0.97
    assert res.positive_label == "malignant" and res.metrics["n_evaluated"] == 569
    cont = table.assign(area=table["mean_area"])
    reg = predict_from_similar(cont, feature_columns=[f for f in feats if "area" not in f], label="area", k=5)
    assert reg.outcome_kind == "continuous"
    baseline = np.mean(np.abs(cont["area"] - cont["area"].mean()))
    assert reg.metrics["mae"] < 0.3 * baseline and reg.metrics["spearman_rho"] > 0.9


# ======================================================= classifier case prediction


def test_predict_cases_and_decision_support(cases) -> None:
    table, feats = cases
    model = predict_cases(
        table,
        feature_columns=feats,
        label="diagnosis",
        kind="logistic_regression",
        outer_folds=5,
        inner_folds=3,
        param_grid={"C": [0.1, 1.0]},
        random_state=0,
    )
    assert model.status == "ok" and model.result is not None
    assert model.result.mean["roc_auc"] >= 0.99
    sim = similar_cases(table, feature_columns=feats, k=5, outcome_columns=["diagnosis"])
    row = table.iloc[10]
    ds = decision_support(row, model=model, similar=sim, n_driving_features=len(feats))
    assert _json(ds) == ds
    assert ds["status"] == "ok" and ds["case"] == {"patient_key": row["patient_key"]}
    pred = ds["prediction"]
    assert pred["predicted_label"] in ("benign", "malignant")
    assert 0.0 <= pred["interval"]["low"] <= pred["interval"]["high"] <= 1.0
    lo, hi = pred["fold_model_range"]
    assert lo <= hi
    assert pred["probabilities"]["malignant"] == pytest.approx(pred["probability"])
    cases_ = ds["similar_cases"]["cases"]
    assert len(cases_) == 5 and row["patient_key"] not in [c["patient_key"] for c in cases_]
    assert all(c["diagnosis"] in ("benign", "malignant") for c in cases_)
    assert sum(ds["similar_cases"]["outcome_counts"].values()) == 5
    # logistic-regression contributions are exact: they sum (with the intercept) to the log-odds
    pipe = fitted_pipeline(model.result.final_model)
    contrib = sum(f["contribution"] for f in ds["driving_features"]["features"])
    logit = pipe.decision_function(row[feats].to_frame().T.astype(float))[0]
    sign = 1.0 if pred["predicted_label"] == pipe.classes_[1] else -1.0
    assert contrib + sign * pipe.named_steps["clf"].intercept_[0] == pytest.approx(sign * logit)
    assert any("research use only" in c for c in ds["caveats"])
    assert not any("fewer than 30" in c for c in ds["caveats"])


def test_decision_support_occlusion_and_missing_features(cases) -> None:
    table, feats = cases
    sub = table.iloc[:60]
    model = predict_cases(
        sub,
        feature_columns=feats[:10],
        label="diagnosis",
        kind="svm",
        outer_folds=3,
        inner_folds=2,
        param_grid={"C": [1.0]},
        random_state=0,
    )
    row = sub.iloc[0].copy()
    row[feats[0]] = np.nan
    ds = decision_support(row, model=model.result, similar=None, n_driving_features=3)
    assert ds["status"] == "partial" and ds["similar_cases"]["status"] == "skipped"
    assert ds["driving_features"]["method"].startswith("occlusion")
    assert len(ds["driving_features"]["features"]) == 3
    assert any("imputed with training medians" in c for c in ds["caveats"])
    far = sub.iloc[0].copy()
    far[feats[1]] = 1e6
    ds2 = decision_support(far, model=model, similar=None)
    assert any("extrapolation" in c for c in ds2["caveats"])


# ============================================================================ efficacy


def test_efficacy_randomised_binary_recovers_risk_difference() -> None:
    rng = np.random.default_rng(0)
    n = 800
    t = rng.integers(0, 2, n)
    y = rng.random(n) < 0.3 + 0.2 * t  # true risk difference 0.20
    df = pd.DataFrame(
        {"patient_key": [f"p{i}" for i in range(n)], "arm": np.where(t, "new", "standard"), "event": y}
    )
    res = evaluate_efficacy(
        df, treatment="arm", outcome="event", treated_value="new", n_bootstrap=1000, random_state=0
    )
    assert res.status == "ok" and res.effect_measure == "risk_difference"
    assert res.treated_value == "new" and res.control_value == "standard" and res.positive_outcome is True
    assert res.ci[0] < 0.2 < res.ci[1] and res.ci[0] > 0.0
    assert res.p_value < 1e-4 and res.test == "fisher_exact"
    # bootstrap interval width agrees with the analytic (Wald) standard error
    p1, p0 = y[t == 1].mean(), y[t == 0].mean()
    se = np.sqrt(p1 * (1 - p1) / (t == 1).sum() + p0 * (1 - p0) / (t == 0).sum())
    assert res.ci[1] - res.ci[0] == pytest.approx(2 * 1.96 * se, rel=0.1)
    arms = res.arms.set_index("arm")
    assert arms.loc["treated", "n"] + arms.loc["control", "n"] == n
    assert res.effect == pytest.approx(arms.loc["treated", "mean"] - arms.loc["control", "mean"])
    # seeded: same seed, same interval; another seed, another interval
    again = evaluate_efficacy(
        df, treatment="arm", outcome="event", treated_value="new", n_bootstrap=1000, random_state=0
    )
    other = evaluate_efficacy(
        df, treatment="arm", outcome="event", treated_value="new", n_bootstrap=1000, random_state=1
    )
    assert again.ci == res.ci and other.ci != res.ci
    _json(res.to_dict())


def test_efficacy_bootstrap_ci_coverage() -> None:
    """Over 200 seeded trials the 95 % interval covers the true risk difference ~95 % of the time."""
    covered = 0
    for trial in range(200):
        rng = np.random.default_rng(1000 + trial)
        t = rng.integers(0, 2, 200)
        y = rng.random(200) < 0.3 + 0.2 * t
        res = evaluate_efficacy(
            pd.DataFrame({"t": t, "y": y}), treatment="t", outcome="y", n_bootstrap=500, random_state=trial
        )
        covered += res.ci[0] < 0.2 < res.ci[1]
    assert 0.90 <= covered / 200 <= 0.99  # binomial sd 0.015 around 0.95


def test_efficacy_confounded_continuous_adjustment() -> None:
    rng = np.random.default_rng(7)
    n = 500
    x = rng.standard_normal(n)
    t = (rng.random(n) < _expit(1.5 * x)).astype(int)
    y = 1.0 + 2.0 * t + 3.0 * x + rng.standard_normal(n)  # true effect 2.0
    df = pd.DataFrame({"treatment": t, "outcome": y, "x": x, "site": rng.choice(["A", "B"], n)})
    res = evaluate_efficacy(
        df, treatment="treatment", outcome="outcome", covariates=["x", "site"], random_state=0
    )
    assert res.outcome_kind == "continuous" and res.effect_measure == "mean_difference"
    assert res.ci[0] > 2.0  # the unadjusted difference is confounded by x
    adj = res.adjusted
    assert adj["status"] == "ok" and adj["ci"][0] < 2.0 < adj["ci"][1]
    assert adj["design_columns"] == ["intercept", "treatment", "x", "site_B"]


def test_efficacy_confounded_binary_adjustment() -> None:
    rng = np.random.default_rng(11)
    n = 2000
    x = rng.standard_normal(n)
    t = (rng.random(n) < _expit(x)).astype(int)
    y = (rng.random(n) < _expit(-0.5 + 1.0 * t + 1.0 * x)).astype(int)  # true log-OR 1.0
    true_rd = float(np.mean(_expit(0.5 + x) - _expit(-0.5 + x)))  # sample-average risk difference
    df = pd.DataFrame({"treatment": t, "outcome": y, "x": x})
    res = evaluate_efficacy(
        df, treatment="treatment", outcome="outcome", covariates=["x"], n_bootstrap=400, random_state=0
    )
    adj = res.adjusted
    assert res.status == "ok" and adj["status"] == "ok" and adj["bootstrap_failed"] == 0
    assert adj["log_odds_ratio_ci"][0] < 1.0 < adj["log_odds_ratio_ci"][1]
    assert adj["ci"][0] < true_rd < adj["ci"][1]
    assert res.effect > adj["ci"][1]  # crude risk difference overstates the effect


def test_efficacy_validation_and_small_arms() -> None:
    df = pd.DataFrame({"treatment": [0, 1, 2, 0, 1, 2], "outcome": [0.1, 0.2, 0.3, 0.1, 0.2, 0.3]})
    cat = evaluate_efficacy(
        df.assign(outcome=list("xqyzqx")),
        treatment="treatment",
        outcome="outcome",
        treated_value=2,
        control_value=0,
        random_state=0,
    )
    assert cat.status == "skipped" and "3 categories" in cat.reason
    with pytest.raises(ValueError, match="3 arms"):
        evaluate_efficacy(df, treatment="treatment", outcome="outcome", random_state=0)
    ok = evaluate_efficacy(
        df, treatment="treatment", outcome="outcome", treated_value=2, control_value=0, random_state=0
    )
    assert ok.status == "ok" and ok.effect == pytest.approx(0.2) and ok.n_cases == 4
    with pytest.raises(ValueError, match="confidence"):
        evaluate_efficacy(df, treatment="treatment", outcome="outcome", confidence=95, random_state=0)
    with pytest.raises(ValueError, match="not a column"):
        evaluate_efficacy(df, treatment="arm", outcome="outcome", random_state=0)
    small = evaluate_efficacy(df.iloc[:2], treatment="treatment", outcome="outcome", random_state=0)
    assert small.status == "skipped" and "at least 2 cases per arm" in small.reason


def test_efficacy_collapses_rois_per_patient() -> None:
    t = _tiny(6, 3)
    res = evaluate_efficacy(t, treatment="treatment", outcome="outcome", n_bootstrap=200, random_state=0)
    assert res.n_cases == 6 and any("collapsed to 6 patients" in n for n in res.notes)
    assert res.outcome_kind == "continuous" and res.effect == pytest.approx(1.0)  # odd minus even patients
    varying = t.assign(outcome=np.arange(len(t), dtype=float))
    res = evaluate_efficacy(varying, treatment="treatment", outcome="outcome", random_state=0)
    assert res.status == "skipped" and "differs between cases of the same patient" in res.reason


# ======================================================================= tiny cohorts


@pytest.mark.parametrize("n_patients,n_rois", [(1, 1), (1, 3), (2, 1), (2, 3)])
def test_tiny_cohorts_never_crash(n_patients: int, n_rois: int) -> None:
    t = _tiny(n_patients, n_rois)
    feats = ["f1", "f2", "f3"]
    results = {
        "mine": mine_cases(t, feature_columns=feats, random_state=0),
        "assoc": feature_associations(t, label="label", feature_columns=feats),
        "similar": similar_cases(t, feature_columns=feats, outcome_columns=["label"]),
        "knn": predict_from_similar(t, feature_columns=feats, label="label"),
        "model": predict_cases(t, feature_columns=feats, label="label", random_state=0),
        "efficacy": evaluate_efficacy(t, treatment="treatment", outcome="outcome", random_state=0),
    }
    for name, res in results.items():
        assert res.status in ("ok", "partial", "skipped"), name
        if res.status == "skipped":
            assert res.reason, name
        _json(res.to_dict())
    assert results["model"].status == "skipped"
    assert (
        "not enough labelled cases" in results["model"].reason
        or "two or more label classes" in results["model"].reason
    )
    assert results["knn"].status == "skipped"  # < 3 patients: no leave-one-patient-out
    ds = decision_support(t.iloc[0], model=results["model"], similar=results["similar"])
    _json(ds)
    assert ds["prediction"]["status"] == "skipped"
    assert ds["status"] == ("partial" if len(t) >= 2 else "skipped")


def test_small_cohort_prediction_adapts_folds(cases) -> None:
    table, feats = cases
    idx = list(range(0, 8))
    sub = table.iloc[idx][["patient_key", *feats[:5]]].reset_index(drop=True)
    labels = ["a", "b"] * 4
    # 8 patients with 2 ROIs each (the second ROI a 2 % perturbation of the first)
    rng = np.random.default_rng(0)
    roi2 = sub.copy()
    roi2[feats[:5]] = roi2[feats[:5]] * (1 + 0.02 * rng.standard_normal((8, 5)))
    t = pd.concat([sub.assign(roi="1", label=labels), roi2.assign(roi="2", label=labels)], ignore_index=True)
    res = predict_cases(
        t,
        feature_columns=feats[:5],
        label="label",
        kind="logistic_regression",
        param_grid={"C": [1.0]},
        random_state=0,
    )
    assert isinstance(res, CasePredictionResult) and res.status == "ok"
    assert res.grouped_by_patient and res.result.grouped and res.result.outer_folds <= 4
    assert "fewer than 30 labelled cases" in res.reason
    fold_of = pd.Series(res.result.oof_fold).groupby(t["patient_key"].to_numpy()).nunique()
    assert (fold_of == 1).all()
    ds = decision_support(t.iloc[0], model=res, similar=None)
    assert any("fewer than 30 training cases" in c for c in ds["caveats"])
    _json(res.to_dict())


# ================================================================ argument validation


def test_argument_validation(cases) -> None:
    table, feats = cases
    with pytest.raises(ValueError, match=r"feature_columns not in the table: \['nope'\]"):
        mine_cases(table, feature_columns=["nope"], random_state=0)
    with pytest.raises(TypeError, match="non-numeric"):
        similar_cases(table, feature_columns=["diagnosis"])
    with pytest.raises(ValueError, match="n_clusters must be >= 2"):
        mine_cases(table, feature_columns=feats, n_clusters=1, random_state=0)
    with pytest.raises(ValueError, match="random_state"):
        mine_cases(table, feature_columns=feats, random_state=-1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        similar_cases(table, feature_columns=feats, k=0)
    with pytest.raises(ValueError, match="metric must be one of"):
        similar_cases(table, feature_columns=feats, metric="chebyshev")
    with pytest.raises(ValueError, match="weights must be one of"):
        predict_from_similar(table, feature_columns=feats, label="diagnosis", weights="gaussian")
    with pytest.raises(ValueError, match="label 'grade' is not a column"):
        feature_associations(table, label="grade")
    with pytest.raises(ValueError, match="patient_key"):
        similar_cases(table.drop(columns="patient_key"), feature_columns=feats)
    with pytest.raises(TypeError, match="sequence of column names"):
        similar_cases(table, feature_columns="mean_radius")
    with pytest.raises(ValueError, match="infinite"):
        similar_cases(table.assign(mean_radius=np.inf), feature_columns=feats)
    assert numeric_feature_columns(table) == feats


def test_multiclass_decision_support_and_continuous_label() -> None:
    from sklearn.datasets import load_iris

    data = load_iris(as_frame=True)
    feats = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    t = data.data.set_axis(feats, axis=1)
    t.insert(0, "patient_key", [f"k{i:03d}" for i in range(150)])
    t["species"] = data.target.map(dict(enumerate(data.target_names)))
    model = predict_cases(
        t,
        feature_columns=feats,
        label="species",
        kind="svm",
        outer_folds=3,
        inner_folds=2,
        param_grid={"C": [1.0]},
        random_state=0,
    )
    assert model.status == "ok" and model.result.positive_label is None
    assert model.result.mean["accuracy"] >= 0.9
    ds = decision_support(t.iloc[0], model=model, similar=None)
    probs = ds["prediction"]["probabilities"]
    assert set(probs) == set(data.target_names) and sum(probs.values()) == pytest.approx(1.0)
    assert ds["prediction"]["predicted_label"] == "setosa"
    assert "interval" not in ds["prediction"]  # the calibrated interval is defined for binary labels only
    cont = predict_cases(
        t.assign(size=t["sepal_length"] * 1.37), feature_columns=feats[1:], label="size", random_state=0
    )
    assert cont.status == "skipped" and "looks continuous" in cont.reason
