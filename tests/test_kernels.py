"""Compiled kernels of imaging.kernels against numpy/scipy oracles."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.ndimage as ndi

from imaging import kernels as K


@pytest.mark.parametrize("mode", K.MODES)
@pytest.mark.parametrize("n,pad", [(5, 3), (3, 7), (1, 2)])
def test_boundary_index_matches_scipy_padding(mode: str, n: int, pad: int) -> None:
    # correlate an impulse at every position with a one-hot kernel: scipy's own extension of the axis
    x = np.arange(n, dtype=np.float64) + 1.0
    idx = K.boundary_index(n, pad, pad, mode)
    ext = np.where(idx < 0, -9.0, x[np.maximum(idx, 0)])
    for shift in range(-pad, pad + 1):
        w = np.zeros(2 * pad + 1)
        w[pad + shift] = 1.0
        ref = ndi.correlate1d(x, w, mode=mode, cval=-9.0)
        np.testing.assert_array_equal(ext[pad + shift : pad + shift + n], ref)


def test_gaussian_weights_match_scipy() -> None:
    for sigma in (0.4, 1.0, 2.3):
        w = K.gaussian_weights(sigma, 4.0)
        impulse = np.zeros(41)
        impulse[20] = 1.0
        ref = ndi.gaussian_filter1d(impulse, sigma, truncate=4.0)
        r = len(w) // 2
        np.testing.assert_allclose(w[::-1], ref[20 - r : 20 + r + 1], atol=1e-15)


def test_median_network_is_a_median_selector_zero_one_principle() -> None:
    # 0-1 principle: a comparator network selects the median of all inputs iff it does so for all 0/1 inputs
    for n in (9, 27):
        lo, hi, out = K.median_network(n)
        rng = np.random.default_rng(n)
        if n == 9:
            bits = np.array(list(itertools.product((0, 1), repeat=9)), dtype=np.uint8)
        else:
            bits = (rng.random((200_000, n)) < rng.random((200_000, 1))).astype(np.uint8)
        v = bits.T.copy()
        for a, b in zip(lo, hi, strict=True):
            va, vb = v[a].copy(), v[b]
            v[a] = np.minimum(va, vb)
            v[b] = np.maximum(va, vb)
        np.testing.assert_array_equal(v[out], (bits.sum(axis=1) > n // 2).astype(np.uint8))
    assert len(K.median_network(27)[0]) < 140  # pruned network is small


@pytest.mark.parametrize("mode", K.MODES)
def test_median_filter_bit_identical_to_scipy(mode: str) -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(-50, 50, size=(9, 11, 13)).astype(np.int16)  # many ties
    for size in ((3, 3, 3), (1, 3, 5), (5, 5, 5)):
        np.testing.assert_array_equal(K.median_filter(a, size, mode=mode, cval=7, n_threads=2),
                                      ndi.median_filter(a, size=size, mode=mode, cval=7))
    f = rng.normal(size=(6, 7, 8)).astype(np.float32)
    np.testing.assert_array_equal(K.median_filter(f, (3, 3, 3), mode=mode), ndi.median_filter(f, 3, mode=mode))


def test_median_filter_rejects_even_or_huge_sizes() -> None:
    a = np.zeros((4, 4, 4), np.int16)
    with pytest.raises(ValueError, match="size"):
        K.median_filter(a, (2, 3, 3))
    with pytest.raises(ValueError, match="125"):
        K.median_filter(a, (7, 7, 7))


@pytest.mark.parametrize("mode", K.MODES)
def test_gaussian_filter_matches_scipy(mode: str) -> None:
    rng = np.random.default_rng(2)
    a = rng.integers(-1000, 2000, size=(12, 15, 17)).astype(np.int16)
    sig = (1.3, 0.6, 2.1)
    out = np.empty(a.shape, np.float32)
    got = K.gaussian_filter(a, sig, mode=mode, cval=3.0, out=out, n_threads=2)
    assert got is out
    ref = ndi.gaussian_filter(a.astype(np.float64), sig, mode=mode, cval=3.0)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-4 * np.abs(ref).max())


def test_bincount_int16_and_mask() -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(-32768, 32767, size=(5, 30, 40), endpoint=True).astype(np.int16)
    m = rng.random(a.shape) < 0.3
    ref = np.bincount(a.ravel().astype(np.int64) + 32768, minlength=65536)
    np.testing.assert_array_equal(K.bincount_int16(a), ref)
    refm = np.bincount(a[m].astype(np.int64) + 32768, minlength=65536)
    np.testing.assert_array_equal(K.bincount_int16(a, m), refm)
    with pytest.raises(TypeError):
        K.bincount_int16(a.astype(np.int32))


def test_window_clip_matches_numpy() -> None:
    a = np.arange(-2000, 2000, 3, dtype=np.int16).reshape(1, 1, -1)
    got = K.window_clip(a, -160.0, 240.0, scale=1 / 400, offset=160 / 400, n_threads=2)
    ref = (np.clip(a.astype(np.float64), -160, 240) + 160) / 400
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_label_stats_counts_and_first_index() -> None:
    lab, n = ndi.label(np.random.default_rng(4).random((6, 7, 8)) < 0.4)
    counts, first = K.label_stats(lab.astype(np.int32), n, 2, 3, 4, 20, 30)
    np.testing.assert_array_equal(counts[1:], np.bincount(lab.ravel(), minlength=n + 1)[1:])
    for lbl in range(1, n + 1):
        z, y, x = np.argwhere(lab == lbl)[0]
        assert first[lbl] == ((2 + z) * 20 + (3 + y)) * 30 + (4 + x)


def test_union_planes_connectivity() -> None:
    left = np.array([[1, 0], [0, 0]], dtype=np.int64)
    right = np.array([[0, 0], [0, 2]], dtype=np.int64)  # only diagonally adjacent
    for conn, merged in ((1, 0), (2, 0), (3, 1)):
        parent = np.arange(3, dtype=np.int64)
        from imaging.segment import _plane_offsets

        assert K.uf_union_planes(parent, left, right, _plane_offsets(conn)) == merged


@pytest.mark.parametrize("connectivity", [1, 2, 3])
def test_label_runs_equals_scipy_any_thread_count(connectivity: int) -> None:
    rng = np.random.default_rng(5)
    for p in (0.2, 0.45, 0.7):
        m = rng.random((37, 41, 45)) < p
        ref, n = ndi.label(m, ndi.generate_binary_structure(3, connectivity))
        for threads in (1, 2, 3):
            lab, k = K.label_runs(m, connectivity, n_threads=threads)
            assert k == n
            np.testing.assert_array_equal(lab, ref)
        lab, k = K.label_runs(m, connectivity, min_size=5, n_threads=2)
        sizes = np.bincount(ref.ravel())
        keep = np.flatnonzero(sizes >= 5)
        keep = keep[keep > 0]
        expected = np.zeros_like(ref)
        inside = np.isin(ref, keep)
        expected[inside] = np.searchsorted(keep, ref[inside]) + 1
        assert k == keep.size
        np.testing.assert_array_equal(lab, expected)


def test_label_runs_component_spanning_all_slabs() -> None:
    m = np.zeros((64, 8, 8), bool)
    m[:, 0, 0] = True  # one thin component through every slab
    m[::2, 5, 5] = True  # 32 components
    lab, n = K.label_runs(m, 1, n_threads=4)
    ref, nref = ndi.label(m)
    assert n == nref == 33
    np.testing.assert_array_equal(lab, ref)


def test_histogram_uniform_equals_numpy_histogram() -> None:
    rng = np.random.default_rng(6)
    for dt in (np.float32, np.float64):
        a = rng.normal(0, 100, 200_000).astype(dt)
        a[::1000] = a.max()
        a[5] = np.nan
        lo, hi = np.nanmin(a), np.nanmax(a)
        m = rng.random(a.size) < 0.5
        for bins in (7, 256):
            e = np.histogram_bin_edges(np.array([lo, hi], dtype=dt), bins=bins, range=(lo, hi))
            np.testing.assert_array_equal(K.histogram_uniform(a, e), np.histogram(a, bins=bins, range=(lo, hi))[0])
            np.testing.assert_array_equal(K.histogram_uniform(a, e, m), np.histogram(a[m], bins=bins, range=(lo, hi))[0])
