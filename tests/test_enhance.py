"""Oracle tests of imaging.enhance against numpy / scikit-image, numpy and dask (chunks crossing borders)."""

from __future__ import annotations

from collections.abc import Callable

import dask.array as da
import numpy as np
import pytest
from skimage import exposure

from imaging.enhance import clahe, equalize_histogram, gamma_correction, log_transform


@pytest.fixture(scope="module")
def ct() -> np.ndarray:
    """CT-like int16 volume, 20^3, with negative values."""
    return np.random.default_rng(7).integers(-1024, 3000, size=(20, 20, 20)).astype(np.int16)


@pytest.fixture(scope="module")
def fvol() -> np.ndarray:
    rng = np.random.default_rng(8)
    return rng.gamma(2.0, 50.0, size=(20, 20, 20)) - 30.0


def _dask(x: np.ndarray) -> da.Array:
    return da.from_array(x, chunks=7)


def test_log_transform_oracle(ct: np.ndarray, fvol: np.ndarray) -> None:
    for x in (ct, fvol):
        expected = np.log(x.astype(np.float64) - x.min() + 1.0)
        got = log_transform(x)
        assert got.dtype == np.float32 and got.min() == 0.0
        np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-6)
        lazy = log_transform(_dask(x))
        assert isinstance(lazy, da.Array) and lazy.dtype == np.float32
        np.testing.assert_array_equal(lazy.compute(), got)
    np.testing.assert_allclose(
        log_transform(fvol, dtype=np.float64), np.log(fvol - fvol.min() + 1.0), rtol=1e-12
    )


def test_log_transform_ignores_nan_for_the_minimum() -> None:
    x = np.array([[[np.nan, 2.0, 5.0]]])
    out = log_transform(x, dtype=np.float64)
    assert np.isnan(out[0, 0, 0])
    np.testing.assert_allclose(out[0, 0, 1:], np.log([1.0, 4.0]))


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.2])
def test_gamma_correction_oracle(fvol: np.ndarray, gamma: float) -> None:
    lo, hi = fvol.min(), fvol.max()
    expected = lo + (hi - lo) * exposure.adjust_gamma((fvol - lo) / (hi - lo), gamma)
    got = gamma_correction(fvol, gamma=gamma, dtype=np.float64)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(gamma_correction(_dask(fvol), gamma=gamma, dtype=np.float64).compute(), got)


def test_gamma_correction_window_clips(ct: np.ndarray) -> None:
    got = gamma_correction(ct, gamma=0.5, in_range=(-100.0, 300.0), dtype=np.float64)
    assert got.min() == -100.0 and got.max() == 300.0
    inside = (ct > -100) & (ct < 300)
    np.testing.assert_allclose(got[inside], -100.0 + 400.0 * np.sqrt((ct[inside] + 100.0) / 400.0))


def test_equalize_histogram_oracle(fvol: np.ndarray) -> None:
    expected = exposure.equalize_hist(fvol, nbins=64)
    got = equalize_histogram(fvol, nbins=64, dtype=np.float64)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        equalize_histogram(_dask(fvol), nbins=64, dtype=np.float64).compute(),
        expected,
        rtol=1e-12,
        atol=1e-12,
    )


def test_equalize_histogram_with_mask(fvol: np.ndarray) -> None:
    mask = np.zeros(fvol.shape, dtype=bool)
    mask[4:15, 3:17, 5:12] = True
    expected = exposure.equalize_hist(fvol, nbins=32, mask=mask)
    got = equalize_histogram(fvol, nbins=32, mask=mask, dtype=np.float64)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    lazy = equalize_histogram(_dask(fvol), nbins=32, mask=mask, dtype=np.float64)
    np.testing.assert_allclose(lazy.compute(), expected, rtol=1e-12, atol=1e-12)


def test_equalize_histogram_flattens_the_distribution(fvol: np.ndarray) -> None:
    out = equalize_histogram(fvol, nbins=256)
    hist, _ = np.histogram(out, bins=4, range=(0, 1))
    assert hist.min() > 0.2 * out.size  # skewed gamma input -> about a quarter per quartile
    assert np.all(np.diff(out.ravel()[np.argsort(fvol.ravel())]) >= 0)  # monotone mapping


