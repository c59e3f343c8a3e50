"""DICOM -> volume geometry against independent references, compared in WORLD space.

Both our volume and the reference NIfTI are turned into nibabel images and reoriented
with ``as_closest_canonical`` (RAS+), so neither side's storage convention matters.
Voxels must be exactly equal (PET within 1e-5 relative) and the affine within 0.01 mm.
"""

from __future__ import annotations

import numpy as np
import pytest

from imaging.geometry import (
    affine_from_dicom,
    demosaic,
    detect_gantry_tilt,
    mosaic_position_correction,
    slice_normal,
    slice_spacing_stats,
    sort_by_position,
)

nib = pytest.importorskip("nibabel")
pytest.importorskip("pydicom")

from storage.dicom import collect_folder  # noqa: E402
from storage.dicom.convert import convert_series  # noqa: E402
from storage.dicom.scan import scan  # noqa: E402
from storage.dicom.series import group_series  # noqa: E402
from storage.images import medflow_to_nifti, read_nifti, write_nifti  # noqa: E402


# ----------------------------------------------------------------------------- helpers
def canonical_from_medflow(volume: np.ndarray, affine_lps: np.ndarray, *, time_first: bool = False):
    vol = np.moveaxis(volume, 0, -1) if time_first else volume
    data, ras = medflow_to_nifti(np.asarray(vol), affine_lps)
    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data), ras))
    return np.asarray(img.dataobj), img.affine


def canonical_ref(path):
    img = nib.as_closest_canonical(nib.load(str(path)))
    return np.asarray(img.dataobj), img.affine


def convert_folder(folder):
    entries, rej = scan(folder)
    vols = []
    for g in group_series(entries):
        if g.object_kind == "image":
            v, r = convert_series(g)
            vols.extend(v)
            rej.extend(r)
    return vols, rej


def assert_world_equal(vol, ref_path, *, rtol=0.0, affine_atol=0.01):
    a, aa = canonical_from_medflow(vol.volume, vol.affine, time_first=vol.kind == "4d")
    b, ba = canonical_ref(ref_path)
    assert a.shape == b.shape
    np.testing.assert_allclose(aa, ba, atol=affine_atol, rtol=0)
    if rtol == 0:
        np.testing.assert_array_equal(a.astype(np.float64), b.astype(np.float64))
    else:
        np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=rtol, atol=1e-6)


# ----------------------------------------------------------------------------- pure geometry
def test_slice_normal_axial_and_sagittal():
    np.testing.assert_allclose(slice_normal([1, 0, 0, 0, 1, 0]), [0, 0, 1])
    np.testing.assert_allclose(slice_normal([0, 1, 0, 0, 0, -1]), [-1, 0, 0])
    with pytest.raises(ValueError, match="iop"):
        slice_normal([1, 0, 0, 1, 0, 0])
    with pytest.raises(ValueError, match="iop"):
        slice_normal([1, 0, 0])


def test_sort_and_affine_map_every_slice_position():
    rng = np.random.default_rng(0)
    iop = np.r_[np.array([1.0, 0.2, 0.0]) / np.hypot(1, 0.2), 0, 0, 1.0]
    n = slice_normal(iop)
    origin = np.array([10.0, -5.0, 3.0])
    pos = origin + np.outer(np.arange(7) * 1.5, n)
    perm = rng.permutation(7)
    order = sort_by_position(pos[perm], n)
    np.testing.assert_array_equal(perm[order], np.arange(7))
    aff = affine_from_dicom(iop, pos[0], (0.7, 0.9), pos[1] - pos[0])
    for k in range(7):
        np.testing.assert_allclose(aff @ [k, 0, 0, 1], np.r_[pos[k], 1], atol=1e-12)
    # row index moves along the column cosine Y with the row spacing (PixelSpacing[0])
    np.testing.assert_allclose(aff @ [0, 1, 0, 1], np.r_[pos[0] + 0.7 * np.array(iop[3:]), 1], atol=1e-12)
    np.testing.assert_allclose(aff @ [0, 0, 1, 1], np.r_[pos[0] + 0.9 * np.array(iop[:3]), 1], atol=1e-12)


