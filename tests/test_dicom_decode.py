"""Pixel decoding across transfer syntaxes, colour handling, bit masking and size checks.

Uses only files shipped inside pydicom / pydicom-data (``pydicom.data.get_testdata_file``):
lossless encodings must decode equal to the uncompressed original.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402

from storage.dicom.convert import convert_series  # noqa: E402
from storage.dicom.model import FileEntry  # noqa: E402
from storage.dicom.pixels import PixelDataError, check_pixel_data, correct_unused_bits  # noqa: E402
from storage.dicom.scan import classify, read_header, sha256_file  # noqa: E402
from storage.dicom.series import group_series  # noqa: E402


def _data(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = get_testdata_file(name)
    if p is None:
        pytest.skip(f"{name} not available (pydicom-data missing?)")
    return p


def convert_path(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = read_header(path)
        e = FileEntry(path=path, sha256=sha256_file(path), dataset=ds, object_kind=classify(ds))
        return convert_series(group_series([e])[0], **kw)


def volume_of(name: str, **kw):
    vols, rej = convert_path(_data(name), **kw)
    assert rej == [], [(r.reason, r.detail) for r in rej]
    assert len(vols) == 1
    return vols[0]


# --------------------------------------------------------------------------- lossless equality
MR_SMALL_VARIANTS = ["MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm", "MR_small_RLE.dcm",
                     "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_padded.dcm"]


@pytest.mark.parametrize("name", MR_SMALL_VARIANTS)
def test_mr_small_lossless_variants_equal(name):
    ref = volume_of("MR_small.dcm")
    v = volume_of(name)
    assert v.volume.dtype == ref.volume.dtype and v.volume.dtype.isnative
    np.testing.assert_array_equal(v.volume, ref.volume)
    np.testing.assert_allclose(v.affine, ref.affine)


@pytest.mark.parametrize("name", ["emri_small_RLE.dcm", "emri_small_big_endian.dcm",
                                  "emri_small_jpeg_2k_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm"])
def test_emri_small_multiframe_variants_equal(name):
    ref = volume_of("emri_small.dcm")
    assert ref.volume.shape == (10, 64, 64)
    v = volume_of(name)
    np.testing.assert_array_equal(v.volume, ref.volume)


@pytest.mark.parametrize("stem", ["MR2", "RG1", "RG3", "US1"])
def test_j2k_lossless_equals_uncompressed(stem):
    a = volume_of(f"{stem}_UNCR.dcm")
    b = volume_of(f"{stem}_J2KR.dcm")
    assert b.meta["transfer_syntax"].startswith("JPEG 2000")
    assert a.volume.dtype == b.volume.dtype
    np.testing.assert_array_equal(a.volume, b.volume)
    np.testing.assert_allclose(a.affine, b.affine)


def test_rle_and_big_endian_rgb_equal():
    ref = volume_of("SC_rgb.dcm")
    assert ref.volume.shape == (100, 100, 3) and ref.meta["channels"] == "RGB"
    for name in ("SC_rgb_rle.dcm", "SC_rgb_expb.dcm", "SC_rgb_gdcm_KY.dcm", "SC_rgb_jpeg_gdcm.dcm"):
        np.testing.assert_array_equal(volume_of(name).volume, ref.volume, err_msg=name)
    two = volume_of("SC_rgb_rle_2frame.dcm")
    assert two.kind == "2d+t" and two.volume.shape == (2, 100, 100, 3)
    np.testing.assert_array_equal(two.volume[0], ref.volume)
    big16 = volume_of("SC_rgb_expb_16bit.dcm")
    np.testing.assert_array_equal(big16.volume, volume_of("SC_rgb_16bit.dcm").volume)
    assert big16.volume.dtype == np.uint16 and big16.volume.dtype.isnative


def test_ybr_is_converted_to_rgb():
    ref = volume_of("SC_rgb.dcm").volume.astype(int)
    for name in ("SC_ybr_full_uncompressed.dcm", "SC_ybr_full_422_uncompressed.dcm"):
        v = volume_of(name)
        assert v.meta["photometric"].startswith("YBR") and v.meta["channels"] == "RGB"
        # YBR values were rounded when the file was written: a few grey levels at most
        assert np.abs(v.volume.astype(int) - ref).max() <= 8, name


def test_jpeg_baseline_lossy_close_to_uncompressed():
    ref = volume_of("SC_rgb.dcm").volume.astype(float)
    v = volume_of("SC_rgb_jpeg_dcmtk.dcm")
    assert v.meta["transfer_syntax"] == "JPEG Baseline (Process 1)"
    d = np.abs(v.volume.astype(float) - ref)
    assert d.mean() < 1.0 and d.max() <= 8
    lossy = np.abs(volume_of("SC_rgb_jpeg_lossy_gdcm.dcm").volume.astype(float) - ref)
    assert lossy.mean() < 4.0
    assert np.corrcoef(volume_of("SC_rgb_jpeg_lossy_gdcm.dcm").volume.ravel().astype(float), ref.ravel())[0, 1] > 0.98


def test_us_colour_and_regions():
    us = volume_of("US1_UNCR.dcm")
    assert us.kind == "2d" and us.volume.shape == (480, 640, 3) and us.meta["channels"] == "RGB"
    ob = volume_of("OBXXXX1A.dcm")  # PALETTE COLOR ultrasound with ultrasound regions in cm
    assert ob.meta["channels"] == "RGB" and ob.volume.shape == (600, 800, 3)
    assert ob.meta["spacing_source"] == "SequenceOfUltrasoundRegions"
    ds = pydicom.dcmread(_data("OBXXXX1A.dcm"), stop_before_pixels=True)
    r = [r for r in ds.SequenceOfUltrasoundRegions if r.PhysicalUnitsXDirection == 3][0]
    np.testing.assert_allclose(ob.spacing, (abs(r.PhysicalDeltaY) * 10, abs(r.PhysicalDeltaX) * 10))
    cine = volume_of("OBXXXX1A_2frame.dcm")
    assert cine.kind == "2d+t" and cine.volume.shape == (2, 600, 800, 3)
    np.testing.assert_array_equal(cine.volume[0], ob.volume)


def test_cr_spacing_source_and_monochrome1():
    v = volume_of("RG1_UNCR.dcm")
    assert v.kind == "2d" and v.meta["modality"] == "CR" and v.meta["photometric"] == "MONOCHROME1"
    assert "display_note" in v.meta
    # RG1 has PixelSpacing 0\0 (invalid): no spacing claimed
    assert v.meta["spacing_source"] == "none" and v.spacing == (1.0, 1.0)


def test_projection_imager_pixel_spacing_and_magnification(tmp_path):
    ds = pydicom.dcmread(_data("RG1_UNCR.dcm"))
    ds.Modality = "DX"
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = [0.2, 0.2]
    p = tmp_path / "dx.dcm"
    ds.save_as(p)
    v = convert_path(p)[0][0]
    assert v.meta["spacing_source"] == "ImagerPixelSpacing" and v.spacing == pytest.approx((0.2, 0.2))
    assert "not corrected for magnification" in v.meta["calibration"]
    ds.EstimatedRadiographicMagnificationFactor = 1.25
    ds.save_as(p)
    v = convert_path(p)[0][0]
    assert v.spacing == pytest.approx((0.16, 0.16))
    assert v.meta["spacing_source"] == "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"
    v = convert_path(p, apply_magnification=False)[0][0]
    assert v.spacing == pytest.approx((0.2, 0.2)) and v.meta["spacing_source"] == "ImagerPixelSpacing"


def test_enhanced_ct_geometry_from_functional_groups():
    v = volume_of("eCT_Supplemental.dcm")
    assert v.kind == "3d" and v.volume.shape == (2, 512, 512) and v.meta["enhanced_multiframe"]
    ds = pydicom.dcmread(_data("eCT_Supplemental.dcm"))
    sh = ds.SharedFunctionalGroupsSequence[0]
    iop = [float(x) for x in sh.PlaneOrientationSequence[0].ImageOrientationPatient]
    ps = [float(x) for x in sh.PixelMeasuresSequence[0].PixelSpacing]
    pos = np.array([[float(x) for x in f.PlanePositionSequence[0].ImagePositionPatient]
                    for f in ds.PerFrameFunctionalGroupsSequence])
    n = np.cross(iop[:3], iop[3:])
    order = np.argsort(pos @ n)
    for k, i in enumerate(order):
        np.testing.assert_allclose(v.affine @ [k, 0, 0, 1], np.r_[pos[i], 1], atol=1e-6)
    np.testing.assert_allclose(v.affine[:3, 1], np.array(iop[3:]) * ps[0], atol=1e-9)
    np.testing.assert_allclose(v.affine[:3, 2], np.array(iop[:3]) * ps[1], atol=1e-9)
    raw = ds.pixel_array
    fg = ds.PerFrameFunctionalGroupsSequence
    for k, i in enumerate(order):
        pvt = (fg[i].get("PixelValueTransformationSequence") or sh.get("PixelValueTransformationSequence"))[0]
        expect = raw[i].astype(np.float64) * float(pvt.RescaleSlope) + float(pvt.RescaleIntercept)
        np.testing.assert_array_equal(v.volume[k].astype(np.float64), expect)


# --------------------------------------------------------------------------- bits, sizes, damage
def test_bits_stored_high_bits_are_masked_unsigned(tmp_path):
    ds = pydicom.dcmread(_data("MR2_UNCR.dcm"))
    assert ds.BitsStored == 12 and ds.PixelRepresentation == 0
    clean = ds.pixel_array.copy()
    ds.PixelData = (clean.astype(np.uint16) | np.uint16(0xF000)).tobytes()  # garbage in the unused high bits
    p = tmp_path / "dirty.dcm"
    ds.save_as(p)
    dirty = convert_path(p)[0][0]
    ref = volume_of("MR2_UNCR.dcm")
    np.testing.assert_array_equal(dirty.volume, ref.volume)


def test_bits_stored_sign_extension_signed(tmp_path):
    ds = pydicom.dcmread(_data("MR_small.dcm"))
    rng = np.random.default_rng(1)
    values = rng.integers(-2048, 2048, size=(ds.Rows, ds.Columns)).astype(np.int16)
    raw = (values.view(np.uint16) & np.uint16(0x0FFF)) | np.uint16(0xA000)  # 12-bit two's complement + garbage
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 1
    ds.PixelData = raw.astype(np.uint16).tobytes()
    p = tmp_path / "signed12.dcm"
    ds.save_as(p)
    assert np.array_equal(pydicom.dcmread(p).pixel_array, values)  # verified: pydicom itself sign-extends
    v = convert_path(p)[0][0]
    np.testing.assert_array_equal(v.volume[0], values)
    # the defensive helper does the same on its own
    np.testing.assert_array_equal(correct_unused_bits(raw.view(np.int16), bits_stored=12, pixel_representation=1),
                                  values)


def test_pixel_length_mismatch_and_cap(tmp_path):
    ds = pydicom.dcmread(_data("MR_small.dcm"))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    p = tmp_path / "short.dcm"
    ds.save_as(p)
    vols, rej = convert_path(p)
    assert vols == [] and [r.reason for r in rej] == ["pixel_length_mismatch"]
    vols, rej = convert_path(_data("MR_small.dcm"), max_pixel_bytes=1000)
    assert vols == [] and [r.reason for r in rej] == ["absurd_dimensions"]
    # the check is made from the header before any decoding
    hdr = pydicom.dcmread(_data("MR_small.dcm"), defer_size=16)
    with pytest.raises(PixelDataError) as ei:
        check_pixel_data(hdr, max_pixel_bytes=100)
    assert ei.value.reason == "absurd_dimensions"


@pytest.mark.parametrize("name,reason", [("MR_truncated.dcm", "pixel_length_mismatch"),
                                         ("JPEG-lossy.dcm", "decode_failed"),
                                         ("emri_small_jpeg_2k_lossless_too_short.dcm", None)])
def test_damaged_files_become_rejections(name, reason):
    vols, rej = convert_path(_data(name))
    assert vols == [] and len(rej) >= 1
    if reason:
        assert rej[0].reason == reason
    for r in rej:  # PHI-free: no exception message copied, only its type name
        assert r.exception_type is None or r.exception_type.isidentifier()


def test_non_image_objects_are_routed():
    for name, kind in [("rtdose.dcm", "rtdose"), ("rtplan.dcm", "rtplan"), ("test-SR.dcm", "sr"),
                       ("liver_1frame.dcm", "seg")]:
        vols, rej = convert_path(_data(name))
        assert vols == [] and [r.reason for r in rej] == [f"non_image_object:{kind}"], name
