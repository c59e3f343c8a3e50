"""A folder with several studies/series/patients mixed at random depth under random names groups correctly."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from storage.dicom import collect_folder  # noqa: E402
from storage.dicom.scan import iter_files, scan  # noqa: E402
from storage.dicom.series import group_series  # noqa: E402


def _copy_shuffled(sources, dest, rng):
    dest.mkdir()
    dirs = [dest]
    for _ in range(6):  # a few nested folders of random depth
        parent = dirs[int(rng.integers(len(dirs)))]
        d = parent / rng.bytes(4).hex()
        d.mkdir()
        dirs.append(d)
    files = [f for s in sources for f in sorted(s.rglob("*")) if f.is_file()]
    for i in rng.permutation(len(files)):
        d = dirs[int(rng.integers(len(dirs)))]
        name = f"{rng.bytes(6).hex()}{int(i):04d}"
        shutil.copyfile(files[i], d / name)  # no extension, random name
    return len(files)


def test_mixed_folder_groups_like_the_originals(shared_data, tmp_path):
    sts = shared_data / "ibsi_sts_ct_pet_mr_rtstruct" / "dicom"
    nih = shared_data / "nih_ge_siemens_epi_4d" / "In"
    sources = [sts / "STS_008" / "CT", sts / "STS_025" / "PET", sts / "STS_025" / "MR_T1" / "image",
               nih / "20180918GE" / "mr_0007", nih / "20180918Si" / "mr_0005"]
    rng = np.random.default_rng(7)
    n = _copy_shuffled(sources, tmp_path / "in", rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pydicom.data import get_testdata_file

        extra = {name: get_testdata_file(name) for name in ("rtdose.dcm", "test-SR.dcm")}
        dicomdir = get_testdata_file("DICOMDIR")
    for name, p in extra.items():
        shutil.copyfile(p, tmp_path / "in" / f"x{name}")
    if dicomdir:
        shutil.copyfile(dicomdir, tmp_path / "in" / "DICOMDIR")
    before = {p: p.stat().st_mtime_ns for p in iter_files(tmp_path / "in")}
    assert len(before) >= n

    res = collect_folder(tmp_path / "in")

    # input files untouched
    assert {p: p.stat().st_mtime_ns for p in iter_files(tmp_path / "in")} == before
    reasons = sorted(r.reason for r in res.rejections)
    assert set(reasons) <= {"not_dicom", "dicomdir"}  # README-Series.txt files and the DICOMDIR
    assert sorted(r.reason for r in res.routed) == ["non_image_object:rtdose", "non_image_object:sr"]
    # one volume per original series, equal to the conversion of the untouched folder
    assert len(res.volumes) == 5
    assert sorted(m.roi_name for m in res.masks) == ["GTV_Mass_CT", "GTV_Mass_PET"]  # RS.dcm of CT and PET
    for src in sources:
        entries, _ = scan(src)
        from storage.dicom.convert import convert_series

        (g,) = [g for g in group_series(entries) if g.object_kind == "image"]
        (ref,) = convert_series(g)[0]
        (got,) = [v for v in res.volumes if v.series_uid == g.series_uid]
        assert got.kind == ref.kind
        np.testing.assert_array_equal(got.volume, ref.volume)
        np.testing.assert_allclose(got.affine, ref.affine)
        assert got.instance_uids == ref.instance_uids
    # study / patient links are kept for pseudonymisation
    assert len({v.study_uid for v in res.volumes}) >= 3


def test_scan_rejects_unreadable_without_raising(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "empty").write_bytes(b"")
    (tmp_path / "a" / "text.txt").write_text("hello")
    (tmp_path / "junk").write_bytes(b"\x08\x00" + bytes(range(256)) * 4)  # plausible first tag, garbage after
    entries, rej = scan(tmp_path)
    assert entries == []
    assert {r.reason for r in rej} <= {"not_dicom", "unreadable_header"} and len(rej) == 3
    assert all(len(r.sha256) == 64 for r in rej)


def test_collect_folder_with_guard_equals_without(shared_data):
    from storage.dicom.guard import GuardLimits

    src = shared_data / "ibsi_sts_ct_pet_mr_rtstruct" / "dicom" / "STS_025"
    plain = collect_folder(src)
    guarded = collect_folder(src, guard_limits=GuardLimits(), guard_workers=1)
    assert guarded.rejections == [] and len(guarded.volumes) == len(plain.volumes) == 3
    for a, b in zip(plain.volumes, guarded.volumes, strict=True):
        np.testing.assert_array_equal(a.volume, b.volume)
    assert [m.roi_name for m in guarded.masks] == [m.roi_name for m in plain.masks]
