"""Folder de-identification: UID consistency (CT + RTSTRUCT), date shifts, burned-in refusal."""

from __future__ import annotations

import datetime as dt
import json
import pathlib
import shutil

import pydicom
import pytest
from pydicom.data import get_testdata_file

from storage.deid import DeidOptions, DeidRejected, deidentify_dataset, deidentify_folder
from storage.deid.folder import check_dirs
from storage.pseudonym import PseudonymKeys
from storage.vault import Vault
from storage.workspace import sha256_file

KEYS = PseudonymKeys("folder-test-secret-key-0123456789")
OTHER = PseudonymKeys("another-secret-key-9876543210xyz")
STS = "ibsi_sts_ct_pet_mr_rtstruct/dicom"


def read_tree(root: pathlib.Path) -> dict[pathlib.Path, pydicom.Dataset]:
    return {p.relative_to(root): pydicom.dcmread(p) for p in sorted(root.rglob("*.dcm"))}


def input_digests(root: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _link_rtstruct(ct_dir: pathlib.Path, rs_path: pathlib.Path) -> None:
    """Point the RTSTRUCT's contour image references at the CT slices (the IBSI files were
    re-exported and reference UIDs absent from the cropped series; FoR and series match)."""
    cts = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(ct_dir.glob("*.dcm"))]
    rs = pydicom.dcmread(rs_path)
    by_z = {round(float(d.ImagePositionPatient[2]), 2): d.SOPInstanceUID for d in cts}
    for contour in rs.ROIContourSequence[0].ContourSequence:
        z = round(float(contour.ContourData[2]), 2)
        nearest = min(by_z, key=lambda k: abs(k - z))
        contour.ContourImageSequence[0].ReferencedSOPInstanceUID = by_z[nearest]
    series = rs.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    items = []
    for d in cts:
        it = pydicom.Dataset()
        it.ReferencedSOPClassUID = d.SOPClassUID
        it.ReferencedSOPInstanceUID = d.SOPInstanceUID
        items.append(it)
    series.ContourImageSequence = pydicom.Sequence(items)
    rs.save_as(rs_path)


@pytest.fixture(scope="module")
def ct_rt(shared_data, tmp_path_factory):
    src = tmp_path_factory.mktemp("in") / "STS_008"
    shutil.copytree(shared_data / STS / "STS_008" / "CT", src)
    _link_rtstruct(src / "image", src / "mask" / "RS.dcm")
    before = input_digests(src)
    out = tmp_path_factory.mktemp("deid") / "out"
    ws = tmp_path_factory.mktemp("ws")
    report = deidentify_folder(src, out, options=DeidOptions(), keys=KEYS, workspace=ws)
    assert input_digests(src) == before  # inputs untouched
    return src, out, ws, report


def test_layout_and_counts(ct_rt):
    src, out, _ws, report = ct_rt
    n_in = len(list(src.rglob("*.dcm")))
    assert report.n_written == n_in == 52 and report.n_rejected == 0
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == n_in
    orig_ct = pydicom.dcmread(next(iter(sorted((src / "image").glob("*.dcm")))), stop_before_pixels=True)
    pk = KEYS.patient_key(orig_ct.PatientID)
    for f in files:
        rel = f.relative_to(out).parts
        assert rel[0] == pk and rel[1].startswith("S") and rel[2].startswith("R")
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert f.name == f"{ds.SOPInstanceUID}.dcm" == f"{ds.file_meta.MediaStorageSOPInstanceUID}.dcm"
        assert ds.PatientID == pk and ds.PatientIdentityRemoved == "YES"
    assert report.counts()["patients"] == 1 and report.counts()["series"] == 2
    assert not list(out.rglob(".*"))  # no temporary files left


