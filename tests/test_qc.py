"""imaging.qc: every QC code triggered by constructed geometry/values; none on the real STS series."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import pydicom
import pytest

from imaging import qc
from imaging.qc import QC_CODES, QCFinding, noise_sigma, qc_table, series_qc, snr_estimate, volume_findings

Z = np.array([0.0, 0.0, 1.0])
AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def _stack(zs, xy=(10.0, -20.0)):
    return np.array([[xy[0], xy[1], z] for z in zs], dtype=float)


def _codes(findings):
    return {f.code: f for f in findings}


@pytest.fixture(scope="module")
def sts_ct(shared_data):
    d = shared_data / "ibsi_sts_ct_pet_mr_rtstruct" / "dicom" / "STS_008" / "CT" / "image"
    files = sorted(d.glob("*.dcm"))
    if not files:
        pytest.skip("STS_008 CT not present")
    return [pydicom.dcmread(f) for f in files]


def test_real_sts_ct_series_has_no_findings(sts_ct):
    dss = sts_ct
    pos = np.array([d.ImagePositionPatient for d in dss], dtype=float)
    iop = np.array([d.ImageOrientationPatient for d in dss], dtype=float)
    normal = np.cross(iop[0, :3], iop[0, 3:])
    vol = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss])
    findings = series_qc(pos, normal, orientations=iop, shapes=[(d.Rows, d.Columns) for d in dss],
                         pixel_formats=[(d.BitsAllocated, d.BitsStored, d.PixelRepresentation) for d in dss],
                         spacing=[float(x) for x in dss[0].PixelSpacing], volume=vol, modality="CT", units="HU")
    assert findings == []
    assert snr_estimate(vol, background=-1000.0) > 20


def test_regular_stack_is_clean():
    assert series_qc(_stack(np.arange(20) * 2.5), Z, spacing=(2.5, 0.7, 0.7)) == []


def test_missing_slices():
    zs = np.delete(np.arange(20) * 2.0, [7, 8])  # a gap of 3 steps
    f = _codes(series_qc(_stack(zs), Z))
    assert f["missing_slices"].severity == "error" and f["missing_slices"].value == 2
    assert "uneven_spacing" not in f


def test_duplicated_slices():
    zs = np.r_[np.arange(10) * 2.0, 6.0]
    f = _codes(series_qc(_stack(zs), Z))
    assert f["duplicated_slices"].severity == "error" and f["duplicated_slices"].value == 1


def test_uneven_spacing_warning_and_error():
    small = np.cumsum([0, 2, 2, 2, 2.1, 2, 2, 2])
    f = _codes(series_qc(_stack(small), Z))
    assert f["uneven_spacing"].severity == "warning" and f["uneven_spacing"].value == pytest.approx(0.05)
    large = np.cumsum([0, 2, 2, 2, 2.6, 2, 2, 2])
    f = _codes(series_qc(_stack(large), Z))
    assert f["uneven_spacing"].severity == "error"
    # within tolerance: nothing
    assert series_qc(_stack(np.cumsum([0, 2, 2, 2.01, 2])), Z) == []


def test_mixed_orientation():
    o = np.tile(AXIAL, (6, 1))
    a = math.radians(5)
    o[3] = [math.cos(a), math.sin(a), 0, -math.sin(a), math.cos(a), 0]
    f = _codes(series_qc(_stack(np.arange(6) * 2.0), Z, orientations=o))
    assert f["mixed_orientation"].severity == "error"
    assert series_qc(_stack(np.arange(6) * 2.0), Z, orientations=np.tile(AXIAL, (6, 1))) == []


def test_mixed_shape_and_pixel_format():
    pos = _stack(np.arange(4) * 2.0)
    f = _codes(series_qc(pos, Z, shapes=[(512, 512)] * 3 + [(256, 256)],
                         pixel_formats=[(16, 12, 0, "MONOCHROME2")] * 3 + [(16, 16, 1, "MONOCHROME2")]))
    assert f["mixed_shape"].severity == "error" and f["mixed_shape"].value == 2
    assert f["mixed_pixel_format"].severity == "warning"


@pytest.mark.parametrize("spacing", [(0.0, 0.7, 0.7), (2.5, None, 0.7), (2.5, float("nan"), 0.7), (-1.0, 1.0)])
def test_zero_or_missing_spacing(spacing):
    f = _codes(series_qc(_stack(np.arange(5) * 2.5), Z, spacing=spacing))
    assert f["zero_or_missing_spacing"].severity == "error"


def test_all_slices_at_one_position_is_zero_spacing():
    f = _codes(series_qc(_stack([5.0, 5.0, 5.0]), Z))
    assert f["zero_or_missing_spacing"].severity == "error"
    assert f["duplicated_slices"].value == 2


def test_gantry_tilt():
    n = 10
    pos = np.array([[0.0, 0.5 * i, 2.0 * i] for i in range(n)])  # advances obliquely: atan(0.5/2) = 14 deg
    f = _codes(series_qc(pos, Z))
    assert f["gantry_tilt"].severity == "warning"
    assert f["gantry_tilt"].value == pytest.approx(math.degrees(math.atan(0.25)), rel=1e-6)


def _ct_like(rng, shape=(6, 64, 64)):
    vol = np.full(shape, -1000.0)
    vol[:, 16:48, 16:48] = 40.0
    return vol + rng.normal(0, 10, size=shape)


def test_implausible_intensity_ct():
    rng = np.random.default_rng(0)
    vol = _ct_like(rng)
    pos = _stack(np.arange(6) * 2.0)
    assert series_qc(pos, Z, volume=vol, modality="CT") == []
    bad = vol.copy()
    bad[:, :8, :] = 10000.0  # 12.5 % above the range
    f = _codes(series_qc(pos, Z, volume=bad, modality="CT"))
    assert f["implausible_intensity"].severity == "warning"
    assert f["implausible_intensity"].value == pytest.approx(0.125)
    f = _codes(series_qc(pos, Z, volume=vol + 6000, modality="CT"))  # stored values without rescale, say
    assert f["implausible_intensity"].severity == "error"


def test_ct_padding_value_is_not_an_intensity_finding():
    rng = np.random.default_rng(1)
    vol = _ct_like(rng)
    yy, xx = np.mgrid[:64, :64]
    vol[:, (yy - 32) ** 2 + (xx - 32) ** 2 > 31 ** 2] = -3024.0  # outside the reconstruction circle
    assert series_qc(_stack(np.arange(6) * 2.0), Z, volume=vol, modality="CT") == []


def test_implausible_intensity_pet_suv_and_expected_range():
    rng = np.random.default_rng(2)
    vol = np.abs(rng.normal(1.0, 0.1, size=(4, 32, 32))) + 1.0
    pos = _stack(np.arange(4) * 3.0)
    assert series_qc(pos, Z, volume=vol, modality="PT", units="SUVbw") == []
    neg = vol.copy()
    neg[0] = -5.0
    f = _codes(series_qc(pos, Z, volume=neg, modality="PT", units="SUVbw"))
    assert f["implausible_intensity"].severity == "warning"
    f = _codes(series_qc(pos, Z, volume=vol * 1000, modality="PT", units="GML"))
    assert f["implausible_intensity"].severity == "error"
    # MR has no default range; an explicit one applies
    assert series_qc(pos, Z, volume=vol, modality="MR", min_snr=0) == []
    f = _codes(series_qc(pos, Z, volume=vol, modality="MR", expected_range=(0.0, 1.5), min_snr=0))
    assert "implausible_intensity" in f


def test_noise_sigma_is_accurate_and_blind_to_ramps():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:128, :128]
    ramp = np.broadcast_to(3.0 * yy + 2.0 * xx, (8, 128, 128)).astype(float)
    assert noise_sigma(ramp) == pytest.approx(0.0, abs=1e-9)
    noisy = ramp + rng.normal(0, 10, size=ramp.shape)
    assert noise_sigma(noisy) == pytest.approx(10.0, rel=0.05)


def test_low_snr():
    rng = np.random.default_rng(4)
    signal = np.zeros((4, 64, 64))
    signal[:, 16:48, 16:48] = 100.0
    pos = _stack(np.arange(4) * 2.0)
    assert series_qc(pos, Z, volume=signal + rng.normal(0, 2, size=signal.shape)) == []
    f = _codes(series_qc(pos, Z, volume=signal + rng.normal(0, 40, size=signal.shape)))
    assert f["low_snr"].severity == "warning" and f["low_snr"].value < 5
    assert "low_snr" not in _codes(series_qc(pos, Z, volume=signal + rng.normal(0, 40, size=signal.shape),
                                             min_snr=0))


def test_dask_volume_gives_the_numpy_result():
    rng = np.random.default_rng(5)
    vol = _ct_like(rng, shape=(8, 48, 48))
    vol[:, :4, :] = 9000.0
    dvol = da.from_array(vol, chunks=(3, 20, 20))  # chunk borders in every axis
    pos = _stack(np.arange(8) * 2.0)
    assert noise_sigma(dvol) == pytest.approx(noise_sigma(vol))
    assert snr_estimate(dvol, background=-1000) == pytest.approx(snr_estimate(vol, background=-1000))
    assert series_qc(pos, Z, volume=dvol, modality="CT") == series_qc(pos, Z, volume=vol, modality="CT")


def test_volume_findings_from_converter_meta():
    rng = np.random.default_rng(6)
    vol = _ct_like(rng)
    clean = {"modality": "CT", "units": "HU", "missing_slices": 0, "uneven_spacing_mm": 0.0,
             "slice_spacing_stats": {"median_mm": 2.0}, "gantry_tilt_deg": 0.0, "channels": 1}
    assert volume_findings(vol, clean) == []
    meta = dict(clean, missing_slices=2, duplicate_positions=1, gantry_tilt_deg=12.0)
    f = _codes(volume_findings(vol, meta))
    assert f["missing_slices"].severity == "error" and f["duplicated_slices"].severity == "error"
    assert f["gantry_tilt"].severity == "warning"
    f = _codes(volume_findings(vol, dict(clean, uneven_spacing_mm=0.1)))
    assert f["uneven_spacing"].severity == "warning"
    assert all(isinstance(x.as_dict(), dict) for x in f.values())


def test_qc_table():
    findings = series_qc(_stack(np.delete(np.arange(10) * 2.0, 4)), Z, spacing=(0.0, 1.0))
    df = qc_table(findings)
    assert list(df.columns[:4]) == ["code", "severity", "message", "value"]
    assert set(df["code"]) == {"missing_slices", "zero_or_missing_spacing"}
    assert (df["severity"] == "error").all()
    empty = qc_table([])
    assert list(empty.columns) == ["code", "severity", "message", "value"] and len(empty) == 0
    with_keys = qc_table([dict(findings[0].as_dict(), volume_key="v1")])
    assert "volume_key" in with_keys.columns


def test_codes_and_validation():
    assert set(QC_CODES) >= {"missing_slices", "duplicated_slices", "uneven_spacing", "mixed_orientation",
                             "mixed_shape", "mixed_pixel_format", "zero_or_missing_spacing",
                             "implausible_intensity", "low_snr", "gantry_tilt"}
    with pytest.raises(ValueError, match="code"):
        QCFinding("nope", "error", "x")
    with pytest.raises(ValueError, match="severity"):
        QCFinding("low_snr", "fatal", "x")
    with pytest.raises(ValueError, match="positions"):
        series_qc(np.zeros((3, 2)), Z)
    with pytest.raises(ValueError, match="normal"):
        series_qc(_stack([0, 1]), [0, 0, 0])
    with pytest.raises(ValueError, match="orientations"):
        series_qc(_stack([0, 1]), Z, orientations=np.zeros((3, 6)))
    with pytest.raises(ValueError, match="rel_tolerance"):
        series_qc(_stack([0, 1]), Z, rel_tolerance=0)


def test_module_is_pure():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(qc))
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not names & {"pydicom", "prefect", "zarr", "nibabel", "nrrd", "storage"}


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.uint8, np.int8, np.bool_, np.int32, np.float32])
@pytest.mark.parametrize("shape", [(40, 64, 64), (5, 3, 3), (3, 2, 9), (2, 300, 200)])
def test_noise_sigma_integer_path_equals_the_float_convolution(dtype, shape):
    """Integer volumes take an exact integer path: it must equal scipy's float convolution bit for bit."""
    from scipy import ndimage

    rng = np.random.default_rng([int(x) for x in shape] + [np.dtype(dtype).num])
    if dtype is np.bool_:
        vol = rng.random(shape) > 0.5
    elif np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)  # the full range: the largest responses must not overflow
        vol = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    else:
        vol = rng.normal(0, 100, shape).astype(dtype)
    sigmas = []
    for s in qc._sample_slices(vol, 32):  # the oracle: the Immerkær kernel by scipy.ndimage.convolve in float64
        if min(s.shape) < 3:
            continue
        r = ndimage.convolve(np.asarray(s, dtype=np.float64), qc._IMMERKAER, mode="reflect")[1:-1, 1:-1]
        sigmas.append(qc._MAD_TO_SIGMA * float(np.median(np.abs(r[np.isfinite(r)]))) / 6.0)
    assert noise_sigma(vol) == (float(np.median(sigmas)) if sigmas else 0.0)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int32, np.uint16, np.int64, np.float32])
def test_median_abs_equals_numpy_median(dtype):
    """The counting median of |r| is np.median's value (odd and even sizes, ties, sparse histograms)."""
    from imaging.qc import _median_abs

    rng = np.random.default_rng(11)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    for n in (1, 2, 3, 10, 11, 1000, 1001):
        for scale in (1, 7, 300, 30_000):
            lo = 0 if info is None or info.min == 0 else -scale
            hi = scale if info is None else min(scale, int(info.max))
            r = rng.integers(lo, hi + 1, size=n).astype(dtype)
            assert _median_abs(r) == float(np.median(np.abs(r))), (dtype, n, scale)
    if info is not None and info.max > 10**6:  # a sparse histogram (a huge outlier): the sorting path
        r = np.array([0, 1, 2, info.max // 2], dtype=dtype)
        assert _median_abs(r) == float(np.median(np.abs(r)))