def test_clahe_3d_oracle(fvol: np.ndarray) -> None:
    unit = (fvol - fvol.min()) / (fvol.max() - fvol.min())
    expected = exposure.equalize_adapthist(unit, kernel_size=8, clip_limit=0.02, nbins=128)
    got = clahe(fvol, mode="3D", kernel_size=8, clip_limit=0.02, nbins=128, dtype=np.float64)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        clahe(_dask(fvol), mode="3D", kernel_size=8, clip_limit=0.02, nbins=128, dtype=np.float64).compute(),
        expected,
        atol=1e-12,
    )


def test_clahe_2d_per_slice_oracle(ct: np.ndarray) -> None:
    lo, hi = -200.0, 400.0
    unit = np.clip((ct.astype(np.float64) - lo) / (hi - lo), 0, 1)
    expected = np.stack([exposure.equalize_adapthist(s, clip_limit=0.01) for s in unit])
    got = clahe(ct, mode="2D", clip_limit=0.01, in_range=(lo, hi), dtype=np.float64)
    np.testing.assert_allclose(got, expected, atol=1e-12)
    lazy = clahe(_dask(ct), mode="2D", clip_limit=0.01, in_range=(lo, hi), dtype=np.float64)
    assert lazy.chunks[0] == (7, 7, 6)  # slabs stay chunked along axis 0
    np.testing.assert_allclose(lazy.compute(), expected, atol=1e-12)


@pytest.mark.parametrize(
    ("call", "exc", "word"),
    [
        (lambda: log_transform(np.zeros(0)), ValueError, "volume"),
        (lambda: log_transform(np.array(["a"])), TypeError, "volume"),
        (lambda: log_transform(np.ones(3), dtype=np.int32), TypeError, "dtype"),
        (lambda: log_transform(np.full(3, np.nan)), ValueError, "finite"),
        (lambda: gamma_correction(np.ones(3), gamma=0), ValueError, "gamma"),
        (lambda: gamma_correction(np.ones(3), gamma=1.0, in_range=(5, 1)), ValueError, "in_range"),
        (lambda: gamma_correction(np.ones(3), gamma=1.0, in_range=5), TypeError, "in_range"),
        (lambda: equalize_histogram(np.ones(3), nbins=1), ValueError, "nbins"),
        (lambda: equalize_histogram(np.ones(3), mask=np.ones(4, bool)), ValueError, "mask"),
        (lambda: equalize_histogram(np.ones(3), mask=np.ones(3)), TypeError, "mask"),
        (lambda: clahe(np.ones((4, 4)), mode="2D", clip_limit=0.01), ValueError, "volume"),
        (lambda: clahe(np.ones((4, 4, 4)), mode="4D", clip_limit=0.01), ValueError, "mode"),
        (lambda: clahe(np.ones((4, 4, 4)), mode="3D", clip_limit=2.0), ValueError, "clip_limit"),
        (
            lambda: clahe(np.ones((4, 4, 4)), mode="2D", clip_limit=0.1, kernel_size=(2, 2, 2)),
            ValueError,
            "kernel_size",
        ),
    ],
)
def test_validation_errors_name_the_parameter(call: Callable[[], object], exc: type, word: str) -> None:
    with pytest.raises(exc, match=word):
        call()


def test_log_transform_table_path_equals_float64_and_fills_out():
    from imaging.enhance import log_transform

    rng = np.random.default_rng(7)
    vol = rng.integers(-1024, 3071, size=(9, 17, 13)).astype(np.int16)
    ref = np.log1p(vol.astype(np.float64) - vol.min()).astype(np.float32)
    out = np.empty(vol.shape, dtype=np.float32)
    got = log_transform(vol, out=out, n_threads=2)
    assert got is out
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(log_transform(da.from_array(vol, chunks=(4, 5, 6))).compute(), ref)
    with pytest.raises(ValueError, match="out must be"):
        log_transform(vol, out=np.empty((2, 2), dtype=np.float32))
