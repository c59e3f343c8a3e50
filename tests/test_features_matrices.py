"""Oracle tests: the vectorised texture matrices and morphology against plain loops over voxels."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from scipy import ndimage as ndi

from imaging.features import intensity as fi
from imaging.features import morphology as fm
from imaging.features import texture as ft


def _random_roi(seed: int, shape: tuple[int, int, int] = (5, 7, 8), n_levels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    levels = rng.integers(1, n_levels + 1, size=shape).astype(np.int32)
    # smooth-ish structure so that runs and zones are longer than one voxel
    levels = np.where(rng.random(shape) < 0.5, np.roll(levels, 1, axis=2), levels).astype(np.int32)
    mask = rng.random(shape) < 0.8
    return np.where(mask, levels, 0).astype(np.int32)


def _dense(stack: ft.Stack, shape_j: int) -> np.ndarray:
    out = np.zeros((stack.n_mats, int(stack.i.max(initial=0)) + 1, shape_j))
    np.add.at(out, (stack.mid, stack.i, stack.j), stack.n)
    return out


def _inside(p: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    return all(0 <= a < n for a, n in zip(p, shape, strict=True))


# ------------------------------------------------------------------------------------------ GLCM


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("distance", [1, 2])
def test_glcm_matches_a_voxel_loop(seed: int, distance: int) -> None:
    lv = _random_roi(seed)
    stack = ft.glcm_stack(lv, distance=distance, two_d=False)
    got = _dense(stack, 4)
    for k, d in enumerate(ft.DIRECTIONS_3D):
        ref = np.zeros((4, 4))
        for p in itertools.product(*[range(n) for n in lv.shape]):
            q = tuple(a + distance * b for a, b in zip(p, d, strict=True))
            if lv[p] and _inside(q, lv.shape) and lv[q]:
                ref[lv[p], lv[q]] += 1
                ref[lv[q], lv[p]] += 1
        np.testing.assert_array_equal(got[k, : ref.shape[0], :], ref[: got.shape[1]])


def test_glcm_two_d_is_per_slice() -> None:
    lv = _random_roi(3)
    stack = ft.glcm_stack(lv, two_d=True)
    got = _dense(stack, 4)
    for z in range(lv.shape[0]):
        s = ft.glcm_stack(lv[z: z + 1], two_d=True)
        np.testing.assert_array_equal(got[z * 4: z * 4 + 4, : s.i.max() + 1], _dense(s, 4))


# ------------------------------------------------------------------------------------------ GLRLM


def _runs_loop(lv: np.ndarray, d: tuple[int, int, int]) -> Counter:
    runs: Counter = Counter()
    for p in itertools.product(*[range(n) for n in lv.shape]):
        if not lv[p]:
            continue
        prev = tuple(a - b for a, b in zip(p, d, strict=True))
        if _inside(prev, lv.shape) and lv[prev] == lv[p]:
            continue  # not a run start
        length, q = 0, p
        while _inside(q, lv.shape) and lv[q] == lv[p]:
            length += 1
            q = tuple(a + b for a, b in zip(q, d, strict=True))
        runs[(int(lv[p]), length, p[0])] += 1
    return runs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_glrlm_runs_match_a_voxel_loop(seed: int) -> None:
    lv = _random_roi(seed, shape=(4, 6, 9))
    padded = np.pad(lv, 1)
    for d in ft.DIRECTIONS_3D:
        gl, length, orig = ft._runs(padded, d)
        z = orig // (padded.shape[1] * padded.shape[2]) - 1
        got = Counter(zip(gl.tolist(), length.tolist(), z.tolist(), strict=True))
        assert got == _runs_loop(lv, d), d


def test_glrlm_stack_counts_and_voxels() -> None:
    lv = _random_roi(4)
    s3 = ft.glrlm_stack(lv)
    n_roi = int((lv > 0).sum())
    # every voxel belongs to exactly one run per direction
    per_dir = np.bincount(s3.mid, weights=s3.n * s3.j, minlength=13)
    np.testing.assert_array_equal(per_dir, n_roi)
    np.testing.assert_array_equal(s3.n_v, n_roi)
    s2 = ft.glrlm_stack(lv, two_d=True)
    per_slice = (lv > 0).reshape(lv.shape[0], -1).sum(axis=1)
    np.testing.assert_array_equal(s2.n_v, np.repeat(per_slice, 4))


# ------------------------------------------------------------------------------------------ zones


@pytest.mark.parametrize("seed", [0, 5])
def test_zones_match_scipy_label_per_level(seed: int) -> None:
    lv = _random_roi(seed)
    full = np.ones((3, 3, 3), dtype=bool)
    ref3: Counter = Counter()
    ref2: Counter = Counter()
    plane = np.zeros((3, 3, 3), dtype=bool)
    plane[1] = True
    for g in range(1, int(lv.max()) + 1):
        lab, n = ndi.label(lv == g, structure=full)
        ref3.update((g, int(s)) for s in np.bincount(lab.ravel())[1:])
        lab2, _ = ndi.label(lv == g, structure=plane)
        ref2.update((g, int(s)) for s in np.bincount(lab2.ravel())[1:] if s)
    s3 = ft.glszm_stack(lv)
    assert Counter({(int(i), int(j)): int(n) for i, j, n in zip(s3.i, s3.j, s3.n, strict=True)}) == ref3
    s2 = ft.merge(ft.glszm_stack(lv, two_d=True), np.zeros(lv.shape[0], dtype=np.int64), 1)
    assert Counter({(int(i), int(j)): int(n) for i, j, n in zip(s2.i, s2.j, s2.n, strict=True)}) == ref2


def _distance_by_erosion(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """The manual's iterative algorithm: erode, add 1 to every surviving voxel, repeat."""
    dist = mask.astype(int)
    cur = np.pad(mask, 1)
    while True:
        cur = ndi.binary_erosion(cur, structure=structure)
        inner = cur[1:-1, 1:-1, 1:-1]
        if not inner.any():
            return dist
        dist += inner


