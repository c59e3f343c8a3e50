"""Collection policy at the de-identification boundary: burned-in annotation risk is quarantined unless allowed."""

import shutil

from pydicom.data import get_testdata_file

from medflow.config import CollectionConfig
from storage.collect import collect_into
from storage.pseudonym import PseudonymKeys
from storage.quarantine import QuarantineStore

KEYS = PseudonymKeys("collect-policy-test-secret-0123456789")


def _folder(tmp_path, sample_dicom):
    src = tmp_path / "in"
    shutil.copytree(sample_dicom / "STS_008" / "CT" / "image", src / "ct")
    (src / "us").mkdir()
    shutil.copy(get_testdata_file("US1_UNCR.dcm"), src / "us" / "img")
    return src


def test_ultrasound_without_burned_in_flag_is_quarantined(tmp_path, sample_dicom):
    src = _folder(tmp_path, sample_dicom)
    ws = tmp_path / "ws"
    out = collect_into(src, tmp_path / "stage", config=CollectionConfig(), keys=KEYS, workspace=ws)
    assert [v.meta["modality"] for v in out.volumes] == ["CT"]
    assert [r["reason"] for r in out.rejections] == ["burned_in_annotation"]
    assert QuarantineStore(ws).list()[0]["reason"] == "burned_in_annotation"


def test_opting_in_converts_the_ultrasound(tmp_path, sample_dicom):
    src = _folder(tmp_path, sample_dicom)
    out = collect_into(src, tmp_path / "stage", config=CollectionConfig(allow_burned_in=True), keys=KEYS,
                       workspace=tmp_path / "ws")
    assert sorted(v.meta["modality"] for v in out.volumes) == ["CT", "US"]
    assert not out.rejections
