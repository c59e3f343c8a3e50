"""The discovery stage on a real labelled case base: cross-validated models saved as artifacts with their metrics."""

import json

import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import roc_auc_score

from medflow.config import DiscoveryConfig
from storage.models import load_model
from storage.workspace import Workspace, atomic_folder


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
        pd.DataFrame({"patient_key": keys, "label": y.to_numpy()}).to_parquet(stage / "clinical.parquet", index=False)
    return ws, ws.ref("features", ws.root / "artifacts/analysis/bc/features.parquet"), \
        ws.ref("clinical", ws.root / "artifacts/analysis/bc/clinical.parquet"), X, y


def test_discovery_trains_saves_and_reports_models(case_base):
    from tasks.discovery import discover

    ws, feats, clin, X, y = case_base
    out = discover.fn(str(ws.root), [feats], clin, DiscoveryConfig(classifiers=("svm",), cv_folds=10))
    assert out.n_cases == len(X)
    results = json.loads(ws.resolve(out.results).read_text())
    svm = results["modalities"]["CT"]["prediction"]["svm"]
    assert svm["status"] == "ok", svm.get("reason")
    cv = svm["model_card"]["metrics"]["mean"]
    # nested cross-validated figures of the scaled RBF SVM (issue 5: accuracy >= 0.96, ROC AUC >= 0.99)
    assert cv["accuracy"] >= 0.96 and cv["roc_auc"] >= 0.99, cv
    assert len(out.models) == 1
    folder = ws.resolve(out.models[0])
    card = json.loads((folder / "card.json").read_text())
    model = load_model(folder / "model.joblib")
    wide = X.rename(columns=lambda c: f"fna.{c}")[card["feature_columns"]]
    proba = model.predict_proba(wide)[:, list(model.classes_).index("malignant")]
    assert roc_auc_score(y == "malignant", proba) > 0.99
    assert card["kind"] == "svm" and card["label"] == "label"
    # every case gets a decision-support summary with its similar cases
    assert len(results["modalities"]["CT"]["decision_support"]) == len(X)
