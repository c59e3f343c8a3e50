"""Honest prediction: selection inside the folds (noise stays at chance), real signal is found,
bootstrap/calibration/permutation null behave; the full discover contract; place_cases trains on
stored patients only."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from _knowledge_synth import STS_SCHEMA, long_features, read_clinical

import knowledge
from knowledge import prediction
from knowledge.casebase import patient_case_base
from knowledge.roles import CaseSchema, apply_schema


def _noise(n=40, p=2000, seed=0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, p)), columns=[f"CT:GTV:f{j}" for j in range(p)])
    y = np.r_[np.zeros(n // 2), np.ones(n - n // 2)].astype(int)
    return X, y, np.array([f"p{i}" for i in range(n)])


def test_feature_selection_inside_folds_keeps_noise_at_chance():
    X, y, g = _noise()
    res = prediction.nested_oof(X, y, g, kind="logistic_regression", outer_folds=5, inner_folds=3, random_state=0)
    # selecting the best of 2000 noise features on all patients first would give an AUC near 1
    assert 0.2 < res.auc < 0.75
    assert np.isfinite(res.oof).all() and len(res.chosen_params) == 5
    null = prediction.permutation_null(X, y, g, observed=res.auc, kind="logistic_regression", outer_folds=5,
                                       inner_folds=3, n_permutations=20, random_state=0,
                                       fixed_params=res.most_chosen())
    assert null["p_value"] > 0.05 and null["n_permutations"] == 20


def test_signal_is_found_with_a_confident_interval():
    X, y, g = _noise(p=300, seed=1)
    X["PT:GTV:signal"] = y * 3.5 + np.random.default_rng(5).normal(size=len(y))
    res = prediction.nested_oof(X, y, g, kind="logistic_regression", outer_folds=5, inner_folds=3, random_state=0)
    assert res.auc > 0.85 and res.selection_counts["PT:GTV:signal"] == 5
    lo, hi = prediction.bootstrap_auc(y, res.oof, n_bootstrap=500, random_state=0)
    assert lo < res.auc < hi and lo > 0.7
    cal = prediction.calibration_table(y, res.oof)
    assert sum(cal["count"]) == len(y) and cal["mean_predicted"] == sorted(cal["mean_predicted"])
    null = prediction.permutation_null(X, y, g, observed=res.auc, kind="logistic_regression", outer_folds=5,
                                       inner_folds=3, n_permutations=30, random_state=0,
                                       fixed_params=res.most_chosen())
    assert null["p_value"] == pytest.approx(1 / 31) and null["auc_mean"] < 0.7


def test_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 50)
    s = np.round(rng.normal(size=50), 1)  # ties
    assert prediction.auc_score(y, s) == pytest.approx(roc_auc_score(y, s))


@pytest.fixture(scope="module")
def sts_like(shared_data):
    clinical = read_clinical(shared_data)
    schema = CaseSchema.model_validate(STS_SCHEMA)
    y = apply_schema(clinical, schema)["lung_mets"].to_numpy()
    feats = long_features(list(clinical["Patient ID"]), y, n_noise=60, signal=2.5, missing_mr=("STS_003",))
    return patient_case_base(feats, clinical, schema=schema), schema


def test_discover_fills_the_contract(sts_like):
    cb, schema = sts_like
    before = cb.table.copy()
    res = knowledge.discover(cb.table, schema, label=None, classifier="logistic_regression", outer_folds=5,
                             inner_folds=3, n_bootstrap=200, n_permutations=10, k_similar=3, max_tree_depth=3,
                             random_state=0, lang="zh")
    pd.testing.assert_frame_equal(cb.table, before)
    json.dumps(res, allow_nan=True)
    for key in ("cohort", "label", "prediction", "tree", "associations", "clusters", "survival", "efficacy",
                "similar", "patients", "text"):
        assert key in res
        assert res[key].get("status", "ok") == "ok", (key, res[key].get("reason"))
    assert res["cohort"]["n_patients"] == 26 and res["cohort"]["modalities"] == {"CT": 26, "MR": 25, "PT": 26}
    assert res["cohort"]["missing"] == {"STS_003": ["MR"]}
    assert res["label"] == {"name": "lung_mets", "positive": 1, "n_positive": 10, "n_negative": 16, "n_unknown": 0}
    models = res["prediction"]["models"]
    assert set(models) == {"imaging+clinical", "imaging", "clinical"}
    main = models["imaging+clinical"]
    assert main["auc"] > 0.8 and main["auc_ci"][0] < main["auc"] < main["auc_ci"][1]
    assert len(main["oof"]) == 26 and set(main["roc"]) == {"fpr", "tpr"}
    assert sum(main["calibration"]["count"]) == 26
    assert any(c.startswith("PT:GTV:stat.signal") for c in main["selected_features"])
    assert res["prediction"]["null"]["p_value"] < 0.2
    assert set(res["prediction"]["verdict"]) == {"en", "zh"}
    assert res["tree"]["fidelity"] == 1.0
    assert res["survival"]["cox"]["c_index"] > 0.5 and set(res["survival"]["km"]) == {"low", "high"}
    assert 0 <= res["survival"]["logrank"]["p"] <= 1
    eff = res["efficacy"]
    assert eff["treatment"] == "Treatment" and sum(a["n"] for a in eff["arms"]) == 26 and "zh" in eff["caveat"]
    assert res["similar"]["loo_agreement"] > 0.6 and len(res["similar"]["neighbours"]["STS_001"]) == 3
    assert all(n["patient_key"] != "STS_001" for n in res["similar"]["neighbours"]["STS_001"])
    p = res["patients"]["STS_003"]
    assert p["missing_modalities"] == ["MR"] and "no MR images" in p["qc_flags"]
    assert 0 <= p["risk"] <= 1 and p["risk_ci"][0] <= p["risk_ci"][1]
    assert len(p["rules_fired"]["en"]) == 1 and p["survival_group"] in ("high", "low")
    assert set(res["text"]) == {"en", "zh"} and "lung_mets" in res["text"]["zh"]["label"]


def test_small_cohort_reports_skipped_sections_with_reasons(sts_like):
    cb, schema = sts_like
    tiny = cb.table.iloc[:3]
    res = knowledge.discover(tiny, schema, label="lung_mets", n_bootstrap=10, n_permutations=0)
    assert res["prediction"]["status"] == "skipped" and "2 patients of each class" in res["prediction"]["reason"]
    assert res["survival"]["status"] == "skipped" and res["survival"]["reason"]
    with pytest.raises(ValueError, match="outer_folds"):
        knowledge.discover(tiny, schema, label=None, outer_folds=1)


def test_place_cases_never_trains_on_the_new_patients(sts_like):
    cb, schema = sts_like
    stored, new = cb.table.iloc[4:].reset_index(drop=True), cb.table.iloc[:4].reset_index(drop=True)
    kwargs = dict(k_similar=3, label="lung_mets", random_state=0)
    a = knowledge.place_cases(new.drop(columns=["lung_mets"]), stored, schema, **kwargs)
    # changing the new patients' features changes only their own placement, not the model
    moved = new.copy()
    moved.loc[0, [c for c in cb.feature_columns if c.startswith("CT:")]] += 5.0
    b = knowledge.place_cases(moved, stored, schema, **kwargs)
    assert a["model"] == b["model"]
    assert a["patients"]["STS_006"] == b["patients"]["STS_006"]
    assert set(a["patients"]) == set(new["patient_key"])
    for entry in a["patients"].values():
        assert 0 <= entry["risk"] <= 1 and len(entry["similar"]) == 3
        assert {s["patient_key"] for s in entry["similar"]} <= set(stored["patient_key"])
        assert entry["survival_group"] in ("high", "low") and entry["rules_fired"]["en"]


def test_timepoints_are_rows_but_folds_and_neighbours_stay_per_patient():
    keys = [f"P{i:02d}" for i in range(12)]
    y = np.array([0, 1] * 6)
    first = long_features(keys, y, n_noise=8, signal=3.0).assign(timepoint="t0")
    second = long_features(keys, y, n_noise=8, signal=3.0, seed=1).assign(timepoint="t1")
    second["volume_key"] += "-t1"
    cb = patient_case_base(pd.concat([first, second], ignore_index=True))
    table = cb.table.assign(lab=np.repeat(y, 2))
    assert table[["patient_key", "timepoint"]].head(2).to_numpy().tolist() == [["P00", "t0"], ["P00", "t1"]]
    schema = CaseSchema(columns=[{"name": "lab", "role": "label", "type": "binary"}])
    res = knowledge.discover(table, schema, label="lab", n_bootstrap=50, n_permutations=0)
    assert len(res["patients"]) == 24 and "P00@t1" in res["patients"]
    assert res["similar"]["n"] == 24
    assert res["prediction"]["models"]["imaging"]["auc"] > 0.8


def test_loo_neighbour_is_never_the_same_patient_at_another_timepoint():
    from knowledge.cbr import loo_agreement

    rng = np.random.default_rng(0)
    base = rng.normal(size=(20, 6))
    table = pd.DataFrame(np.repeat(base, 2, axis=0), columns=[f"CT:GTV:f{j}" for j in range(6)])
    y = np.repeat(rng.integers(0, 2, 20), 2)
    groups = np.repeat([f"P{i}" for i in range(20)], 2)
    cols = list(table.columns)
    assert loo_agreement(table, cols, y, n_features=0)["loo_agreement"] == 1.0  # the twin row answers
    honest = loo_agreement(table, cols, y, n_features=0, groups=groups)
    assert honest["n"] == 40 and honest["loo_agreement"] < 0.9


def test_place_cases_with_no_new_patient_reports_why(sts_like):
    # a run whose only patient was quarantined has nothing to place: a reason, not a crash
    cb, schema = sts_like
    res = knowledge.place_cases(cb.table.iloc[:0].drop(columns=["lung_mets"]), cb.table, schema, label="lung_mets")
    assert res["patients"] == {} and res["model"]["status"] == "skipped"
    assert "no new patient" in res["model"]["reason"]