def test_gantry_tilt_and_spacing_stats():
    iop = [1, 0, 0, 0, 1, 0]
    tilt = np.deg2rad(15)
    pos = np.array([[0, k * 2.5 * np.sin(tilt), k * 2.5 * np.cos(tilt)] for k in range(5)])
    out = detect_gantry_tilt(iop, pos)
    assert out["tilted"] and out["tilt_deg"] == pytest.approx(15.0, abs=1e-9)
    assert not detect_gantry_tilt(iop, pos[:, [0, 0, 2]] * [0, 0, 1])["tilted"]
    st = slice_spacing_stats([0, 2, 4, 8, 10])
    assert st["missing_slices"] == 1 and st["uneven"] and st["median_mm"] == 2
    st = slice_spacing_stats([0, 2, 4, 6])
    assert st["missing_slices"] == 0 and not st["uneven"]


def test_demosaic_and_position_correction():
    tiles = np.arange(5 * 4 * 6).reshape(5, 4, 6)
    mosaic = np.zeros((12, 18), dtype=tiles.dtype)
    for s in range(5):
        r, c = divmod(s, 3)
        mosaic[r * 4:(r + 1) * 4, c * 6:(c + 1) * 6] = tiles[s]
    np.testing.assert_array_equal(demosaic(mosaic, 5), tiles)
    np.testing.assert_array_equal(demosaic(np.stack([mosaic, mosaic + 1]), 5), np.stack([tiles, tiles + 1]))
    ipp = mosaic_position_correction([-324, -324, 16], [1, 0, 0, 0, 1, 0], [3, 3], (216, 216), (72, 72))
    np.testing.assert_allclose(ipp, [-108, -108, 16])


# ----------------------------------------------------------------------------- real data
def test_xa30_classic_t1w_matches_dcm2niix(shared_data, tmp_path):
    base = shared_data / "siemens_xa30i_t1w_classic"
    vols, rej = convert_folder(base / "In")
    assert rej == [] and len(vols) == 1
    v = vols[0]
    assert v.kind == "3d" and v.volume.shape == (96, 128, 128)
    # round trip through our NIfTI writer, then compare in world space
    out = tmp_path / "xa30.nii.gz"
    write_nifti(out, v.volume, v.affine)
    a, aa = canonical_ref(out)
    b, ba = canonical_ref(base / "Ref" / "5001_anat-T1w_acq-tfl.nii.gz")
    np.testing.assert_array_equal(a, b)
    # dcm2niix takes the slice step from the first two slices (2.0001 mm); we use the mean IPP step
    # (2.000001 mm), which puts every slice on its own IPP. The far end therefore differs by
    # 95 * 1e-4 mm = 0.0095 mm (+ float32 rounding in the reference) along the slice axis.
    np.testing.assert_allclose(aa[:3, :3], ba[:3, :3], atol=2e-4)
    np.testing.assert_allclose(aa[:3, 3], ba[:3, 3], atol=0.0101)
    assert v.meta["slice_spacing_stats"]["max_mm"] == pytest.approx(2.0001, abs=1e-6)
    # stronger: the affine reproduces every file's ImagePositionPatient (IPPs are written with 1e-4 mm
    # resolution, so the gaps are 1.99995..2.0001 mm; 2e-4 mm is that quantisation)
    import pydicom

    ipp = {}
    for p in (base / "In").rglob("*.dcm"):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        ipp[str(ds.SOPInstanceUID)] = np.array([float(x) for x in ds.ImagePositionPatient])
    for k, uid in enumerate(v.instance_uids):
        np.testing.assert_allclose((v.affine @ [k, 0, 0, 1])[:3], ipp[uid], atol=2e-4)
    assert v.meta["missing_slices"] == 0 and v.meta["gantry_tilt_deg"] < 1e-3


