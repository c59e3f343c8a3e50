"""The shipped case base (sample/sts_casebase): neutral ids, no PHI, licence; rebuilt from ../shared it is equal."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pandas as pd
from _sts_shared import sts_run

REPO = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = REPO / "sample" / "sts_casebase"


def test_shipped_case_base_is_neutral_and_documented():
    from storage.clinical import read_case_schema

    table = pd.read_parquet(SHIPPED / "casebase.parquet")
    schema = read_case_schema(SHIPPED / "schema.yaml")
    assert len(table) == 24 and table["patient_key"].is_unique
    assert list(table["patient_key"]) == [f"STS-C{i:02d}" for i in range(1, 25)]
    # no identifier column, no patient identifier anywhere in the file
    assert schema.identifier not in table.columns
    text = table.astype(str).to_csv()
    assert not re.search(r"STS_\d{3}", text)
    # imaging of the three modalities, baseline clinical predictors and the outcomes
    for prefix in ("CT:GTV:", "PT:GTV:", "MR:GTV:", "clin:"):
        assert any(c.startswith(prefix) for c in table.columns), prefix
    for col in ("lung_mets", schema.event, schema.time, schema.treatment):
        assert col in table.columns, col
    assert int(table["lung_mets"].sum()) >= 8
    assert "Attribution 3.0" in (SHIPPED / "LICENSE.md").read_text()
    readme = (SHIPPED / "README.md").read_text()
    assert "10.7937/K9/TCIA.2015.7GO2GSKS" in readme and "STS_008 and STS_025 are left out" in readme


def test_rebuild_from_shared_equals_the_shipped_file(shared_data, tmp_path):
    """`make casebase` path: the cohort run's case base, neutral ids, demo patients excluded == the shipped file."""
    from medflow.discover_cli import ship_casebase
    from storage.pseudonym import PseudonymKeys

    run = sts_run(str(shared_data))
    info = ship_casebase(run["discovery"].with_name("casebase.parquet"), run["cohort"] / "clinical.csv",
                         out=tmp_path, config=run["config"], keys=PseudonymKeys.from_env())
    assert info["rows"] == 24
    rebuilt = pd.read_parquet(tmp_path / "casebase.parquet")
    shipped = pd.read_parquet(SHIPPED / "casebase.parquet")
    assert list(rebuilt.columns) == list(shipped.columns)
    assert list(rebuilt["patient_key"]) == list(shipped["patient_key"])
    for col in shipped.columns:
        a, b = rebuilt[col], shipped[col]
        if pd.api.types.is_numeric_dtype(b):
            assert np.allclose(a.to_numpy(float), b.to_numpy(float), rtol=1e-9, atol=0, equal_nan=True), col
        else:
            assert a.astype(str).tolist() == b.astype(str).tolist(), col
    assert (tmp_path / "schema.yaml").read_text() == (SHIPPED / "schema.yaml").read_text()


def test_a_demo_patient_is_not_in_the_case_base(shared_data):
    """STS_008 and STS_025 (the demo sample) are left out: their imaging values match no shipped row."""
    run = sts_run(str(shared_data))
    full = pd.read_parquet(run["discovery"].with_name("casebase.parquet"))
    shipped = pd.read_parquet(SHIPPED / "casebase.parquet")
    col = next(c for c in shipped.columns if c.startswith("CT:GTV:") and "vol" in c)
    assert len(full) == 26 and len(shipped) == 24
    leftover = set(np.round(full[col].to_numpy(float), 6)) - set(np.round(shipped[col].to_numpy(float), 6))
    assert len(leftover) == 2
