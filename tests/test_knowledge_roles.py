"""Declared column roles on the real sts clinical sheet: proposal, typing, and the leakage guard."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _knowledge_synth import STS_SCHEMA, long_features, read_clinical

import knowledge
from knowledge.casebase import patient_case_base
from knowledge.roles import (
    CaseSchema,
    ColumnRole,
    LabelRule,
    LeakageError,
    apply_schema,
    check_predictors,
    propose_schema,
)

FOLLOW_UP = "Time – diagnosis to last follow-up (days)"
OUTCOME = "Outcome (recurrence, mets)"
STATUS = "Status (NED, AWD, D)"
OUTCOME_TIME = "Time – diagnosis to outcome (days)"


@pytest.fixture(scope="module")
def clinical(shared_data) -> pd.DataFrame:
    return read_clinical(shared_data)


def test_proposal_never_makes_post_baseline_columns_predictors(clinical):
    before = clinical.copy()
    schema = propose_schema(clinical)
    pd.testing.assert_frame_equal(clinical, before)  # input not modified
    for col in (FOLLOW_UP, OUTCOME, STATUS, OUTCOME_TIME):
        assert col not in schema.predictors, f"{col} proposed as a predictor"
    assert schema.identifier == "Patient ID"
    assert schema.event == STATUS and schema.role_of(STATUS).event_values == ["D"]
    assert schema.time == FOLLOW_UP
    assert schema.treatment == "Treatment"
    assert {"Age", "Sex", "Grade", "Histological type"} <= set(schema.predictors)
    lines = schema.describe()
    assert len(lines) == len(clinical.columns) and any(FOLLOW_UP in ln and "time to event" in ln for ln in lines)
    assert any("事件" in ln for ln in schema.describe("zh"))


def test_check_predictors_refuses_follow_up_naming_column_and_role(clinical):
    schema = CaseSchema.model_validate(STS_SCHEMA)
    with pytest.raises(LeakageError) as err:
        check_predictors(schema, ["CT:GTV:stat.mean", "clin:Age", f"clin:{FOLLOW_UP}"])
    assert FOLLOW_UP in str(err.value) and "'time'" in str(err.value)
    with pytest.raises(LeakageError, match="source of label 'lung_mets'"):
        check_predictors(schema, [f"clin:{OUTCOME}=Mets – lungs"])
    with pytest.raises(LeakageError, match="post_baseline"):
        check_predictors(schema, [OUTCOME_TIME])
    with pytest.raises(LeakageError, match="not declared"):
        check_predictors(schema, ["clin:Weight"])
    check_predictors(schema, ["PT:GTV:stat.max", "clin:Age", "clin:Grade=High"])  # baseline: accepted


def test_apply_schema_derives_label_event_and_time(clinical):
    schema = CaseSchema.model_validate(STS_SCHEMA)
    typed = apply_schema(clinical, schema, rename_identifier=True)
    assert "patient_key" in typed.columns and len(typed) == 26
    assert typed["lung_mets"].sum() == 10  # the MANIFEST's ground truth
    assert typed[STATUS].sum() == (clinical[STATUS] == "D").sum()
    assert typed[FOLLOW_UP].dtype == float and typed[FOLLOW_UP].notna().all()
    assert typed["Grade"].isna().sum() == (clinical["Grade"] == "N/A").sum() > 0
    again = CaseSchema.model_validate(schema.to_dict())
    assert again == schema


def test_schema_validation_errors_name_the_problem():
    with pytest.raises(ValueError, match="exactly one of 'contains' or 'equals'"):
        LabelRule(source="x", contains=["a"], equals=["b"])
    with pytest.raises(ValueError, match="more than once"):
        CaseSchema(columns=[ColumnRole(name="a", role="predictor"), ColumnRole(name="a", role="label")])
    with pytest.raises(ValueError, match="event_values"):
        ColumnRole(name="s", role="event", type="categorical")
    with pytest.raises(KeyError, match="'missing col'"):
        apply_schema(pd.DataFrame({"a": [1]}), CaseSchema(columns=[ColumnRole(name="missing col", role="predictor")]))


def test_discover_uses_only_declared_predictors(clinical):
    schema = CaseSchema.model_validate(STS_SCHEMA)
    y = apply_schema(clinical, schema)["lung_mets"].to_numpy()
    cb = patient_case_base(long_features(list(clinical["Patient ID"]), y, n_noise=10), clinical, schema=schema)
    table = cb.table
    # the outcome columns ride along under their own names and are never inputs
    assert {FOLLOW_UP, STATUS, "lung_mets", "Treatment"} <= set(table.columns)
    res = knowledge.discover(table, schema, label="lung_mets", n_bootstrap=50, n_permutations=3)
    allowed = set(cb.feature_columns) | set(cb.clinical_columns)
    used = set()
    for model in res["prediction"]["models"].values():
        used |= set(model.get("selected_features", []))
    used |= set(res["tree"]["features"]) | set(res["similar"]["features"])
    used |= {c for r in res["tree"]["rules"] for c in (d["feature"] for d in r["conditions"])}
    assert used and used <= allowed
    assert not any(c.startswith(("clin:Time – diagnosis to last", "clin:Outcome", "clin:Status", "clin:Treatment"))
                   for c in allowed)
    # a leaking column smuggled in as a clinical predictor is refused before any model runs
    leaky = table.assign(**{f"clin:{FOLLOW_UP}": table[FOLLOW_UP]})
    with pytest.raises(LeakageError, match="Time – diagnosis to last follow-up"):
        knowledge.discover(leaky, schema, label="lung_mets", n_bootstrap=10, n_permutations=0)
    with pytest.raises(ValueError, match="not declared with role 'label'"):
        knowledge.discover(table, schema, label=STATUS, n_bootstrap=10, n_permutations=0)
    assert np.isfinite(res["prediction"]["models"]["imaging+clinical"]["auc"])


def test_proposal_on_another_sheet_shape():
    sheet = pd.DataFrame({"case_id": ["a", "b", "c", "d"], "age": [50, 60, 70, 40], "sex": ["M", "F", "M", "F"],
                          "OS_months": [10, 20, 5, 30], "OS_event": [1, 0, 1, 0], "PFS (days)": [3, 4, 5, 6],
                          "Date of birth": ["1970-01-01"] * 4, "Patient name": list("wxyz"),
                          "stage": ["I", "II", "III", "II"]})
    schema = propose_schema(sheet)
    roles = {c.name: c.role for c in schema.columns}
    assert roles == {"case_id": "identifier", "age": "predictor", "sex": "predictor", "OS_months": "time",
                     "OS_event": "event", "PFS (days)": "post_baseline", "Date of birth": "phi",
                     "Patient name": "phi", "stage": "predictor"}
    typed = apply_schema(sheet, schema)
    assert "Date of birth" not in typed.columns and "Patient name" not in typed.columns
    assert typed["OS_event"].tolist() == [1.0, 0.0, 1.0, 0.0]
