"""imaging.segment against scikit-image / scipy oracles; chunked paths equal in-core paths."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi
from skimage.filters import threshold_multiotsu, threshold_otsu

from imaging import segment as S

RNG = np.random.default_rng(1)
CT = RNG.normal(0, 100, (40, 50, 60)).astype(np.int16)
CT[10:20, 10:30, 5:40] += 400
CHUNKS = (16, 20, 25)


class Store:
    """A minimal out-of-core array-like (only shape, dtype, slicing) standing in for a zarr array."""

    def __init__(self, a: np.ndarray, chunks: tuple[int, ...] | None = None) -> None:
        self._a = a
        self.shape, self.dtype = a.shape, a.dtype
        if chunks is not None:
            self.chunks = chunks
        self.reads = 0

    def __getitem__(self, key: object) -> np.ndarray:
        self.reads += 1
        return self._a[key].copy()

    def __setitem__(self, key: object, value: np.ndarray) -> None:
        self._a[key] = value


def test_otsu_equals_skimage_numpy_dask_store() -> None:
    ref = threshold_otsu(CT)
    assert S.otsu_threshold(CT) == ref
    assert S.otsu_threshold(da.from_array(CT, chunks=CHUNKS)) == ref
    store = Store(CT)
    assert S.otsu_threshold(store) == ref and store.reads >= 1
    f = CT.astype(np.float32) + RNG.random(CT.shape).astype(np.float32)
    assert S.otsu_threshold(da.from_array(f, chunks=CHUNKS)) == pytest.approx(threshold_otsu(f), rel=1e-6)
    m = CT > 0
    assert S.otsu_threshold(da.from_array(CT, chunks=CHUNKS), mask=m) == threshold_otsu(CT[m])
    wide = CT.astype(np.int32) * 3
    assert S.otsu_threshold(wide) == threshold_otsu(wide)
    u8 = (CT - CT.min()).astype(np.uint16)
    assert S.otsu_threshold(da.from_array(u8, chunks=CHUNKS)) == threshold_otsu(u8)


def test_multi_otsu_equals_skimage() -> None:
    np.testing.assert_array_equal(S.multi_otsu_thresholds(da.from_array(CT, chunks=CHUNKS), classes=3),
                                  threshold_multiotsu(CT, classes=3))
    with pytest.raises(ValueError, match="classes"):
        S.multi_otsu_thresholds(CT, classes=1)


def test_histogram_never_loads_dask_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    d = da.from_array(CT, chunks=CHUNKS)
    seen: list[int] = []
    real = S.K.bincount_int16

    def spy(block: np.ndarray, mask: np.ndarray | None = None, counts: np.ndarray | None = None) -> np.ndarray:
        seen.append(block.size)
        return real(block, mask, counts)

    monkeypatch.setattr(S.K, "bincount_int16", spy)
    counts, centers = S.histogram(d)
    assert counts.sum() == CT.size and centers[0] == CT.min() and centers[-1] == CT.max()
    assert len(seen) == d.npartitions and max(seen) <= int(np.prod(CHUNKS))  # chunk by chunk
    with pytest.raises(ValueError, match="no voxels"):
        S.histogram(d, mask=np.zeros(CT.shape, bool))


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.float64])
def test_percentile_exact_on_dask(dtype: type) -> None:
    a = CT.astype(dtype)
    if dtype is not np.int16:
        a = np.where(RNG.random(a.shape) < 0.6, 0, a + RNG.random(a.shape)).astype(dtype)  # heavy ties at 0
    qs = [0, 1, 37.3, 50, 99, 100]
    d = da.from_array(a, chunks=CHUNKS)
    np.testing.assert_allclose(S.percentile(d, qs), np.percentile(a, qs), rtol=1e-12, atol=1e-9)
    m = a > 0
    np.testing.assert_allclose(S.percentile(d, [5, 95], mask=da.from_array(m, chunks=8)), np.percentile(a[m], [5, 95]), rtol=1e-12)


def _same_up_to_permutation(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or ((a == 0) != (b == 0)).any():
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


@pytest.mark.parametrize("connectivity", [1, 2, 3])
def test_label_in_core_and_out_of_core_identical(connectivity: int) -> None:
    mask = RNG.random((30, 41, 37)) < 0.3
    ref, nref = ndi.label(mask, ndi.generate_binary_structure(3, connectivity))
    l1, n1 = S.label(mask, connectivity=connectivity)
    l2, n2 = S.label(da.from_array(mask, chunks=(7, 9, 11)), connectivity=connectivity, memory_budget_bytes=1000)
    l3, n3 = S.label(mask, connectivity=connectivity, memory_budget_bytes=150_000)  # numpy: slab merge
    l2 = l2.compute()
    assert n1 == n2 == n3 == nref
    for lab in (l1, l2, l3):
        assert _same_up_to_permutation(lab, ref)
        np.testing.assert_array_equal(lab, ref)  # stronger: same raster-order numbering as scipy
        assert lab.dtype == np.int32


def test_label_chunk_merge_joins_objects_spanning_many_chunks() -> None:
    mask = np.zeros((20, 20, 20), bool)
    mask[2:18, 10, 10] = True  # crosses 4 chunks along axis 0
    mask[10, 2:18, 3] = True
    mask[15, 15, 15] = mask[16, 16, 16] = True  # diagonal pair across a corner of chunks
    d = da.from_array(mask, chunks=5)
    for conn in (1, 3):
        lab, n = S.label(d, connectivity=conn, memory_budget_bytes=1)
        ref, nref = ndi.label(mask, ndi.generate_binary_structure(3, conn))
        assert n == nref
        np.testing.assert_array_equal(lab.compute(), ref)


def test_remove_small_objects_equals_skimage() -> None:
    from skimage.morphology import remove_small_objects

    mask = RNG.random((20, 25, 30)) < 0.3
    for conn in (1, 3):
        ref = remove_small_objects(mask, max_size=4, connectivity=conn)
        np.testing.assert_array_equal(S.remove_small_objects(mask, min_size=5, connectivity=conn), ref)
        got = S.remove_small_objects(da.from_array(mask, chunks=(7, 9, 11)), min_size=5, connectivity=conn, memory_budget_bytes=1)
        np.testing.assert_array_equal(got.compute(), ref)


def test_region_grow_equals_flood() -> None:
    from skimage.morphology import flood

    vol = ndi.gaussian_filter(RNG.normal(0, 1, (20, 24, 28)), 2)
    lower, upper = -0.05, 0.3
    inside = (vol >= lower) & (vol <= upper)
    seed = tuple(int(v) for v in np.argwhere(inside)[len(np.argwhere(inside)) // 2])
    ref = flood(inside.astype(np.uint8), seed, connectivity=1)
    np.testing.assert_array_equal(S.region_grow(vol, seeds=[seed], lower=lower, upper=upper), ref)
    got = S.region_grow(da.from_array(vol, chunks=7), seeds=np.array([seed]), lower=lower, upper=upper, memory_budget_bytes=1)
    np.testing.assert_array_equal(got.compute(), ref)
    smask = np.zeros(vol.shape, bool)
    smask[seed] = True
    np.testing.assert_array_equal(S.region_grow(vol, seeds=smask, lower=lower, upper=upper), ref)
    with pytest.raises(ValueError, match="outside"):
        S.region_grow(vol, seeds=[(99, 0, 0)], lower=0, upper=1)


def test_watershed_equals_skimage() -> None:
    from skimage.segmentation import watershed

    vol = ndi.gaussian_filter(RNG.normal(0, 1, (16, 18, 20)), 2)
    markers = np.zeros(vol.shape, np.int32)
    markers[2, 2, 2], markers[12, 14, 15] = 1, 2
    np.testing.assert_array_equal(S.watershed(da.from_array(vol, chunks=8), markers=markers), watershed(vol, markers))


@pytest.mark.parametrize("op", ["opening", "closing"])
def test_morphology_dask_equals_scipy(op: str) -> None:
    mask = ndi.gaussian_filter(RNG.random((22, 26, 30)), 1.2) > 0.5
    fn = {"opening": (S.binary_opening, ndi.binary_opening), "closing": (S.binary_closing, ndi.binary_closing)}[op]
    for conn, it in ((1, 1), (3, 2)):
        ref = fn[1](mask, structure=ndi.generate_binary_structure(3, conn), iterations=it)
        np.testing.assert_array_equal(fn[0](mask, connectivity=conn, iterations=it), ref)
        np.testing.assert_array_equal(fn[0](da.from_array(mask, chunks=(7, 9, 10)), connectivity=conn, iterations=it).compute(), ref)


def test_fill_holes_dask_equals_scipy() -> None:
    mask = np.zeros((20, 20, 20), bool)
    mask[3:17, 3:17, 3:17] = True
    mask[6:14, 6:14, 6:14] = False  # hole spanning several chunks
    mask[8, 8, 8] = True
    mask[0:5, 0:5, 0] = True
    mask[1:4, 1:4, 0] = False  # touches the border: not a hole
    for conn in (1, 2):
        ref = ndi.binary_fill_holes(mask, ndi.generate_binary_structure(3, conn))
        np.testing.assert_array_equal(S.binary_fill_holes(mask, connectivity=conn), ref)
        got = S.binary_fill_holes(da.from_array(mask, chunks=6), connectivity=conn, memory_budget_bytes=1)
        np.testing.assert_array_equal(got.compute(), ref)


def test_pet_isocontour() -> None:
    z, y, x = np.meshgrid(*[np.arange(30)] * 3, indexing="ij")
    pet = 10 * np.exp(-((z - 12) ** 2 + (y - 15) ** 2 + (x - 15) ** 2) / (2 * 3.0**2)) + 1.0
    pet[25:28, 25:28, 25:28] = 9.0  # a second hot spot outside the roi / not connected
    roi = np.zeros(pet.shape, bool)
    roi[5:22, 5:25, 5:25] = True
    m40 = S.pet_isocontour(pet, fraction=0.4, roi=roi)
    suvmax = pet[roi].max()
    np.testing.assert_array_equal(m40, roi & (pet >= 0.4 * suvmax))
    m50 = S.pet_isocontour(da.from_array(pet, chunks=10), fraction=0.5, roi=da.from_array(roi, chunks=10)).compute()
    assert m50.sum() < m40.sum() and m50[12, 15, 15]
    everywhere = S.pet_isocontour(pet, fraction=0.5, connected=False)
    assert everywhere[26, 26, 26] and not S.pet_isocontour(pet, fraction=0.5)[26, 26, 26]
    with pytest.raises(ValueError, match="fraction"):
        S.pet_isocontour(pet, fraction=40)
