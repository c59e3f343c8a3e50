"""Patient-level multimodal case base: naming, missing modalities, clinical one-hot without imputation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _knowledge_synth import STS_SCHEMA, long_features, read_clinical

from knowledge.casebase import modality_code, patient_case_base, roi_role
from knowledge.roles import CaseSchema, apply_schema


def test_names_roles_and_modalities():
    assert [modality_code(m) for m in ("CT", "PT", "PET", "MR", "MR_T1")] == ["CT", "PT", "PT", "MR", "MR"]
    assert roi_role("GTV_Mass_CT") == "GTV" and roi_role("liver", "auto") == "auto"


def test_patient_case_base_on_the_sts_sheet(shared_data):
    clinical = read_clinical(shared_data)
    schema = CaseSchema.model_validate(STS_SCHEMA)
    keys = list(clinical["Patient ID"])
    y = apply_schema(clinical, schema)["lung_mets"].to_numpy()
    feats = long_features(keys, y, n_noise=5, missing_mr=("STS_003", "STS_010"))
    # columns are named family.feature as the per-ROI case table names them; an auto mask is left out by default
    feats.loc[feats.index[0], "feature"] = "mean"
    auto = feats.iloc[:3].assign(roi_source="auto", roi_name="blob1")
    before = feats.copy()
    cb = patient_case_base(pd.concat([feats, auto], ignore_index=True), clinical, schema=schema)
    pd.testing.assert_frame_equal(feats, before)
    t = cb.table
    assert len(t) == 26 and t["patient_key"].is_unique
    assert "PT:GTV:stat.signal0" in cb.feature_columns and "CT:GTV:stat.mean" in cb.feature_columns
    assert not any(c.startswith(("CT:auto", "PT:auto")) for c in cb.feature_columns)
    assert len(cb.feature_columns) == 3 * 5 + 2 + 1  # + the renamed CT stat.mean of one patient
    assert cb.missing.set_index("patient_key").loc[["STS_003", "STS_010"], "MR"].all()
    assert cb.missing.drop(columns="patient_key").to_numpy().sum() == 2
    assert t.set_index("patient_key").loc["STS_003", [c for c in cb.feature_columns if c.startswith("MR:")]].isna().all()
    assert set(cb.modality_tables) == {"CT", "MR", "PT"}
    assert len(cb.modality_tables["MR"]) == 24
    # clinical: numeric kept numeric, categoricals one-hot with NaN where unknown (imputed inside folds only)
    assert "clin:Age" in cb.clinical_columns and "clin:Grade=High" in cb.clinical_columns
    na_grade = clinical.set_index("Patient ID")["Grade"] == "N/A"
    grade = t.set_index("patient_key")[[c for c in cb.clinical_columns if c.startswith("clin:Grade=")]]
    assert grade.loc[na_grade[na_grade].index].isna().all().all()
    assert (grade.loc[na_grade[~na_grade].index].sum(axis=1) == 1).all()
    assert not any("Outcome" in c or "Status" in c or "follow-up" in c for c in cb.clinical_columns)
    assert t["lung_mets"].sum() == 10 and np.isfinite(t["Time – diagnosis to last follow-up (days)"]).all()


def test_clinical_without_schema_is_refused(shared_data):
    with pytest.raises(ValueError, match="schema"):
        patient_case_base(long_features(["a"], None, n_noise=1), read_clinical(shared_data))
    with pytest.raises(ValueError, match="lacks columns"):
        patient_case_base(pd.DataFrame({"patient_key": ["a"], "value": [1.0]}))