def test_border_distance_is_the_manuals_erosion_distance() -> None:
    rng = np.random.default_rng(7)
    mask = ndi.binary_closing(rng.random((7, 9, 9)) < 0.75, iterations=1)
    d3 = ft.border_distance(mask)
    np.testing.assert_array_equal(d3, _distance_by_erosion(mask, ndi.generate_binary_structure(3, 1)))
    plane = np.zeros((3, 3, 3), dtype=bool)
    plane[1] = ndi.generate_binary_structure(2, 1)
    d2 = ft.border_distance(mask, two_d=True)
    np.testing.assert_array_equal(d2, _distance_by_erosion(mask, plane))


def test_border_distance_is_face_connected() -> None:
    """The only nearby way out of the centre is diagonal: distance 2 under 4-connectedness."""
    mask = np.zeros((1, 5, 5), dtype=bool)
    mask[0, 1:4, 1:4] = True
    mask[0, 1, 1] = False
    d = ft.border_distance(mask, two_d=True)
    assert d[0, 2, 2] == 2 and d[0, 1, 2] == 1


def test_gldzm_uses_the_morphological_mask_for_distances() -> None:
    lv = np.zeros((1, 5, 5), dtype=np.int32)
    lv[0, 2, 2] = 1  # intensity mask: a single voxel in the centre
    morph = np.zeros((1, 5, 5), dtype=bool)
    morph[0, 1:4, 1:4] = True  # morphological mask: the 3x3 block around it
    s = ft.gldzm_stack(lv, morph, two_d=True)
    assert (s.i.tolist(), s.j.tolist()) == ([1], [2])


# ------------------------------------------------------------------------------------------ NGTDM / NGLDM


def _neighbours(p: tuple[int, ...], shape: tuple[int, ...], two_d: bool, delta: int = 1):
    rz = [0] if two_d else range(-delta, delta + 1)
    for off in itertools.product(rz, range(-delta, delta + 1), range(-delta, delta + 1)):
        if off == (0, 0, 0):
            continue
        q = tuple(a + b for a, b in zip(p, off, strict=True))
        if _inside(q, shape):
            yield q


@pytest.mark.parametrize("two_d", [False, True])
def test_ngtdm_and_ngldm_match_a_voxel_loop(two_d: bool) -> None:
    lv = _random_roi(11)
    ng = int(lv.max())
    n_mats = lv.shape[0] if two_d else 1
    s_ref = np.zeros((n_mats, ng + 1))
    n_ref = np.zeros((n_mats, ng + 1))
    dep_ref: Counter = Counter()
    for p in itertools.product(*[range(n) for n in lv.shape]):
        if not lv[p]:
            continue
        vals = [lv[q] for q in _neighbours(p, lv.shape, two_d) if lv[q]]
        m = p[0] if two_d else 0
        if vals:
            s_ref[m, lv[p]] += abs(lv[p] - np.mean(vals))
            n_ref[m, lv[p]] += 1
        dep_ref[(m, int(lv[p]), 1 + sum(v == lv[p] for v in vals))] += 1
    got = ft.ngtdm(lv, two_d=two_d)
    np.testing.assert_allclose(got.s, s_ref, atol=1e-12)
    np.testing.assert_array_equal(got.n, n_ref)
    s = ft.ngldm_stack(lv, two_d=two_d)
    assert Counter({(int(a), int(b), int(c)): int(n) for a, b, c, n in
                    zip(s.mid, s.i, s.j, s.n, strict=True)}) == dep_ref