@pytest.mark.parametrize("patient", ["STS_008", "STS_025"])
@pytest.mark.parametrize("modality,ref", [("CT", "CT"), ("PET", "PET"), ("MR_T1", "MR_T1")])
def test_sts_images_match_reference(shared_data, patient, modality, ref):
    base = shared_data / "ibsi_sts_ct_pet_mr_rtstruct"
    vols, rej = convert_folder(base / "dicom" / patient / modality / "image")
    assert rej == [] and len(vols) == 1
    v = vols[0]
    assert_world_equal(v, base / "nifti" / patient / f"{ref}_image.nii.gz", rtol=1e-5 if modality == "PET" else 0)
    # the medflow-convention reader gives the same grid directly
    r = read_nifti(base / "nifti" / patient / f"{ref}_image.nii.gz")
    assert r.volume.shape == v.volume.shape
    np.testing.assert_allclose(r.affine, v.affine, atol=0.01)
    if modality == "PET":
        assert v.meta["units"] == "GML" and v.meta["suvbw_status"] == "not_bqml"
        assert v.volume.dtype == np.float32
    if modality == "CT":
        assert v.volume.dtype.kind == "i" and v.meta["units"] == "HU"


@pytest.mark.parametrize("series,ref", [("mr_0004", "DCM2NIIX_regression_test_4.nii"),
                                        ("mr_0007", "DCM2NIIX_regression_test_7.nii")])
def test_ge_epi_4d_matches_dcm2niix(shared_data, series, ref):
    base = shared_data / "nih_ge_siemens_epi_4d"
    vols, rej = convert_folder(base / "In" / "20180918GE" / series)
    assert {r.reason for r in rej} == {"not_dicom"}  # README-Series.txt only
    assert len(vols) == 1
    v = vols[0]
    assert v.kind == "4d" and v.volume.shape == (10, 15, 64, 64)
    assert v.meta["n_time_points"] == 10
    assert_world_equal(v, base / "Ref" / ref)


@pytest.mark.parametrize("series,ref", [("mr_0003", "EPI_PE=AP_3.nii"), ("mr_0004", "EPI_PE=PA_4.nii"),
                                        ("mr_0005", "EPI_PE=RL_5.nii"), ("mr_0006", "EPI_PE=LR_6.nii")])
def test_siemens_mosaic_matches_dcm2niix(shared_data, series, ref):
    base = shared_data / "nih_ge_siemens_epi_4d"
    vols, rej = convert_folder(base / "In" / "20180918Si" / series)
    assert len(vols) == 1
    v = vols[0]
    assert v.kind == "4d" and v.volume.shape == (2, 5, 72, 72)
    assert v.meta["mosaic"] and v.meta["mosaic_tiles"] == 5
    # In world space the tiles need NO row flip: dcm2niix's flip is its NIfTI storage convention.
    assert_world_equal(v, base / "Ref" / ref)


def test_collect_folder_sts_patient(shared_data):
    res = collect_folder(shared_data / "ibsi_sts_ct_pet_mr_rtstruct" / "dicom" / "STS_008")
    assert len(res.volumes) == 3 and len(res.masks) == 3
    assert res.rejections == [] and res.routed == []
    assert {v.meta["modality"] for v in res.volumes} == {"CT", "PT", "MR"}


def test_meta_is_phi_free(shared_data):
    import json

    vols, _ = convert_folder(shared_data / "ibsi_sts_ct_pet_mr_rtstruct" / "dicom" / "STS_008" / "PET" / "image")
    meta = vols[0].meta
    text = json.dumps(meta)  # JSON-serialisable
    import pydicom

    ds = pydicom.dcmread(next((shared_data / "ibsi_sts_ct_pet_mr_rtstruct" / "dicom" / "STS_008" / "PET" / "image")
                              .glob("*.dcm")), stop_before_pixels=True)
    for kw in ("PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
               "FrameOfReferenceUID", "StudyDate", "SeriesDate", "AcquisitionDate", "InstitutionName",
               "SeriesDescription", "StudyDescription", "AccessionNumber", "PatientBirthDate"):
        val = str(ds.get(kw, "") or "")
        if len(val) >= 4:
            assert val not in text, kw
