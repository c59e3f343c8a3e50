"""Series splitting and damaged-series behaviour, on real files edited in tmp_path.

Gantry tilt, missing / corrupt slices, echoes, a localizer inside a series, duplicate
instances, enhanced multi-frame 4-D, PET SUVbw.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from storage.dicom.convert import convert_series, suvbw_factor  # noqa: E402
from storage.dicom.scan import scan  # noqa: E402
from storage.dicom.series import group_series  # noqa: E402


def _convert(folder):
    entries, rej = scan(folder)
    vols = []
    for g in group_series(entries):
        if g.object_kind == "image":
            v, r = convert_series(g)
            vols += v
            rej += r
    return vols, rej


def _sorted_files(folder):
    files = sorted(folder.glob("*.dcm"))
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    return [files[i] for i in np.argsort(z)]


@pytest.fixture(scope="module")
def pet_dir(shared_data):
    return shared_data / "ibsi_sts_ct_pet_mr_rtstruct" / "dicom" / "STS_008" / "PET" / "image"


@pytest.fixture(scope="module")
def pet_ref(pet_dir):
    vols, rej = _convert(pet_dir)
    assert rej == []
    return vols[0]


def test_gantry_tilt_is_kept_as_sheared_affine(pet_dir, pet_ref, tmp_path):
    tilt = math.radians(12.0)
    for k, f in enumerate(_sorted_files(pet_dir)):
        ds = pydicom.dcmread(f)
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [ipp[0], ipp[1] + k * 3.27 * math.tan(tilt), ipp[2]]
        ds.save_as(tmp_path / f.name)
    (v,), rej = _convert(tmp_path)
    assert rej == []
    assert v.meta["gantry_tilt_deg"] == pytest.approx(12.0, abs=0.01) and "gantry_tilt_note" in v.meta
    np.testing.assert_array_equal(v.volume, pet_ref.volume)  # data as acquired, not resampled
    for k, f in enumerate(_sorted_files(tmp_path)):
        ipp = [float(x) for x in pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient]
        np.testing.assert_allclose((v.affine @ [k, 0, 0, 1])[:3], ipp, atol=1e-3)


def test_missing_and_corrupt_slices_are_reported(pet_dir, tmp_path):
    files = _sorted_files(pet_dir)
    for i, f in enumerate(files):
        if i == 20:
            continue  # a missing file
        ds = pydicom.dcmread(f)
        if i == 30:  # a corrupt file: pixel data cut short
            ds.PixelData = ds.PixelData[:100]
        ds.save_as(tmp_path / f.name)
    (v,), rej = _convert(tmp_path)
    assert [r.reason for r in rej] == ["pixel_length_mismatch"]
    assert v.volume.shape[0] == len(files) - 2
    assert v.meta["missing_slices"] == 2 and v.meta["uneven_spacing"]
    assert v.meta["uneven_spacing_mm"] == pytest.approx(3.27, abs=0.01)
    assert v.meta["dropped_slices"] == 1


def test_echoes_and_localizer_split_into_volumes(shared_data, tmp_path):
    src = shared_data / "ibsi_sts_ct_pet_mr_rtstruct" / "dicom" / "STS_025" / "MR_T1" / "image"
    files = sorted(src.glob("*.dcm"))
    for f in files:
        ds = pydicom.dcmread(f)
        ds.EchoNumbers = 1
        ds.save_as(tmp_path / f"e1_{f.name}")
        ds.EchoNumbers = 2
        ds.SOPInstanceUID = generate_uid()
        ds.PixelData = (ds.pixel_array + 1).astype(ds.pixel_array.dtype).tobytes()
        ds.save_as(tmp_path / f"e2_{f.name}")
    loc = pydicom.dcmread(files[0])
    loc.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # sagittal localizer in the same series
    loc.SOPInstanceUID = generate_uid()
    loc.save_as(tmp_path / "localizer.dcm")
    vols, rej = _convert(tmp_path)
    assert rej == []
    stacks = sorted((v for v in vols if v.volume.shape[0] == len(files)), key=lambda v: v.meta["echo_number"])
    assert [v.meta["echo_number"] for v in stacks] == [1, 2]
    np.testing.assert_array_equal(stacks[1].volume.astype(int), stacks[0].volume.astype(int) + 1)
    (loc_v,) = [v for v in vols if v.volume.shape[0] == 1]
    assert loc_v.meta["orientation"] == "sagittal"


def test_duplicate_instances(pet_dir, tmp_path):
    files = sorted(pet_dir.glob("*.dcm"))
    for f in files:
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "copy_same.dcm").write_bytes(files[3].read_bytes())  # identical duplicate: dropped silently
    ds = pydicom.dcmread(files[4])
    arr = ds.pixel_array.copy()
    arr[0, 0] += 1
    ds.PixelData = arr.tobytes()
    ds.save_as(tmp_path / "copy_conflict.dcm")  # same SOP Instance UID, different content
    (v,), rej = _convert(tmp_path)
    assert [r.reason for r in rej] == ["duplicate_instance_conflict"]
    assert v.volume.shape[0] == len(files)


@pytest.mark.parametrize("two_stacks", [False, True])
def test_enhanced_multiframe_4d_equals_classic(shared_data, tmp_path, two_stacks):
    src = shared_data / "nih_ge_siemens_epi_4d" / "In" / "20180918GE" / "mr_0004"
    (classic,), _ = _convert(src)
    files = sorted(src.glob("*.dcm"))
    dss = [pydicom.dcmread(f) for f in files]
    rng = np.random.default_rng(3)
    order = rng.permutation(len(dss))  # frames stored in a scrambled order
    first = dss[0]
    mf = pydicom.dcmread(files[0])
    mf.SOPClassUID = mf.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR
    mf.NumberOfFrames = len(dss)
    for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceLocation"):
        if kw in mf:
            delattr(mf, kw)

    def item(**kw):
        d = Dataset()
        for k, val in kw.items():
            setattr(d, k, val)
        return d

    mf.SharedFunctionalGroupsSequence = Sequence([item(
        PlaneOrientationSequence=Sequence([item(ImageOrientationPatient=first.ImageOrientationPatient)]),
        PixelMeasuresSequence=Sequence([item(PixelSpacing=first.PixelSpacing, SliceThickness=first.SliceThickness)]))])
    per = []
    for i in order:
        ds = dss[i]
        t = (int(ds.InstanceNumber) - 1) // 15 + 1
        stack = "2" if two_stacks and t > 4 else "1"
        per.append(item(PlanePositionSequence=Sequence([item(ImagePositionPatient=ds.ImagePositionPatient)]),
                        FrameContentSequence=Sequence([item(TemporalPositionIndex=t, StackID=stack,
                                                            DimensionIndexValues=[t, 1])])))
    mf.PerFrameFunctionalGroupsSequence = Sequence(per)
    mf.PixelData = np.stack([dss[i].pixel_array for i in order]).tobytes()
    out = tmp_path / "enhanced"
    out.mkdir()
    mf.save_as(out / "mf.dcm")
    vols, rej = _convert(out)
    assert rej == []
    if two_stacks:  # frames of different stacks become separate volumes (time points 1-4 and 5-10)
        assert sorted(v.meta["stack_id"] for v in vols) == ["1", "2"]
        v1, v2 = sorted(vols, key=lambda v: v.meta["stack_id"])
        np.testing.assert_array_equal(v1.volume, classic.volume[:4])
        np.testing.assert_array_equal(v2.volume, classic.volume[4:])
        return
    (v,) = vols
    assert v.kind == "4d" and v.meta["enhanced_multiframe"]
    assert v.volume.shape == classic.volume.shape == (10, 15, 64, 64)
    np.testing.assert_array_equal(v.volume, classic.volume)
    np.testing.assert_allclose(v.affine, classic.affine, atol=1e-6)


def test_pet_suvbw_from_bqml(pet_dir, tmp_path):
    f = sorted(pet_dir.glob("*.dcm"))[0]
    ds = pydicom.dcmread(f)
    ds.Units, ds.DecayCorrection = "BQML", "START"
    ds.PatientWeight = 70.0
    ds.SeriesDate, ds.SeriesTime = "20200101", "103000"
    ds.AcquisitionDate, ds.AcquisitionTime = "20200101", "103500"
    rp = Dataset()
    rp.RadionuclideTotalDose = 370e6
    rp.RadionuclideHalfLife = 6586.2
    rp.RadiopharmaceuticalStartTime = "093000"
    ds.RadiopharmaceuticalInformationSequence = Sequence([rp])
    factor, status = suvbw_factor(ds)
    assert status == "computed"
    expected = 70000.0 / (370e6 * math.exp(-math.log(2) * 3600.0 / 6586.2))
    assert factor == pytest.approx(expected, rel=1e-12)
    ds.save_as(tmp_path / "pet.dcm")
    entries, _ = scan(tmp_path)
    (g,) = group_series(entries)
    (raw,), _ = convert_series(g)
    (suv,), _ = convert_series(g, pet_units="suvbw")
    assert raw.meta["units"] == "BQML" and raw.meta["suvbw_applied"] is False
    assert suv.meta["units"] == "SUVbw" and suv.meta["suvbw_applied"] is True
    np.testing.assert_allclose(suv.volume, raw.volume.astype(np.float64) * expected, rtol=1e-6)
    del ds.PatientWeight
    assert suvbw_factor(ds) == (None, "missing:PatientWeight")