def test_rtstruct_references_resolve_to_new_ct_uids(ct_rt):
    src, out, _ws, _report = ct_rt
    orig = read_tree(src)
    new = read_tree(out)
    orig_ct = {d.SOPInstanceUID for d in orig.values() if d.Modality == "CT"}
    orig_rs = next(d for d in orig.values() if d.Modality == "RTSTRUCT")
    new_ct = {d.SOPInstanceUID: d for d in new.values() if d.Modality == "CT"}
    rs = next(d for d in new.values() if d.Modality == "RTSTRUCT")
    ct_any = next(iter(new_ct.values()))
    assert not orig_ct & set(new_ct)  # every SOP Instance UID replaced
    # frame of reference, study and series references
    ref_for = rs.ReferencedFrameOfReferenceSequence[0]
    assert ref_for.FrameOfReferenceUID == ct_any.FrameOfReferenceUID == rs.FrameOfReferenceUID
    assert rs.StructureSetROISequence[0].ReferencedFrameOfReferenceUID == ct_any.FrameOfReferenceUID
    study = ref_for.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == ct_any.StudyInstanceUID == rs.StudyInstanceUID
    assert study.RTReferencedSeriesSequence[0].SeriesInstanceUID == ct_any.SeriesInstanceUID
    # contour image references: those that resolved before resolve now, to the same slices
    def contour_refs(ds):
        return [ci.ReferencedSOPInstanceUID for c in ds.ROIContourSequence[0].ContourSequence
                for ci in c.ContourImageSequence]
    before, after = contour_refs(orig_rs), contour_refs(rs)
    assert len(before) == len(after) == 19
    assert all(b in orig_ct for b in before) and all(a in new_ct for a in after)
    orig_by_uid = {d.SOPInstanceUID: d for d in orig.values() if d.Modality == "CT"}
    for b, a in zip(before, after, strict=True):  # the same slice, found through the new UID
        assert orig_by_uid[b].ImagePositionPatient == new_ct[a].ImagePositionPatient
    listed_before = [i.ReferencedSOPInstanceUID for i in
                     orig_rs.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
                     .RTReferencedSeriesSequence[0].ContourImageSequence]
    listed_after = [i.ReferencedSOPInstanceUID for i in
                    study.RTReferencedSeriesSequence[0].ContourImageSequence]
    assert len(listed_after) == 51 and set(listed_after) == set(new_ct)
    assert listed_after == [KEYS.new_uid(u) for u in listed_before]


def test_seg_references_follow_source_images(ct_rt):
    """A SEG built on the CT: Referenced Series/Instance and per-frame Derivation/Source Image
    references must point at the de-identified CT instances."""
    src, out, _ws, _report = ct_rt
    cts = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted((src / "image").glob("*.dcm"))]
    seg = pydicom.Dataset()
    seg.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    seg.SOPInstanceUID = "1.2.826.0.1.999999.42.1"
    seg.Modality = "SEG"
    seg.PatientID = cts[0].PatientID
    seg.StudyInstanceUID = cts[0].StudyInstanceUID
    seg.SeriesInstanceUID = "1.2.826.0.1.999999.42.2"
    seg.FrameOfReferenceUID = cts[0].FrameOfReferenceUID
    seg.ContentDate, seg.ContentTime, seg.DeviceSerialNumber = "20200101", "101010", "SN-0042-XYZ"
    ref_series = pydicom.Dataset()
    ref_series.SeriesInstanceUID = cts[0].SeriesInstanceUID
    ref_series.ReferencedInstanceSequence = pydicom.Sequence()
    frames = []
    for d in cts[:5]:
        it = pydicom.Dataset()
        it.ReferencedSOPClassUID, it.ReferencedSOPInstanceUID = d.SOPClassUID, d.SOPInstanceUID
        ref_series.ReferencedInstanceSequence.append(it)
        src_img = pydicom.Dataset()
        src_img.ReferencedSOPClassUID, src_img.ReferencedSOPInstanceUID = d.SOPClassUID, d.SOPInstanceUID
        deriv = pydicom.Dataset()
        deriv.SourceImageSequence = pydicom.Sequence([src_img])
        frame = pydicom.Dataset()
        frame.DerivationImageSequence = pydicom.Sequence([deriv])
        frames.append(frame)
    seg.ReferencedSeriesSequence = pydicom.Sequence([ref_series])
    seg.PerFrameFunctionalGroupsSequence = pydicom.Sequence(frames)
    new_seg = deidentify_dataset(seg, keys=KEYS)
    new_ct = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in out.rglob("*.dcm")}
    new_ct_series = {pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID for p in out.rglob("*.dcm")}
    rs_ = new_seg.ReferencedSeriesSequence[0]
    assert rs_.SeriesInstanceUID in new_ct_series
    assert all(i.ReferencedSOPInstanceUID in new_ct for i in rs_.ReferencedInstanceSequence)
    srcs = [f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            for f in new_seg.PerFrameFunctionalGroupsSequence]
    assert len(srcs) == 5 and all(u in new_ct for u in srcs)
    assert rs_.ReferencedInstanceSequence[0].ReferencedSOPClassUID == cts[0].SOPClassUID  # class kept
    # SEG-specific Type 1 attributes get dummies, not removal (Enhanced General Equipment, MF FG)
    assert new_seg.DeviceSerialNumber not in ("", "SN-0042-XYZ")
    assert new_seg.ContentDate not in ("", "20200101")


