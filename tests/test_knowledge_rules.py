"""Tree rules reproduce the tree on every case; association rules and cluster profiles are right."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _knowledge_synth import STS_SCHEMA, long_features, read_clinical
from sklearn.datasets import load_breast_cancer, make_blobs
from sklearn.metrics import adjusted_rand_score
from sklearn.tree import DecisionTreeClassifier

from knowledge.casebase import patient_case_base
from knowledge.roles import CaseSchema, apply_schema
from knowledge.rules import (
    apply_rules,
    association_rules,
    cluster_profiles,
    discretise,
    parse_rule,
    rule_text,
    tree_rules,
)

RULE = r"^IF .+ THEN .+ \(\d+ cases, \d+ of \d+ correct\)$"


def _check_faithful(X: pd.DataFrame, y: np.ndarray, depth: int) -> dict:
    tree = DecisionTreeClassifier(max_depth=depth, random_state=0).fit(X.to_numpy(), y)
    names = {c: f"class {c}" for c in np.unique(y)}
    res = tree_rules(tree, X, y, class_names=names)
    assert res["fidelity"] == 1.0
    # independently: parse the printed English lines and evaluate them on the table
    parsed = [parse_rule(line) for line in res["text"]["en"]]
    fired = apply_rules(parsed, X)
    expected = [names[v] for v in tree.predict(X.to_numpy())]
    assert fired == expected
    assert sum(r["n"] for r in res["rules"]) == len(X)
    for r, line in zip(res["rules"], res["text"]["en"], strict=True):
        assert pd.Series([line]).str.match(RULE).all(), line
        members = apply_rules([parse_rule(line)], X)
        assert sum(m is not None for m in members) == r["n"]
    leaves = [n for n in res["nodes"] if n["feature"] is None]
    assert len(leaves) == len(res["rules"])
    return res


@pytest.mark.parametrize("depth", [2, 3, 5])
def test_tree_rules_are_faithful_on_breast_cancer(depth):
    data = load_breast_cancer(as_frame=True)
    res = _check_faithful(data.data, data.target.to_numpy(), depth)
    assert res["accuracy"] > 0.9


def test_tree_rules_are_faithful_on_an_sts_like_table(shared_data):
    clinical = read_clinical(shared_data)
    schema = CaseSchema.model_validate(STS_SCHEMA)
    y = apply_schema(clinical, schema)["lung_mets"].to_numpy()
    cb = patient_case_base(long_features(list(clinical["Patient ID"]), y, n_noise=30), clinical, schema=schema)
    cols = [c for c in cb.feature_columns + cb.clinical_columns]
    X = cb.table[cols].fillna(cb.table[cols].median()).fillna(0.0)
    _check_faithful(X, y.astype(int), 4)


def test_rule_format_and_chinese_twin():
    rule = {"conditions": [{"feature": "PT:GTV:stat.max", "op": ">", "threshold": 2.5, "text": "2.5"},
                           {"feature": "clin:Age", "op": "<=", "threshold": 60.0, "text": "60"}],
            "class": "lung_mets", "n": 7, "correct": 6}
    en = rule_text(rule, "en")
    assert en == "IF PT:GTV:stat.max > 2.5 AND clin:Age <= 60 THEN lung_mets (7 cases, 6 of 7 correct)"
    assert parse_rule(en)["conditions"][1] == {"feature": "clin:Age", "op": "<=", "threshold": 60.0}
    zh = rule_text(rule, "zh")
    assert "如果" in zh and "2.5" in zh and "60" in zh and "7" in zh
    with pytest.raises(ValueError, match="not a rule line"):
        parse_rule("lung_mets if big")


def test_association_rules_support_confidence_lift_by_hand():
    # 10 cases: A in 0-5, B in 0-3, label in 0-4 -> rule A => y: support 5/10? (A & y) = cases 0-4 -> 0.5
    n = 10
    items = pd.DataFrame({"A": np.arange(n) < 6, "B": np.arange(n) < 4, "y=1": np.arange(n) < 5,
                          "y=0": np.arange(n) >= 5})
    found = association_rules(items, consequents=["y=1", "y=0"], min_support=0.1, min_confidence=0.5)
    rule = next(r for r in found if r["antecedent"] == ["A"] and r["consequent"] == ["y=1"])
    assert rule["support"] == pytest.approx(0.5)
    assert rule["confidence"] == pytest.approx(5 / 6)
    assert rule["lift"] == pytest.approx((5 / 6) / 0.5)
    ab = next(r for r in found if r["antecedent"] == ["A", "B"] and r["consequent"] == ["y=1"])
    assert ab["confidence"] == pytest.approx(1.0) and ab["lift"] == pytest.approx(2.0)
    assert all(r["consequent"][0] in ("y=1", "y=0") for r in found)
    lifts = [r["lift"] for r in found]
    assert lifts == sorted(lifts, reverse=True)


def test_discretise_makes_tertiles():
    table = pd.DataFrame({"x": np.arange(9, dtype=float), "c": list("aabbbcccc")})
    items = discretise(table, ["x"], ["c"])
    assert items[["x low", "x mid", "x high"]].sum().tolist() == [3, 3, 3]
    assert items["c=c"].sum() == 4


def test_clusters_recover_blobs_and_name_the_distinguishing_feature():
    X, labels = make_blobs(n_samples=40, centers=[[0, 0, 0], [6, 0, 0]], cluster_std=1.0, random_state=0)
    table = pd.DataFrame(X, columns=["f0", "f1", "f2"])
    res = cluster_profiles(table, ["f0", "f1", "f2"], [f"p{i}" for i in range(40)], random_state=0)
    assert res["k"] == 2
    assert adjusted_rand_score(labels, list(res["assignments"].values())) == 1.0
    for prof in res["profiles"]:
        assert prof["distinguishing"][0]["feature"] == "f0"
        assert abs(prof["distinguishing"][0]["effect_size"]) > 3
    assert "Cluster" in res["text"]["en"][0] and "簇" in res["text"]["zh"][0]
