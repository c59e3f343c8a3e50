"""One-pass volume statistics (:mod:`imaging.voxel_stats`) against their numpy expressions, and QC using them."""

from __future__ import annotations

import numpy as np
import pytest

from imaging import qc, voxel_stats


def _volumes():
    rng = np.random.default_rng(20261204)
    for dtype in (np.int8, np.int16, np.uint8, np.uint16):
        info = np.iinfo(dtype)
        yield rng.integers(info.min, info.max, size=(7, 33, 29), endpoint=True).astype(dtype)
        yield np.full((3, 5, 4), info.min, dtype=dtype)  # constant at the minimum
        yield np.full((2, 3, 3), info.max, dtype=dtype)
        v = rng.integers(info.min, info.max, size=(40, 31), endpoint=True).astype(dtype)
        yield v.T  # not C-contiguous
        yield v[::3, 1::2]
        yield np.array([[info.max]], dtype=dtype)
    ct = np.clip(np.random.default_rng(5).normal(-200, 500, (9, 64, 64)), -32768, 32767).astype(np.int16)
    ct[:, :8] = -2048  # padding below the range
    yield ct


@pytest.mark.parametrize("bounds", [(-1024.0, 3071.0), (0.0, 100.0), (-0.5, 0.5), (10.25, 10.75), (-1e9, 1e9),
                                    (200.0, 201.0)])
def test_range_counts_equal_numpy(bounds):
    lo, hi = bounds
    for v in _volumes():
        want = (int(v.min()), int((v < lo).sum()), int((v > hi).sum()), int((v == v.min()).sum()))
        assert voxel_stats.range_counts(v, lo, hi) == want, (v.dtype, v.shape, bounds)


def test_mean_and_above_equal_numpy():
    for v in _volumes():
        mean = v.mean()
        m = v > float(mean)
        want = (float(mean), int(v[m].sum()), int(m.sum()))
        got = voxel_stats.mean_and_above(v)
        assert got == want and type(got[0]) is float, (v.dtype, v.shape)


def test_only_small_integer_numpy_arrays_are_compiled():
    assert voxel_stats.compiled_dtype(np.zeros((2, 2), np.int16))
    assert voxel_stats.compiled_dtype(np.zeros((2, 2), np.uint8))
    for v in (np.zeros((2, 2), np.int32), np.zeros((2, 2), np.float32), np.zeros((2, 2), bool),
              np.zeros((0, 2), np.int16), [[1, 2]]):
        assert not voxel_stats.compiled_dtype(v)
    with pytest.raises(TypeError, match="volume must be"):
        voxel_stats.range_counts(np.zeros((2, 2), np.float32), 0, 1)
    with pytest.raises(ValueError, match="lo must be below hi"):
        voxel_stats.range_counts(np.zeros((2, 2), np.int16), 1, 1)


def test_qc_findings_and_snr_are_the_numpy_paths():
    """The same findings and SNR as the numpy expressions give (the int32 copy takes the numpy path, exactly)."""
    for v in _volumes():
        if v.size < 9 or v.ndim < 2:
            continue
        wide = v.astype(np.int32)
        assert not voxel_stats.compiled_dtype(wide)
        for bg in (0.0, -1000.0, 3.5):
            a, b = qc.snr_estimate(v, background=bg), qc.snr_estimate(wide, background=bg)
            assert a == b or (np.isnan(a) and np.isnan(b)), (v.dtype, v.shape, bg)
        for modality in ("CT", "MR", "PT"):
            got = qc.volume_value_findings(v, modality=modality, units="HU" if modality == "CT" else None,
                                           expected_range=(-1100.0, 4000.0) if modality == "CT" else (0.0, 100.0))
            want = qc.volume_value_findings(wide, modality=modality, units="HU" if modality == "CT" else None,
                                            expected_range=(-1100.0, 4000.0) if modality == "CT" else (0.0, 100.0))
            assert got == want, (v.dtype, v.shape, modality)


def test_immerkaer_median_abs_equals_the_numpy_residual():
    rng = np.random.default_rng(11)
    images = []
    for dtype in (np.int8, np.int16, np.uint8, np.uint16):
        info = np.iinfo(dtype)
        images += [rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
                   for shape in ((3, 3), (4, 3), (3, 8), (17, 23), (64, 64))]
        images.append(np.full((5, 6), info.max, dtype=dtype))
        images.append(rng.integers(0, 3, size=(40, 41)).astype(dtype))  # many ties
        images.append(rng.integers(info.min, info.max, size=(30, 20), endpoint=True).astype(dtype).T)
    for img in images:
        want = qc._median_abs(qc._immerkaer_residual(img))
        assert voxel_stats.immerkaer_median_abs(img) == want, (img.dtype, img.shape)
    with pytest.raises(ValueError, match="at least 3 x 3"):
        voxel_stats.immerkaer_median_abs(np.zeros((2, 5), np.int16))
    with pytest.raises(TypeError, match="8- or 16-bit"):
        voxel_stats.immerkaer_median_abs(np.zeros((4, 4), np.float32))
