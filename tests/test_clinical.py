"""Clinical case tables (storage.clinical)."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pydicom
import pytest
from pydantic import ValidationError

from storage.clinical import ClinicalSchema, ClinicalTableError, ColumnSpec, infer_schema, load_clinical
from storage.deid import patient_identity
from storage.pseudonym import PseudonymKeys
from storage.vault import Vault

KEYS = PseudonymKeys("clinical-test-secret-key-012345")

SCHEMA = ClinicalSchema(
    patient_id="patient_id",
    label="response",
    treatment="arm",
    columns=[
        ColumnSpec(name="patient_id", type="str"),
        ColumnSpec(name="patient_name", type="str", phi=True, required=False),
        ColumnSpec(name="age", type="int", min=0, max=120),
        ColumnSpec(name="weight_kg", type="float", required=False, min=1),
        ColumnSpec(name="smoker", type="bool"),
        ColumnSpec(name="diagnosis_date", type="date"),
        ColumnSpec(name="arm", type="category", allowed=["A", "B"]),
        ColumnSpec(name="response", type="int", allowed=[0, 1]),
    ],
)
HEADER = "patient_id,patient_name,age,weight_kg,smoker,diagnosis_date,arm,response\n"
GOOD = HEADER + (
    "STS_008,Jane Smithson,61,55.0,yes,2001-09-02,A,1\n"
    " STS_025 ,\"Doe, John\",47,,no,2002-01-15,B,0\n"
)


def write(tmp_path, text, name="cases.csv"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_good_table(tmp_path):
    df = load_clinical(write(tmp_path, GOOD), schema=SCHEMA, keys=KEYS)
    assert list(df.index) == [KEYS.patient_key("STS_008"), KEYS.patient_key("STS_025")]
    assert df.index.name == "patient_key"
    assert "patient_id" not in df.columns and "patient_name" not in df.columns
    assert list(df.columns) == ["age", "weight_kg", "smoker", "diagnosis_date", "arm", "response"]
    assert df["age"].tolist() == [61, 47] and str(df["age"].dtype) == "Int64"
    assert df["weight_kg"].isna().tolist() == [False, True]
    assert df["smoker"].tolist() == [True, False]
    assert list(df["arm"].cat.categories) == ["A", "B"]
    # dates shifted by the same per-patient shift as the DICOM dates
    shift = KEYS.date_shift_days("STS_008")
    assert df["diagnosis_date"].iloc[0].date() == dt.date(2001, 9, 2) + dt.timedelta(days=shift)
    text = df.to_csv()
    assert "STS_008" not in text and "Smithson" not in text and "Doe" not in text


def test_same_keys_as_images():
    """The clinical key of an ID equals the folder name the de-identifier writes for that patient."""
    ds = pydicom.Dataset()
    ds.PatientID = "STS_008"
    assert KEYS.patient_key(patient_identity(ds)) == KEYS.patient_key("STS_008")


def test_parquet_and_vault(tmp_path):
    df_in = pd.DataFrame({"patient_id": ["STS_008", "STS_025"], "patient_name": ["a", "b"], "age": [61, 47],
                          "weight_kg": [55.0, None], "smoker": [True, False],
                          "diagnosis_date": [dt.date(2001, 9, 2), dt.date(2002, 1, 15)],
                          "arm": ["A", "B"], "response": [1, 0]})
    p = tmp_path / "cases.parquet"
    df_in.to_parquet(p)
    vault = Vault(tmp_path / "ws", KEYS)
    df = load_clinical(p, schema=SCHEMA.model_copy(update={"shift_dates": False}), keys=KEYS, vault=vault)
    assert df["diagnosis_date"].iloc[1].date() == dt.date(2002, 1, 15)
    assert vault.reidentify("patient", df.index[1]) == "STS_025"


def _error(tmp_path, text) -> ClinicalTableError:
    with pytest.raises(ClinicalTableError) as e:
        load_clinical(write(tmp_path, text), schema=SCHEMA, keys=KEYS)
    return e.value


def test_missing_column(tmp_path):
    text = GOOD.replace(",smoker", "").replace(",yes,", ",").replace(",no,", ",")
    err = _error(tmp_path, text)
    assert [(p.line, p.column) for p in err.problems] == [(None, "smoker")]
    assert "missing required column 'smoker'" in str(err)


def test_wrong_type_names_line_and_column(tmp_path):
    text = GOOD + "STS_031,X,sixty,70,no,2003-03-03,A,1\n"
    err = _error(tmp_path, text)
    assert [(p.line, p.column) for p in err.problems] == [(4, "age")]
    assert "value in column 'age' at line 4: expected an integer, got 'sixty'" in str(err)


def test_line_numbers_survive_multiline_quoted_cells(tmp_path):
    text = HEADER + 'A1,"Jane\nSmithson",61,55,yes,2001-09-02,A,1\nA2,Bob,47,,no,2002-13-40,B,0\n'
    err = _error(tmp_path, text)
    assert [(p.line, p.column) for p in err.problems] == [(4, "diagnosis_date")]


def test_unknown_label_value(tmp_path):
    err = _error(tmp_path, GOOD + "STS_031,X,50,70,no,2003-03-03,A,2\n")
    assert [(p.line, p.column) for p in err.problems] == [(4, "response")]
    assert "expected one of [0, 1], got '2'" in str(err)
    err = _error(tmp_path, GOOD + "STS_031,X,50,70,no,2003-03-03,C,1\n")
    assert "value in column 'arm' at line 4: expected one of ['A', 'B'], got 'C'" in str(err)


def test_range_and_many_problems_collected(tmp_path):
    text = GOOD + "STS_031,X,150,0.5,maybe,2003-03-03,A,1\n"
    err = _error(tmp_path, text)
    assert {(p.line, p.column) for p in err.problems} == {(4, "age"), (4, "weight_kg"), (4, "smoker")}
    assert "expected a value <= 120" in str(err)


def test_phi_values_are_never_echoed(tmp_path):
    text = GOOD + ",Secret Name,50,70,no,2003-03-03,A,1\n"
    err = _error(tmp_path, text)
    assert str(err).endswith("value in column 'patient_id' at line 4 is empty")
    schema = SCHEMA.model_copy(update={"columns": [
        c if c.name != "patient_name" else ColumnSpec(name="patient_name", type="int", phi=True)
        for c in SCHEMA.columns]})
    with pytest.raises(ClinicalTableError) as e:
        load_clinical(write(tmp_path, GOOD), schema=schema, keys=KEYS)
    assert "Smithson" not in str(e.value) and "Doe" not in str(e.value)
    assert "value in column 'patient_name' at line 2: expected an integer" in str(e.value)


def test_duplicate_patient_and_extra_column(tmp_path):
    err = _error(tmp_path, GOOD + "STS_008,X,50,70,no,2003-03-03,A,1\n")
    assert [(p.line, p.column) for p in err.problems] == [(4, "patient_id")]
    assert "STS_008" not in str(err)
    err = _error(tmp_path, GOOD.replace("response\n", "response,notes\n", 1))
    assert any(p.column == "notes" and "not declared" in p.message for p in err.problems)


def test_schema_validation():
    with pytest.raises(ValidationError, match="not declared"):
        ClinicalSchema(patient_id="pid", columns=[ColumnSpec(name="id")])
    with pytest.raises(ValidationError, match="category"):
        ColumnSpec(name="x", type="category")
    with pytest.raises(ValidationError, match="phi"):
        ClinicalSchema(patient_id="id", label="y", columns=[ColumnSpec(name="id"),
                                                            ColumnSpec(name="y", phi=True)])


def test_infer_schema(tmp_path):
    df = pd.DataFrame({
        "PatientID": ["A1", "A2", "A3"], "Patient Name": ["x", "y", "z"], "DateOfBirth": ["1950-01-01"] * 3,
        "age": [60, 61, 62], "weight": [70.5, 80.0, 65.2], "smoker": ["yes", "no", "yes"],
        "histology": ["LMS", "UPS", "LMS"], "outcome": [0, 1, 0], "surgery_date": ["2001-01-01"] * 3,
    })
    schema = infer_schema(df)
    types = {c.name: (c.type, c.phi) for c in schema.columns}
    assert schema.patient_id == "PatientID" and schema.label == "outcome"
    assert types["Patient Name"][1] and types["DateOfBirth"][1]
    assert types["age"] == ("int", False) and types["weight"] == ("float", False)
    assert types["smoker"] == ("bool", False) and types["surgery_date"] == ("date", False)
    assert types["histology"] == ("category", False)
    p = tmp_path / "inferred.csv"
    df.to_csv(p, index=False)
    out = load_clinical(p, schema=schema, keys=KEYS)
    assert "Patient Name" not in out.columns and "DateOfBirth" not in out.columns
    assert list(out.index) == [KEYS.patient_key(x) for x in ("A1", "A2", "A3")]
    for name in ("mrn", "Subject ID", "patient_id"):
        assert infer_schema(pd.DataFrame({name: ["1"], "v": [1]})).patient_id == name
    with pytest.raises(ValueError, match="no patient identifier"):
        infer_schema(pd.DataFrame({"foo": [1]}))
