"""The real cohort as a user runs it: `medflow run sts_cohort/dicom --clinical clinical.csv --config docs/sts_cohort.yaml`."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from _sts_shared import sts_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sts(shared_data):
    return sts_run(str(shared_data))


def test_cohort_report_has_every_section(sts):
    res = json.loads(sts["discovery"].read_text())
    assert res["mode"] == "cohort"
    assert res["cohort"]["n_patients"] == 26 and res["cohort"]["modalities"] == {"CT": 26, "MR": 26, "PT": 26}
    assert res["label"]["name"] == "lung_mets" and res["label"]["n_positive"] == 10
    pred = res["prediction"]
    assert pred["status"] == "ok", pred.get("reason")
    assert set(pred["models"]) == {"imaging+clinical", "imaging", "clinical"}
    for m in pred["models"].values():
        assert 0 <= m["auc_ci"][0] <= m["auc"] <= m["auc_ci"][1] <= 1
        assert len(m["oof"]) == 26
    assert pred["null"]["n_permutations"] == 200 and 0 < pred["null"]["p_value"] <= 1
    assert res["tree"]["fidelity"] == 1.0
    assert res["survival"]["status"] == "ok" and 0 <= res["survival"]["cox"]["c_index"] <= 1
    assert res["efficacy"]["status"] == "ok" and len(res["efficacy"]["arms"]) == 3
    assert res["efficacy"]["caveat"]["en"] and res["efficacy"]["caveat"]["zh"]
    assert res["similar"]["status"] == "ok" and 0 <= res["similar"]["loo_agreement"] <= 1
    assert len(res["patients"]) == 26


def test_nothing_known_after_baseline_enters_a_model(sts):
    res = json.loads(sts["discovery"].read_text())
    schema = sts["config"].discovery.resolved().roles
    banned = [c["name"] for c in schema["columns"] if c["role"] != "predictor"]
    banned.append("Outcome")
    for model in res["prediction"]["models"].values():
        for feature in model["selected_features"]:
            assert not any(b in feature for b in banned), feature
    cases = pd.read_parquet(sts["discovery"].with_name("casebase.parquet"))
    assert not [c for c in cases.columns if c.startswith("clin:") and ("follow-up" in c or "outcome" in c.lower())]


def test_outputs_and_no_phi(sts):
    folder = sts["discovery"].parent
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["prediction"]["models"]["imaging+clinical"]["auc"] is not None
    rules = (folder / "rules.txt").read_text()
    assert re.search(r"^IF .+ THEN .+ \(\d+ cases, \d+ of \d+ correct\)$", rules, re.M), rules[:500]
    html = sts["report"].read_text()
    for plot in ("roc", "calibration", "km", "tree"):
        assert f"data-plot='{plot}'" in html, plot
    assert "skipped" not in html.lower()
    raw_ids = pd.read_csv(sts["cohort"] / "clinical.csv", dtype=str)["Patient ID"]
    for text in (html, sts["discovery"].read_text(), rules):
        assert not any(pid in text for pid in raw_ids)


def test_rerun_is_cached(sts):
    from flows.pipeline import pipeline

    again = pipeline(sts["config"])
    states = {t["task"]: t["state"] for t in again["tasks"]["detail"]}
    assert states["discover"] == "Cached" and states["report"] == "Cached"