def test_ngldm_coarseness_counts_near_levels() -> None:
    lv = np.array([[[1, 2, 4]]], dtype=np.int32)
    s = ft.ngldm_stack(lv, coarseness=1.0, two_d=True)
    assert sorted(zip(s.i.tolist(), s.j.tolist(), strict=True)) == [(1, 2), (2, 2), (4, 1)]


# ------------------------------------------------------------------------------------------ merging


def test_merging_equals_features_of_the_summed_matrix() -> None:
    lv = _random_roi(9)
    s2 = ft.glcm_stack(lv, two_d=True)
    merged = ft.merge(s2, np.zeros(s2.n_mats, dtype=np.int64), 1)
    dense = _dense(s2, 4).sum(axis=0)
    i, j = np.nonzero(dense)
    single = ft.Stack(np.zeros(i.size, dtype=np.int64), i.astype(np.int64), j.astype(np.int64), dense[i, j], 1,
                      np.zeros(1))
    a, b = ft.glcm_features(merged, 3), ft.glcm_features(single, 3)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-12, err_msg=k)


def test_glcm_features_of_a_hand_matrix() -> None:
    """The 2x2 matrix [[2, 1], [1, 0]] (p = [[.5,.25],[.25,0]]), features by hand."""
    st = ft.Stack(np.zeros(3, dtype=np.int64), np.array([1, 1, 2]), np.array([1, 2, 1]), np.array([2.0, 1, 1]),
                  1, np.zeros(1))
    f = {k: float(v[0]) for k, v in ft.glcm_features(st, 2).items()}
    assert f["cm.joint.max"] == 0.5
    assert f["cm.joint.avg"] == pytest.approx(1.25)
    assert f["cm.contrast"] == pytest.approx(0.5)
    assert f["cm.energy"] == pytest.approx(0.375)
    assert f["cm.joint.entr"] == pytest.approx(1.5)
    assert f["cm.inv.var"] == pytest.approx(0.5)
    assert f["cm.inv.diff.norm"] == pytest.approx(0.5 + 0.5 / 1.5)
    # marginals p = (0.75, 0.25): mu = 1.25, var = 0.1875; cov = sum (i-mu)(j-mu)p = -0.0625
    assert f["cm.corr"] == pytest.approx(-0.0625 / 0.1875)


def test_zone_features_of_a_hand_matrix() -> None:
    """Two zones: grey 1 size 1, grey 2 size 2, 3 voxels."""
    st = ft.Stack(np.zeros(2, dtype=np.int64), np.array([1, 2]), np.array([1, 2]), np.array([1.0, 1.0]), 1,
                  np.array([3.0]))
    f = {k: float(v[0]) for k, v in ft.zone_features(st, "szm").items()}
    assert f["szm.sze"] == pytest.approx((1 + 1 / 4) / 2)
    assert f["szm.lze"] == pytest.approx((1 + 4) / 2)
    assert f["szm.z.perc"] == pytest.approx(2 / 3)
    assert f["szm.glnu"] == pytest.approx(1.0)
    assert f["szm.zs.entr"] == pytest.approx(1.0)
    assert f["szm.gl.var"] == pytest.approx(0.25)


# ------------------------------------------------------------------------------------------ morphology


