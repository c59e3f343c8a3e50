"""A series whose instances disagree on PatientID is split over two collection units: the two parts must
not get one volume key (one silently replacing the other, found by fuzzing seed 7); the larger part is
converted and the smaller is reported as ``series_patient_conflict``."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pydicom
import pytest

from medflow.config import CollectionConfig
from storage.collect import collect_into
from storage.pseudonym import PseudonymKeys
from storage.volumes import read_numpy

KEYS = PseudonymKeys("split-series-test-secret-0123456789")


@pytest.fixture()
def split_source(sample_dicom, tmp_path):
    src = tmp_path / "in"
    shutil.copytree(sample_dicom / "STS_008" / "MR_T1" / "image", src)
    files = sorted(src.iterdir())
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    edge = files[int(np.argmax(z))]  # an end slice: the remaining part has no gap
    ds = pydicom.dcmread(edge)
    ds.PatientID = "SOMEONE-ELSE"
    ds.save_as(edge)
    return src, len(files), edge


@pytest.mark.parametrize("salt", [None, "unit-salt"])
def test_split_series_keeps_one_volume_per_key(split_source, tmp_path, salt):
    src, n, edge = split_source
    ws = tmp_path / f"ws-{salt}"
    ws.mkdir()
    out = collect_into(src, tmp_path / f"stage-{salt}", config=CollectionConfig(), keys=KEYS, workspace=ws,
                       unit_salt=salt, workers=1)
    keys = [v.meta["volume_key"] for v in out.volumes]
    assert len(keys) == len(set(keys)) == 1
    (vol,) = out.volumes
    assert vol.meta["shape"][0] == n - 1
    arr, _attrs = read_numpy((vol.base or tmp_path / f"stage-{salt}") / vol.rel)
    assert arr.shape[0] == n - 1
    conflicts = [r for r in out.rejections if r["reason"] == "series_patient_conflict"]
    assert len(conflicts) == 1 and conflicts[0]["series_key"] == vol.meta["series_key"]
    # the dropped part is named by its file's content digest and quarantined, so no file goes unaccounted
    edge_sha = hashlib.sha256(edge.read_bytes()).hexdigest()
    assert conflicts[0]["sha256"] == edge_sha
    assert (ws / "quarantine" / f"{edge_sha}.json").is_file()


def test_one_unreadable_grouping_attribute_rejects_the_file_not_its_series(sample_dicom, tmp_path):
    """BitsAllocated with a wrong VR (fuzz seed 7, series005) raised in the series split and quarantined all
    the series' files as series_split_failed; now only that file is rejected (invalid_attribute)."""
    src = tmp_path / "in"
    shutil.copytree(sample_dicom / "STS_008" / "MR_T1" / "image", src)
    files = sorted(src.iterdir())
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    edge = files[int(np.argmax(z))]
    raw = edge.read_bytes()
    ds = pydicom.dcmread(edge, stop_before_pixels=True)
    assert not ds.is_implicit_VR and ds.is_little_endian
    tag = b"\x28\x00\x00\x01US"  # (0028,0100) BitsAllocated, explicit VR
    assert raw.count(tag) == 1
    edge.write_bytes(raw.replace(tag, b"\x28\x00\x00\x01SH"))
    ws = tmp_path / "ws"
    ws.mkdir()
    out = collect_into(src, tmp_path / "stage", config=CollectionConfig(), keys=KEYS, workspace=ws, workers=1)
    assert [v.meta["shape"][0] for v in out.volumes] == [len(files) - 1]
    reasons = [r["reason"] for r in out.rejections]
    assert reasons == ["invalid_attribute"], reasons