def test_same_key_same_uids_other_key_different(ct_rt, tmp_path):
    src, out, _ws, _report = ct_rt
    again = tmp_path / "again"
    deidentify_folder(src, again, keys=PseudonymKeys("folder-test-secret-key-0123456789"))
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.dcm")}
    second = {p.relative_to(again): p.read_bytes() for p in again.rglob("*.dcm")}
    assert first == second  # byte-identical: deterministic for one key
    other = tmp_path / "other"
    deidentify_folder(src, other, keys=OTHER)
    other_uids = {p.stem for p in other.rglob("*.dcm")}
    assert not other_uids & {p.stem for p in out.rglob("*.dcm")}
    assert not {p.relative_to(other).parts[0] for p in other.rglob("*.dcm")} & {
        p.relative_to(out).parts[0] for p in out.rglob("*.dcm")}


def test_vault_records_originals(ct_rt):
    src, _out, ws, _report = ct_rt
    ds = pydicom.dcmread(next(iter(sorted((src / "image").glob("*.dcm")))), stop_before_pixels=True)
    v = Vault(ws, KEYS)
    assert v.reidentify("patient", KEYS.patient_key(ds.PatientID)) == ds.PatientID
    assert v.reidentify("series", KEYS.series_key(ds.SeriesInstanceUID)) == ds.SeriesInstanceUID
    assert v.lookup_pseudonym("study", ds.StudyInstanceUID) == KEYS.study_key(ds.StudyInstanceUID)
    raw = (ws / "vault" / "pseudonyms.enc").read_bytes()
    assert ds.PatientID.encode() not in raw and ds.SeriesInstanceUID.encode() not in raw


