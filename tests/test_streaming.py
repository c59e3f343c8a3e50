"""imaging.streaming: slab-streamed processing of array-likes equals the in-core result."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
from skimage.filters import threshold_otsu

from imaging import streaming as ST


class Store:
    """Zarr-like array-like: slicing only, optional ``chunks``; records the largest read/write (voxels)."""

    def __init__(self, a: np.ndarray, chunks: tuple[int, ...] | None = None) -> None:
        self._a = a
        self.shape, self.dtype = a.shape, a.dtype
        if chunks is not None:
            self.chunks = chunks
        self.max_read = 0
        self.writes: list[tuple[int, int]] = []

    def __getitem__(self, key: slice) -> np.ndarray:
        out = self._a[key].copy()
        self.max_read = max(self.max_read, out.size)
        return out

    def __setitem__(self, key: slice, value: np.ndarray) -> None:
        self.writes.append((key.start or 0, key.stop))
        self._a[key] = value


def _ct(shape: tuple[int, int, int] = (37, 40, 45)) -> np.ndarray:
    rng = np.random.default_rng(7)
    v = rng.normal(0, 40, shape)
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    for c in ([10, 12, 14], [26, 30, 20], [18, 8, 35], [33, 33, 40]):
        v += 300 * (((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) < 25)
    return v.astype(np.int16)


def test_plan_slab_respects_budget() -> None:
    s = ST.plan_slab((1000, 100, 100), bytes_per_voxel=10, halo=4, memory_budget_bytes=10_000_000, max_in_flight=2)
    assert 2 * (s + 8) * 100 * 100 * 10 <= 10_000_000
    assert ST.plan_slab((1000, 100, 100), bytes_per_voxel=10, memory_budget_bytes=10_000_000, align=16) % 16 == 0
    with pytest.raises(ValueError, match="memory_budget_bytes"):
        ST.plan_slab((10, 1000, 1000), bytes_per_voxel=10, halo=2, memory_budget_bytes=1000)


def test_gaussian_to_store_equals_scipy_and_aligns_to_chunks() -> None:
    ct = _ct()
    src = Store(ct)
    dst = Store(np.zeros(ct.shape, np.float32), chunks=(4, 40, 45))
    lo, hi = ST.gaussian_to_store(src, dst, spacing=(2.0, 1.0, 1.0), sigma_mm=2.0, slab=8, n_threads=2, max_in_flight=2)
    ref = ndi.gaussian_filter(ct.astype(np.float64), (1.0, 2.0, 2.0))
    np.testing.assert_allclose(dst._a, ref, atol=2e-4 * np.abs(ref).max())
    assert lo == pytest.approx(dst._a.min()) and hi == pytest.approx(dst._a.max())
    assert all(a % 4 == 0 for a, _ in dst.writes)  # slabs never share an output chunk
    assert src.max_read <= (8 + 2 * 4) * 40 * 45  # slab + halo, never the whole volume
    with pytest.raises(ValueError, match="multiple"):
        ST.gaussian_to_store(src, dst, spacing=(1, 1, 1), sigma_mm=1.0, slab=6)


def test_label_to_store_equals_scipy() -> None:
    ct = _ct()
    thr = threshold_otsu(ct)
    for conn in (1, 3):
        dst = Store(np.zeros(ct.shape, np.int32))
        n = ST.label_to_store(Store(ct), dst, threshold=thr, connectivity=conn, slab=5, n_threads=2)
        ref, nref = ndi.label(ct > thr, ndi.generate_binary_structure(3, conn))
        assert n == nref
        np.testing.assert_array_equal(dst._a, ref)
    dst = Store(np.zeros(ct.shape, np.int32))
    n = ST.label_to_store(Store(ct), dst, threshold=thr, min_size=20, slab=7)
    lab, _ = ndi.label(ct > thr)
    sizes = np.bincount(lab.ravel())
    assert n == int((sizes[1:] >= 20).sum())
    keep = np.flatnonzero(sizes >= 20)
    np.testing.assert_array_equal(dst._a > 0, np.isin(lab, keep[keep > 0]))


def test_smooth_threshold_label_pipeline_equals_in_core() -> None:
    ct = _ct()
    smoothed = Store(np.zeros(ct.shape, np.float32), chunks=(3, 40, 45))
    labels = Store(np.zeros(ct.shape, np.int32), chunks=(3, 40, 45))
    budget = ST.BASE_BYTES + 2 * 16 * 40 * 45 * 10  # 2 slabs in flight of 16 planes (halo included) at 10 bytes/voxel
    res = ST.smooth_threshold_label(Store(ct), smoothed, labels, spacing=(1, 1, 1), sigma_mm=1.5,
                                    memory_budget_bytes=budget, n_threads=2)
    g = ndi.gaussian_filter(ct.astype(np.float32), 1.5)
    thr = threshold_otsu(smoothed._a)
    assert res["threshold"] == pytest.approx(thr)
    ref, nref = ndi.label(smoothed._a > res["threshold"])
    assert res["n_labels"] == nref
    np.testing.assert_array_equal(labels._a, ref)
    np.testing.assert_allclose(smoothed._a, g, atol=0.05)
    assert len({a for a, _ in labels.writes}) > 2  # really streamed in several slabs
