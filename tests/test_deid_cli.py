"""medflow.deid_cli.run_deidentify: refuses nested folders, prints counts only."""

from __future__ import annotations

import shutil

import pytest

from medflow.deid_cli import run_deidentify
from storage.deid import DeidOptions
from storage.pseudonym import ENV_VAR


def test_run_deidentify_prints_counts_only(shared_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ENV_VAR, "cli-test-secret-key-0123456789")
    src = tmp_path / "STS_008_Jane_Doe"  # folder names can hold PHI: never printed
    shutil.copytree(shared_data / "ibsi_sts_ct_pet_mr_rtstruct/dicom/STS_008/CT", src)
    summary = run_deidentify(src, tmp_path / "out", options=DeidOptions(), workspace=tmp_path / "ws")
    out = capsys.readouterr().out
    assert summary["written"] == 52 and summary["patients"] == 1 and summary["series"] == 2
    assert "de-identified 52 of 52 files" in out
    for phi in ("STS_008", "Jane", "Doe", str(tmp_path), "1.3.6.1.4.1.14519"):
        assert phi not in out
    assert (tmp_path / "ws" / "vault" / "pseudonyms.enc").is_file()


def test_refuses_out_dir_inside_in_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "cli-test-secret-key-0123456789")
    (tmp_path / "in").mkdir()
    with pytest.raises(ValueError, match="out_dir must not be inside in_dir"):
        run_deidentify(tmp_path / "in", tmp_path / "in" / "deid", options=DeidOptions(), workspace=None)
    assert not (tmp_path / "in" / "deid").exists()
    with pytest.raises(TypeError, match="DeidOptions"):
        run_deidentify(tmp_path / "in", tmp_path / "out", options={}, workspace=None)