def test_refuses_out_dir_inside_in_dir(tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(ValueError, match="inside"):
        check_dirs(tmp_path / "in", tmp_path / "in" / "out")
    with pytest.raises(ValueError, match="inside"):
        check_dirs(tmp_path / "in", tmp_path / "in")
    with pytest.raises(ValueError, match="inside"):
        check_dirs(tmp_path / "in", tmp_path)


# -- dates ---------------------------------------------------------------------------------------
DATE_ATTRS = ("StudyDate", "SeriesDate", "ContentDate", "AcquisitionDate", "InstanceCreationDate",
              "StructureSetDate")


def _dates(ds) -> dict[str, dt.date]:
    out = {}
    for k in DATE_ATTRS:
        v = str(ds.get(k, "") or "")
        if len(v) == 8:
            out[k] = dt.datetime.strptime(v, "%Y%m%d").date()
    return out


def test_one_date_shift_per_patient_intervals_preserved(shared_data, tmp_path):
    src = tmp_path / "in"
    for patient in ("STS_008", "STS_025"):
        for mod in ("CT", "PET", "MR_T1"):
            shutil.copytree(shared_data / STS / patient / mod, src / patient / mod)
    out = tmp_path / "out"
    report = deidentify_folder(src, out, options=DeidOptions(retain_longitudinal_modified_dates=True), keys=KEYS)
    assert report.n_rejected == 0
    orig = {d.SOPInstanceUID: d for d in (pydicom.dcmread(p, stop_before_pixels=True)
                                          for p in src.rglob("*.dcm"))}
    shifts: dict[str, set[int]] = {}
    n_dates = 0
    for p in out.rglob("*.dcm"):
        new = pydicom.dcmread(p, stop_before_pixels=True)
        old = next(o for o in orig.values() if KEYS.new_uid(o.SOPInstanceUID) == new.SOPInstanceUID)
        od, nd = _dates(old), _dates(new)
        assert od.keys() == nd.keys() and od  # shifted, not removed
        for k in od:
            shifts.setdefault(old.PatientID, set()).add((nd[k] - od[k]).days)
            n_dates += 1
        # intervals between dates of one file preserved
        keys_ = sorted(od)
        for a, b in zip(keys_, keys_[1:], strict=False):
            assert (nd[b] - nd[a]) == (od[b] - od[a])
        # times kept (whole-day shift)
        assert new.get("StudyTime") == old.get("StudyTime")
        assert new.LongitudinalTemporalInformationModified == "MODIFIED"
        assert "113107" in {i.CodeValue for i in new.DeidentificationMethodCodeSequence}
    assert n_dates > 300
    assert set(shifts) == {"STS_008", "STS_025"}
    for pid, s in shifts.items():
        assert s == {KEYS.date_shift_days(pid)}, (pid, s)  # exactly one shift per patient
        assert -365 <= next(iter(s)) <= -1
    assert shifts["STS_008"] != shifts["STS_025"]


def test_basic_profile_removes_dates(shared_data):
    ds = pydicom.dcmread(shared_data / STS / "STS_008/CT/image/000000.dcm")
    out = deidentify_dataset(ds, keys=KEYS)
    assert out.StudyDate == ""  # Z (Type 2)
    assert "SeriesDate" not in out and "InstanceCreationDate" not in out  # X/D, Type 3 in CT -> X


# -- burned-in text ----------------------------------------------------------------------------
def test_ultrasound_without_flag_is_refused():
    ds = pydicom.dcmread(get_testdata_file("US1_UNCR.dcm"))
    assert "BurnedInAnnotation" not in ds and ds.Modality == "US"
    with pytest.raises(DeidRejected) as e:
        deidentify_dataset(ds, keys=KEYS)
    assert e.value.rejection.reason == "burned_in_annotation"
    out = deidentify_dataset(ds, options=DeidOptions(allow_burned_in=True), keys=KEYS)
    assert out.SOPInstanceUID == KEYS.new_uid(ds.SOPInstanceUID)
    ds.BurnedInAnnotation = "NO"
    deidentify_dataset(ds, keys=KEYS)  # an explicit NO is trusted


def test_ct_flagged_yes_is_refused(shared_data):
    ds = pydicom.dcmread(shared_data / STS / "STS_008/CT/image/000000.dcm")
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(DeidRejected, match="burned_in_annotation"):
        deidentify_dataset(ds, keys=KEYS)


def test_folder_quarantines_burned_in(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    us = src / "us.dcm"
    shutil.copy(get_testdata_file("US1_UNCR.dcm"), us)
    (src / "notes.txt").write_text("not dicom")
    ws = tmp_path / "ws"
    report = deidentify_folder(src, tmp_path / "out", keys=KEYS, workspace=ws, run_id="run-1")
    assert report.n_rejected == 1 and report.n_written == 0 and report.n_not_dicom == 1
    assert report.reasons == {"burned_in_annotation": 1}
    digest = sha256_file(us)
    assert report.rejections[0].sha256 == digest
    record = ws / "quarantine" / f"{digest}.json"
    assert report.quarantined == 1  # storage.quarantine is present in this repository
    assert json.loads(record.read_text())["reason"] == "burned_in_annotation"
    assert not list(tmp_path.glob("out/**/*.dcm"))
    report = deidentify_folder(src, tmp_path / "out2", keys=KEYS, options=DeidOptions(allow_burned_in=True))
    assert report.n_written == 1


def test_damaged_file_is_quarantined_by_the_guard(shared_data, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    good = shared_data / STS / "STS_008/CT/image/000000.dcm"
    shutil.copy(good, src / "a.dcm")
    data = good.read_bytes()
    (src / "b.dcm").write_bytes(data[: len(data) // 2])  # cut in the pixel data
    ws = tmp_path / "ws"
    report = deidentify_folder(src, tmp_path / "out", keys=KEYS, workspace=ws)
    assert report.n_written == 1 and report.n_rejected == 1
    rej = report.rejections[0]
    assert rej.sha256 == sha256_file(src / "b.dcm") and rej.reason in ("truncated", "pixel_length_mismatch")
    assert (ws / "quarantine" / f"{rej.sha256}.json").is_file()
