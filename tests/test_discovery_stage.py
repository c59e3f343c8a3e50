"""The discovery stage on a real labelled case base: honest prediction, faithful rules, models saved as artifacts."""

import json

import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import roc_auc_score

from medflow.config import DiscoveryConfig
from storage.models import load_model
from storage.workspace import Workspace, atomic_folder

ROLES = {"columns": [
    {"name": "case_id", "role": "identifier", "type": "categorical"},
    {"name": "diagnosis", "role": "post_baseline", "type": "categorical"},
    {"name": "malignant", "role": "label", "type": "binary",
     "derive": {"source": "diagnosis", "equals": ["malignant"]}},
]}


@pytest.fixture(scope="module")
def case_base(tmp_path_factory):
    """569 cases of image-derived features (scikit-learn's breast-cancer table) as a long feature table."""
    data = load_breast_cancer(as_frame=True)
    X, y = data.data, data.target.map({0: "malignant", 1: "benign"})
    keys = [f"P{i:04d}" for i in range(len(X))]
    long = X.assign(patient_key=keys, volume_key=[f"R{i:04d}v0" for i in range(len(X))]).melt(
        id_vars=["patient_key", "volume_key"], var_name="feature", value_name="value")
    long = long.assign(roi_name="GTV", roi_source="rtstruct", modality="CT", family="fna", aggregation="")
    ws = Workspace(tmp_path_factory.mktemp("ws")).ensure()
    with atomic_folder(ws.root / "artifacts" / "analysis" / "bc") as stage:
        long.to_parquet(stage / "features.parquet", index=False)
        pd.DataFrame({"patient_key": keys, "diagnosis": y.to_numpy()}).to_parquet(stage / "clinical.parquet",
                                                                                  index=False)
    return ws, ws.ref("features", ws.root / "artifacts/analysis/bc/features.parquet"), \
        ws.ref("clinical", ws.root / "artifacts/analysis/bc/clinical.parquet"), X, y


def test_discovery_trains_saves_and_reports_models(case_base):
    from tasks.discovery import discover

    ws, feats, clin, X, y = case_base
    params = DiscoveryConfig(roles=ROLES, classifier="svm", outer_folds=5, inner_folds=3, n_bootstrap=100,
                             n_permutations=5, casebase=None)
    out = discover.fn(str(ws.root), [feats], clin, params)
    assert out.n_cases == len(X)
    folder = ws.resolve(out.results).parent
    results = json.loads(ws.resolve(out.results).read_text())
    assert results["mode"] == "cohort" and results["label"]["name"] == "malignant"
    pred = results["prediction"]
    assert pred["status"] == "ok", pred.get("reason")
    img = pred["models"]["imaging"]
    # nested cross-validated figures of the stage's SVM, feature selection inside the folds (the issue's
    # >= 0.96 accuracy of the plain scaled RBF SVM on all 30 features is knowledge's own test)
    assert img["accuracy"] >= 0.93 and img["auc"] >= 0.98, img
    assert img["auc_ci"][0] <= img["auc"] <= img["auc_ci"][1]
    assert pred["null"]["auc_mean"] < 0.7
    # the label's source never enters a model
    assert not any("diagnosis" in f for m in pred["models"].values() for f in m.get("selected_features") or [])
    # rules reproduce the tree on every case
    assert results["tree"]["fidelity"] == 1.0
    assert all(line.startswith("IF ") and " THEN " in line for line in results["tree"]["text"]["en"])
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["prediction"]["models"]["imaging"]["auc"] == img["auc"]
    assert metrics["provenance"]["inputs"]
    rules = (folder / "rules.txt").read_text()
    assert "IF " in rules and "决策树规则" in (folder / "rules.zh.txt").read_text()
    cases = pd.read_parquet(folder / "casebase.parquet")
    assert len(cases) == len(X) and "malignant" in cases.columns
    assert "imaging" in {m.meta["model"] for m in out.models}
    assert "clinical" not in {m.meta["model"] for m in out.models}  # no clinical predictor declared
    if out.models:  # the fitted model loads back and predicts
        card = json.loads((ws.resolve(out.models[0]) / "card.json").read_text())
        model = load_model(ws.resolve(out.models[0]) / "model.joblib")
        wide = cases[card["feature_columns"]].to_numpy(dtype=float)
        score = model.predict_proba(wide)[:, 1] if hasattr(model, "predict_proba") else model.decision_function(wide)
        assert roc_auc_score(cases["malignant"], score) > 0.98
