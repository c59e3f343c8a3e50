"""Kaplan-Meier, log-rank, Cox and concordance against hand computations and known effects."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from knowledge.survival import CoxModel, concordance, kaplan_meier, logrank, univariate_cox_scores


def test_kaplan_meier_by_hand():
    t = np.array([1, 2, 2, 3, 4.0])
    e = np.array([1, 1, 0, 1, 0])
    km = kaplan_meier(t, e)
    # S(1) = 4/5; S(2) = 4/5 * 3/4 (censored at 2 still at risk); S(3) = 0.6 * 1/2
    assert km["t"][:4] == [0.0, 1.0, 2.0, 3.0]
    assert km["s"][:4] == pytest.approx([1.0, 0.8, 0.6, 0.3])
    assert km["n"] == 5 and km["events"] == 3
    assert all(lo <= s <= hi for lo, s, hi in zip(km["lo"], km["s"], km["hi"], strict=True))


def test_logrank_separates_different_hazards_and_not_equal_ones():
    rng = np.random.default_rng(0)
    t = np.r_[rng.exponential(1.0, 80), rng.exponential(3.0, 80)]
    e = np.ones(160, dtype=int)
    g = np.r_[np.zeros(80), np.ones(80)]
    assert logrank(t, e, g)["p"] < 1e-4
    same = logrank(rng.exponential(1.0, 160), e, g)
    assert same["p"] > 0.01
    with pytest.raises(ValueError, match="two groups"):
        logrank(t, e, np.zeros(160))


def test_concordance_matches_brute_force_and_extremes():
    rng = np.random.default_rng(1)
    t = np.round(rng.exponential(10, 40)) + 1
    e = rng.integers(0, 2, 40)
    r = rng.normal(size=40)
    num = den = 0.0
    for i in range(40):
        for j in range(40):
            if e[i] and (t[i] < t[j] or (t[i] == t[j] and not e[j])):
                den += 1
                num += 1.0 if r[i] > r[j] else 0.5 if r[i] == r[j] else 0.0
    assert concordance(t, e, r) == pytest.approx(num / den)
    assert concordance(t, np.ones(40), -t) == 1.0
    assert concordance(t, np.ones(40), t) == 0.0


def test_cox_recovers_a_known_hazard_ratio():
    rng = np.random.default_rng(2)
    n = 1500
    x = rng.normal(size=n)
    w = rng.normal(size=n)
    t = rng.exponential(1.0 / np.exp(0.7 * x))
    c = rng.exponential(2.0, n)
    time, event = np.minimum(t, c), (t <= c).astype(int)
    X = pd.DataFrame({"x": x, "w": w})
    model = CoxModel(penalizer=0.0).fit(X, time, event)
    per_unit = model.beta_ / model.scale_
    assert per_unit[0] == pytest.approx(0.7, abs=0.08)
    assert abs(per_unit[1]) < 0.08
    summary = model.summary()
    assert summary[0]["p"] < 1e-10 and summary[1]["p"] > 0.01
    assert summary[0]["ci"][0] < summary[0]["hr"] < summary[0]["ci"][1]
    assert concordance(time, event, model.risk(X)) > 0.65
    scores = univariate_cox_scores(X, time, event)
    assert scores["x"] > 10 > scores["w"]
    with pytest.raises(ValueError, match="penalizer"):
        CoxModel(penalizer=-1)


def test_discover_survival_without_a_label_uses_the_out_of_fold_cox_risk():
    import knowledge
    from knowledge.roles import CaseSchema

    rng = np.random.default_rng(0)
    n = 40
    x = rng.normal(size=n)
    t = rng.exponential(1.0 / np.exp(1.2 * x))
    table = pd.DataFrame({"patient_key": [f"p{i}" for i in range(n)], "ev": np.ones(n), "tm": t,
                          "CT:GTV:x": x, "CT:GTV:noise": rng.normal(size=n)})
    schema = CaseSchema(columns=[{"name": "ev", "role": "event", "type": "binary"},
                                 {"name": "tm", "role": "time", "time_of": "ev"}])
    res = knowledge.discover(table, schema, label=None, n_bootstrap=10, n_permutations=0)
    sv = res["survival"]
    assert sv["status"] == "ok" and sv["risk_source"] == "out-of-fold Cox risk"
    assert sv["cox"]["c_index_oof"] > 0.6 and sv["cox"]["imaging_chosen_in_folds"]["CT:GTV:x"] == 5
    assert sv["logrank"]["p"] < 0.05 and set(sv["groups"].values()) == {"high", "low"}
    no_cov = knowledge.discover(table[["patient_key", "ev", "tm"]], schema, label=None, n_bootstrap=10,
                                n_permutations=0)
    assert no_cov["survival"]["status"] == "skipped" and "covariate" in no_cov["survival"]["reason"]
