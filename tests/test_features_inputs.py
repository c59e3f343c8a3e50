"""`medflow features` on every input form: DICOM series + RTSTRUCT/SEG, workspace volumes, NIfTI — same values."""

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medflow.cli import app
from medflow.features_cli import run_features
from storage.inputs import load_case

STS = "ibsi_sts_ct_pet_mr_rtstruct"
SETTINGS = "preset: ibsi-config-c\nfamilies: [morph, stat, ih, cm]\ntexture_dims: [3d]\n"


@pytest.fixture(scope="module")
def settings_yaml(tmp_path_factory):
    p = tmp_path_factory.mktemp("settings") / "s.yaml"
    p.write_text(SETTINGS)
    return p


def _values(table):
    return table.set_index(["family", "feature", "aggregation"])["value"].astype(float)


def test_dicom_series_and_rtstruct_give_the_nifti_reference_values(shared_data, settings_yaml, tmp_path):
    dicom = shared_data / STS / "dicom" / "STS_008" / "CT"
    nifti = shared_data / STS / "nifti" / "STS_008"
    from_dicom = run_features(dicom / "image", dicom / "mask" / "RS.dcm", preset=None, settings_file=settings_yaml,
                              roi="GTV_Mass_CT", out=tmp_path / "a.csv")
    from_nifti = run_features(nifti / "CT_image.nii.gz", nifti / "CT_mask.nii.gz", preset=None,
                              settings_file=settings_yaml, roi=None, out=tmp_path / "b.csv")
    a, b = _values(from_dicom), _values(from_nifti)
    assert len(a) > 100 and a.index.equals(b.index)
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-9, atol=1e-9, equal_nan=True)
    assert from_dicom["roi"].iloc[0] == "GTV_Mass_CT"


def test_rtstruct_roi_errors_name_the_rois(shared_data, tmp_path):
    dicom = shared_data / STS / "dicom" / "STS_008" / "CT"
    with pytest.raises(ValueError, match=r"ROI 'nope' not in RS.dcm; ROIs present: \['GTV_Mass_CT'\]"):
        load_case(dicom / "image", dicom / "mask" / "RS.dcm", roi="nope")
    with pytest.raises(ValueError, match="needs the DICOM series"):
        load_case(shared_data / STS / "nifti" / "STS_008" / "CT_image.nii.gz", dicom / "mask" / "RS.dcm")
    # the only ROI is taken when --roi is omitted; a mask folder holding the RTSTRUCT works too
    case = load_case(dicom / "image", dicom / "mask")
    assert case.mask_kind == "rtstruct" and case.roi == "GTV_Mass_CT" and case.mask.any()


def test_workspace_volume_and_mask_inputs(shared_data, settings_yaml, tmp_path):
    from medflow.config import CollectionConfig
    from storage.collect import collect_into
    from storage.pseudonym import PseudonymKeys

    stage = tmp_path / "stage"
    out = collect_into(shared_data / STS / "dicom" / "STS_008" / "CT", stage, config=CollectionConfig(),
                       keys=PseudonymKeys("inputs-test-secret-0123456789abcd"), workspace=tmp_path / "ws")
    vol, mask = stage / out.volumes[0].rel, stage / out.masks[0].rel
    ws_table = run_features(vol, mask, preset=None, settings_file=settings_yaml, roi=None, out=tmp_path / "w.csv")
    nifti = shared_data / STS / "nifti" / "STS_008"
    ref = run_features(nifti / "CT_image.nii.gz", nifti / "CT_mask.nii.gz", preset=None,
                       settings_file=settings_yaml, roi=None, out=tmp_path / "r.csv")
    np.testing.assert_allclose(_values(ws_table).to_numpy(), _values(ref).to_numpy(), rtol=1e-9, equal_nan=True)


def test_cli_features_on_dicom(shared_data, tmp_path):
    dicom = shared_data / STS / "dicom" / "STS_025" / "PET"
    out = tmp_path / "f.csv"
    res = CliRunner().invoke(app, ["features", "--image", str(dicom / "image"), "--mask", str(dicom / "mask" / "RS.dcm"),
                                   "--roi", "GTV_Mass_PET", "--preset", "ibsi-config-d", "--out", str(out)])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out)
    assert {"family", "feature", "aggregation", "ibsi_code", "value", "image_digest", "mask_digest"} <= set(table.columns)
    assert table["value"].notna().mean() > 0.9
    bad = CliRunner().invoke(app, ["features", "--image", str(dicom / "image"), "--mask", str(dicom / "mask" / "RS.dcm"),
                                   "--roi", "missing", "--preset", "ibsi-config-d", "--out", str(out)])
    assert bad.exit_code != 0 and "ROIs present" in bad.output
