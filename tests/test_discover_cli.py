"""`medflow discover TABLE --schema S --out DIR` and `medflow schema propose` as a user runs them."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pandas as pd
import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = REPO / "sample" / "sts_casebase"
FAST = {"discovery": {"n_bootstrap": 100, "n_permutations": 10}}


def medflow(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "medflow.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_discover_on_the_shipped_patient_level_case_base(tmp_path):
    cfg = tmp_path / "fast.yaml"
    cfg.write_text(yaml.safe_dump(FAST))
    out = tmp_path / "out"
    r = medflow("discover", SHIPPED / "casebase.parquet", "--schema", SHIPPED / "schema.yaml", "--out", out,
                "--lang", "zh", "--config", cfg)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["cohort"]["n_patients"] == 24
    assert set(metrics["prediction"]["models"]) == {"imaging+clinical", "imaging", "clinical"}
    assert "决策树规则" in (out / "rules.txt").read_text() and "IF " in (out / "rules.en.txt").read_text()
    html = (out / "report.html").read_text()
    assert "<html lang='zh'>" in html and "data-plot='roc'" in html


def test_a_leaking_column_is_refused_by_name(tmp_path):
    table = pd.read_parquet(SHIPPED / "casebase.parquet")
    leak = "clin:Time – diagnosis to last follow-up (days)"
    table[leak] = table["Time – diagnosis to last follow-up (days)"]
    path = tmp_path / "leaky.parquet"
    table.to_parquet(path, index=False)
    r = medflow("discover", path, "--schema", SHIPPED / "schema.yaml", "--out", tmp_path / "o")
    assert r.returncode != 0
    assert "Time – diagnosis to last follow-up (days)" in r.stderr and "time" in r.stderr, r.stderr
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_schema_propose_prints_roles_and_check_names_the_bad_field(tmp_path):
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("patient_id,patient_name,age,sex,status,time to last follow-up (days)\n"
                     "A1,Doe^Jane,61,F,D,300\nA2,Roe^Rick,55,M,NED,800\nA3,Poe^Ann,70,F,AWD,420\n")
    schema = tmp_path / "schema.yaml"
    r = medflow("schema", "propose", sheet, "--out", schema)
    assert r.returncode == 0, r.stderr
    assert "patient_id: identifier" in r.stdout and "patient_name: identifying information" in r.stdout
    assert "status: event" in r.stdout and "time to event" in r.stdout
    assert "Doe^Jane" not in schema.read_text()
    data = yaml.safe_load(schema.read_text())
    data["columns"][2]["role"] = "predictr"
    schema.write_text(yaml.safe_dump(data))
    r = medflow("schema", "check", schema, "--table", sheet)
    assert r.returncode != 0 and "column 'age'" in r.stderr and "role" in r.stderr, r.stderr


def test_discover_on_a_long_table_joined_with_the_sheet(shared_data, tmp_path):
    """The feature table of a cohort workspace joined with its clinical sheet (what a user has at hand)."""
    from _sts_shared import sts_run

    run = sts_run(str(shared_data))
    feats = pd.read_parquet(run["ws"] / run["summary"]["features"])
    clinical = pd.read_parquet(next((run["ws"] / "artifacts" / "collection").rglob("clinical.parquet")))
    joined = feats.merge(clinical, on="patient_key")
    path = tmp_path / "joined.parquet"
    joined.to_parquet(path, index=False)
    cfg = tmp_path / "fast.yaml"
    cfg.write_text(yaml.safe_dump(FAST))
    r = medflow("discover", path, "--schema", REPO / "docs" / "sts_cohort_schema.yaml", "--out", tmp_path / "o",
                "--config", cfg)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["cohort"]["n_patients"] == 26 and metrics["label"]["n_positive"] == 10