def test_moran_and_geary_match_the_pair_sum() -> None:
    rng = np.random.default_rng(2)
    mask = rng.random((4, 5, 6)) < 0.7
    img = rng.normal(size=mask.shape) + np.arange(6)[None, None, :]
    sp = (2.0, 0.7, 1.1)
    x = img[mask]
    pos = np.column_stack(np.nonzero(mask)) * np.array(sp)
    d = np.sqrt(((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    w = 1.0 / d
    xc = x - x.mean()
    moran = len(x) / w.sum() * (w * np.outer(xc, xc)).sum() / (xc ** 2).sum()
    geary = (len(x) - 1) / (2 * w.sum()) * (w * (x[:, None] - x[None, :]) ** 2).sum() / (xc ** 2).sum()
    got_i, got_c = fm._spatial_autocorrelation(x, mask, sp)
    assert got_i == pytest.approx(moran, rel=1e-9)
    assert got_c == pytest.approx(geary, rel=1e-9)


def test_ellipsoid_area_series_is_the_manuals() -> None:
    """RDD2 uses the manual's Legendre series with alpha = sqrt(1 - b^2/a^2), beta = sqrt(1 - c^2/a^2).

    It is exact for a sphere. It is *not* the true area of other ellipsoids (a 5-2-2 prolate
    spheroid gets 80.0 instead of 104.6); the IBSI consensus value of the digital phantom
    (1.36) is reproduced only by the series as printed, so that is what is implemented.
    """
    from scipy.special import eval_legendre

    assert fm.ellipsoid_area(3.0, 3.0, 3.0) == pytest.approx(4 * np.pi * 9)
    a, b, c = 6.0, 4.5, 2.0
    al, be = np.sqrt(1 - b * b / (a * a)), np.sqrt(1 - c * c / (a * a))
    series = sum((al * be) ** n / (1 - 4 * n * n) * eval_legendre(n, (al * al + be * be) / (2 * al * be))
                 for n in range(21))
    assert fm.ellipsoid_area(a, b, c) == pytest.approx(4 * np.pi * a * b * series, rel=1e-12)
    # the prolate spheroid case, where alpha = beta: documented deviation from the true area
    assert fm.ellipsoid_area(5.0, 2.0, 2.0) == pytest.approx(80.03, abs=0.01)


def test_mvee_of_a_box_corners() -> None:
    pts = np.array(list(itertools.product([-1.0, 1.0], [-2.0, 2.0], [-3.0, 3.0])))
    a, b, c = fm._mvee(pts, tol=1e-7, max_iter=100000)
    # the minimum enclosing ellipsoid of a box has semi-axes sqrt(3) times the half-sides
    np.testing.assert_allclose([a, b, c], np.sqrt(3) * np.array([3.0, 2.0, 1.0]), rtol=1e-3)


def test_oriented_bounding_box_of_a_rotated_cuboid() -> None:
    from scipy.spatial import ConvexHull
    from scipy.spatial.transform import Rotation

    corners = np.array(list(itertools.product([0.0, 2.0], [0.0, 3.0], [0.0, 5.0])))
    rng = np.random.default_rng(3)
    inner = rng.random((40, 3)) * np.array([2.0, 3.0, 5.0])
    pts = Rotation.from_euler("xyz", [0.3, -0.7, 1.1]).apply(np.vstack([corners, inner])) + 7.0
    vol, area = fm._min_bounding_box(pts, ConvexHull(pts))
    assert vol == pytest.approx(30.0, rel=1e-9)
    assert area == pytest.approx(2 * (6 + 10 + 15), rel=1e-9)


def test_sphere_morphology() -> None:
    r = 10.0
    g = np.mgrid[-12:13, -12:13, -12:13]
    mask = (g ** 2).sum(0) <= r * r
    img = np.ones(mask.shape)
    f = fm.morphology_features(mask, mask, img, spacing=(1.0, 1.0, 1.0))
    assert f["morph.vol"] == pytest.approx(4 / 3 * np.pi * r ** 3, rel=0.02)
    assert f["morph.sphericity"] > 0.9
    assert f["morph.com"] == pytest.approx(0.0, abs=1e-9)
    assert f["morph.pca.elongation"] == pytest.approx(1.0, abs=1e-6)
    assert f["morph.diam"] == pytest.approx(2 * r + 1, rel=0.02)
    assert f["morph.v.dens.ombb"] <= 1.0 and f["morph.v.dens.mvee"] <= 1.0 + 1e-6


# ------------------------------------------------------------------------------------------ local intensity


def test_local_intensity_peaks_match_a_loop() -> None:
    rng = np.random.default_rng(4)
    img = rng.normal(size=(6, 9, 9))
    mask = np.zeros(img.shape, dtype=bool)
    mask[2:4, 3:7, 2:6] = True
    sp = (3.0, 1.5, 1.5)
    kern = fi.sphere_kernel(sp)
    half = [(k - 1) // 2 for k in kern.shape]
    offs = np.column_stack(np.nonzero(kern)) - np.array(half)
    peaks = {}
    for p in zip(*np.nonzero(mask), strict=True):
        vals = [img[tuple(q)] for q in offs + np.array(p) if _inside(tuple(q), img.shape)]
        peaks[p] = np.mean(vals)
    vmax = img[mask].max()
    local = max(v for p, v in peaks.items() if img[p] == vmax)
    got = fi.local_intensity_features(img, mask, spacing=sp)
    assert got["loc.peak.local"] == pytest.approx(local, rel=1e-12)
    assert got["loc.peak.global"] == pytest.approx(max(peaks.values()), rel=1e-12)
    # radius 6.2 mm over 1 mm voxels: the FFT branch
    sp1 = (1.0, 1.0, 1.0)
    kern1 = fi.sphere_kernel(sp1)
    assert kern1.size > 343
    img1 = rng.normal(size=(16, 16, 16))
    m1 = np.zeros(img1.shape, dtype=bool)
    m1[6:9, 5:11, 7:9] = True
    h1 = [(k - 1) // 2 for k in kern1.shape]
    o1 = np.column_stack(np.nonzero(kern1)) - np.array(h1)
    best = max(np.mean([img1[tuple(q)] for q in o1 + np.array(p) if _inside(tuple(q), img1.shape)])
               for p in zip(*np.nonzero(m1), strict=True))
    assert fi.local_intensity_features(img1, m1, spacing=sp1)["loc.peak.global"] == pytest.approx(best, rel=1e-9)
