"""imaging.preprocess against scipy / scikit-image oracles; dask results equal numpy results."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi
from scipy.spatial.transform import Rotation

from imaging import preprocess as P

RNG = np.random.default_rng(0)
VOL = ndi.gaussian_filter(RNG.normal(0, 100, (21, 26, 31)), 1).astype(np.float32)
VOL_I16 = (VOL * 10).astype(np.int16)
CHUNKS = (7, 9, 10)  # small: every test crosses chunk borders


def test_ibsi_grid_is_centre_aligned() -> None:
    shape, coords, index_map = P.ibsi_grid((10, 20, 5), (3.0, 0.8, 2.0), (1.0, 1.0, 1.0))
    assert shape == (30, 16, 10)
    for a, (n, s, m) in enumerate(zip((10, 20, 5), (3.0, 0.8, 2.0), shape, strict=True)):
        # grid centres coincide: mean of the sampled input coordinates is the input centre
        assert coords[a].mean() == pytest.approx((n - 1) / 2)
        assert np.diff(coords[a]) == pytest.approx(1.0 / s)
        assert index_map[a, a] == pytest.approx(1.0 / s)
        assert m == int(np.ceil(n * s))
    aff = np.diag([3.0, 0.8, 2.0, 1.0])
    _, new_aff = P.resample(np.zeros((10, 20, 5), np.float32), spacing=(3.0, 0.8, 2.0), new_spacing=(1, 1, 1), affine=aff)
    centre_old = aff @ np.array([4.5, 9.5, 2.0, 1.0])
    centre_new = new_aff @ np.array([14.5, 7.5, 4.5, 1.0])
    np.testing.assert_allclose(centre_old, centre_new)
    np.testing.assert_allclose(np.linalg.norm(new_aff[:3, :3], axis=0), [1, 1, 1])


@pytest.mark.parametrize("interpolation", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("mode", ["nearest", "reflect", "mirror", "constant"])
def test_resample_equals_map_coordinates_and_dask(interpolation: str, mode: str) -> None:
    sp, nsp = (2.0, 1.0, 0.7), (1.0, 1.3, 1.0)
    out, _ = P.resample(VOL, spacing=sp, new_spacing=nsp, interpolation=interpolation, mode=mode, cval=-3.0)  # type: ignore[arg-type]
    _, coords, _ = P.ibsi_grid(VOL.shape, sp, nsp)
    ref = ndi.map_coordinates(VOL, np.meshgrid(*coords, indexing="ij"), order=P._ORDERS[interpolation], mode=mode, cval=-3.0)
    np.testing.assert_allclose(out, ref, atol=2e-5)
    od, _ = P.resample(da.from_array(VOL, chunks=CHUNKS), spacing=sp, new_spacing=nsp, interpolation=interpolation,  # type: ignore[arg-type]
                       mode=mode, cval=-3.0, chunks=(9, 8, 11))
    assert od.numblocks[0] > 1
    np.testing.assert_allclose(od.compute(), out, atol=1e-5 if interpolation == "cubic" else 0)


def test_resample_equals_zoom_grid_mode_for_integer_factors() -> None:
    out, _ = P.resample(VOL, spacing=(2, 2, 2), new_spacing=(1, 1, 1), interpolation="linear")
    np.testing.assert_allclose(out, ndi.zoom(VOL, 2, order=1, grid_mode=True, mode="nearest"), atol=2e-5)
    out3, _ = P.resample(VOL, spacing=(2, 2, 2), new_spacing=(1, 1, 1), interpolation="cubic")
    np.testing.assert_allclose(out3, ndi.zoom(VOL, 2, order=3, grid_mode=True, mode="nearest"), atol=2e-4)


def test_resample_nearest_keeps_dtype_and_validates() -> None:
    out, _ = P.resample(VOL_I16, spacing=(1, 1, 1), new_spacing=(2, 2, 2), interpolation="nearest")
    assert out.dtype == np.int16
    with pytest.raises(ValueError, match="interpolation"):
        P.resample(VOL, spacing=(1, 1, 1), new_spacing=(2, 2, 2), interpolation="spline")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="new_spacing"):
        P.resample(VOL, spacing=(1, 1, 1), new_spacing=(2, 0, 2))
    with pytest.raises(ValueError, match="mode"):
        P.resample(VOL, spacing=(1, 1, 1), new_spacing=(2, 2, 2), mode="wrap")


def test_resample_mask_partial_volume() -> None:
    m = np.zeros((12, 12, 12), bool)
    m[3:9, 2:10, 4:7] = True
    out, _ = P.resample_mask(m, spacing=(1, 1, 1), new_spacing=(0.7, 1.6, 1.1), partial_volume=0.5)
    _, coords, _ = P.ibsi_grid(m.shape, (1, 1, 1), (0.7, 1.6, 1.1))
    ref = ndi.map_coordinates(m.astype(np.float64), np.meshgrid(*coords, indexing="ij"), order=1, mode="nearest") >= 0.5 - 1e-6
    np.testing.assert_array_equal(out, ref)
    assert out.dtype == bool
    od, _ = P.resample_mask(da.from_array(m, chunks=5), spacing=(1, 1, 1), new_spacing=(0.7, 1.6, 1.1))
    np.testing.assert_array_equal(od.compute(), out)


@pytest.mark.parametrize("interpolation", ["nearest", "linear", "cubic"])
def test_resample_to_grid_equals_affine_transform(interpolation: str) -> None:
    t = np.eye(4)
    t[:3, :3] = Rotation.from_euler("xyz", [5, -3, 8], degrees=True).as_matrix()
    t[:3, 3] = [2, -1, 3]
    maff = np.diag([2.0, 1.0, 0.7, 1.0])
    maff[:3, 3] = [5, -3, 1]
    taff = np.diag([1.5, 1.2, 0.9, 1.0])
    taff[:3, 3] = [3, -2, 4]
    full = np.linalg.inv(maff) @ t @ taff
    for mode in ("constant", "nearest"):
        kw = dict(moving_affine=maff, target_shape=(25, 22, 30), target_affine=taff, transform=t,
                  interpolation=interpolation, mode=mode, cval=-7.0)
        out = P.resample_to_grid(VOL, **kw)  # type: ignore[arg-type]
        ref = ndi.affine_transform(VOL, full[:3, :3], offset=full[:3, 3], output_shape=(25, 22, 30),
                                   order=P._ORDERS[interpolation], mode=mode, cval=-7.0)
        np.testing.assert_allclose(out, ref, atol=2e-5)
        od = P.resample_to_grid(da.from_array(VOL, chunks=CHUNKS), chunks=(8, 7, 11), **kw)  # type: ignore[arg-type]
        np.testing.assert_allclose(od.compute(), out, atol=1e-5)


@pytest.mark.parametrize("mode", ["reflect", "nearest", "mirror", "constant", "wrap"])
def test_gaussian_and_median_equal_scipy_numpy_and_dask(mode: str) -> None:
    sp = (2.0, 1.0, 0.7)
    g = P.gaussian(VOL_I16, spacing=sp, sigma_mm=1.5, mode=mode)
    ref = ndi.gaussian_filter(VOL_I16.astype(np.float64), 1.5 / np.array(sp), mode=mode)
    np.testing.assert_allclose(g, ref, atol=2e-4 * np.abs(ref).max())
    d = da.from_array(VOL_I16, chunks=CHUNKS)
    np.testing.assert_array_equal(P.gaussian(d, spacing=sp, sigma_mm=1.5, mode=mode).compute(), g)
    np.testing.assert_array_equal(P.median(VOL_I16, size=3, mode=mode), ndi.median_filter(VOL_I16, 3, mode=mode))
    np.testing.assert_array_equal(P.median(d, size=(3, 5, 3), mode=mode).compute(),
                                  ndi.median_filter(VOL_I16, (3, 5, 3), mode=mode))


def test_gaussian_out_and_validation() -> None:
    out = np.empty(VOL.shape, np.float32)
    assert P.gaussian(VOL, spacing=(1, 1, 1), sigma_mm=(1.0, 0.0, 2.0), out=out) is out
    np.testing.assert_allclose(out, ndi.gaussian_filter(VOL.astype(np.float64), (1.0, 0.0, 2.0)), atol=1e-3)
    with pytest.raises(ValueError, match="sigma_mm"):
        P.gaussian(VOL, spacing=(1, 1, 1), sigma_mm=-1.0)
    with pytest.raises(ValueError, match="spacing"):
        P.gaussian(VOL, spacing=(1, 1), sigma_mm=1.0)
    with pytest.raises(ValueError, match="3-D"):
        P.gaussian(VOL[0], spacing=(1, 1, 1), sigma_mm=1.0)


def test_median_large_box_falls_back_to_scipy() -> None:
    small = VOL_I16[:9, :10, :11]
    np.testing.assert_array_equal(P.median(small, size=7), ndi.median_filter(small, 7))


def _bilateral_naive(a: np.ndarray, sp: tuple[float, ...], ss: float, sr: float, truncate: float) -> np.ndarray:
    r = [int(np.ceil(truncate * ss / p)) for p in sp]
    pad = np.pad(a.astype(np.float64), [(x, x) for x in r], mode="symmetric")
    num = np.zeros(a.shape)
    den = np.zeros(a.shape)
    for i in range(-r[0], r[0] + 1):
        for j in range(-r[1], r[1] + 1):
            for k in range(-r[2], r[2] + 1):
                d2 = (i * sp[0]) ** 2 + (j * sp[1]) ** 2 + (k * sp[2]) ** 2
                if d2 > (truncate * ss) ** 2 + 1e-9:
                    continue
                v = pad[r[0] + i : r[0] + i + a.shape[0], r[1] + j : r[1] + j + a.shape[1], r[2] + k : r[2] + k + a.shape[2]]
                w = np.exp(-d2 / (2 * ss**2)) * np.exp(-((v - a) ** 2) / (2 * sr**2))
                num += w * v
                den += w
    return num / den


def test_bilateral_equals_naive_and_dask() -> None:
    sp = (2.0, 1.0, 0.7)
    b = P.bilateral(VOL, spacing=sp, sigma_spatial_mm=1.5, sigma_range=50.0)
    np.testing.assert_allclose(b, _bilateral_naive(VOL, sp, 1.5, 50.0, 2.0), atol=1e-4)
    bd = P.bilateral(da.from_array(VOL, chunks=CHUNKS), spacing=sp, sigma_spatial_mm=1.5, sigma_range=50.0)
    np.testing.assert_array_equal(bd.compute(), b)
    # edge preservation: a step survives much better than under a Gaussian of the same sigma
    step = np.zeros((8, 8, 16), np.float32)
    step[..., 8:] = 100
    sb = P.bilateral(step, spacing=(1, 1, 1), sigma_spatial_mm=1.5, sigma_range=10.0)
    sg = P.gaussian(step, spacing=(1, 1, 1), sigma_mm=1.5)
    assert sb[4, 4, 8] - sb[4, 4, 7] > 95 and sg[4, 4, 8] - sg[4, 4, 7] < 40


def test_anisotropic_diffusion_equals_naive_and_dask() -> None:
    sp = np.array([2.0, 1.0, 0.7])
    out = P.anisotropic_diffusion(VOL, spacing=tuple(sp), iterations=4, kappa=30.0)
    u = VOL.astype(np.float64)
    dt = 0.5 / (2 * np.sum(1 / sp**2))
    for _ in range(4):
        p = np.pad(u, 1, mode="edge")  # zero flux
        acc = np.zeros_like(u)
        for ax in range(3):
            for s in (-1, 1):
                sl = [slice(1, -1)] * 3
                sl[ax] = slice(1 + s, p.shape[ax] - 1 + s)
                d = p[tuple(sl)] - u
                acc += np.exp(-((d / sp[ax]) ** 2) / 30.0**2) * d / sp[ax] ** 2
        u = u + dt * acc
    np.testing.assert_allclose(out, u, atol=1e-4)
    od = P.anisotropic_diffusion(da.from_array(VOL, chunks=CHUNKS), spacing=tuple(sp), iterations=4, kappa=30.0)
    np.testing.assert_array_equal(od.compute(), out)
    with pytest.raises(ValueError, match="time_step"):
        P.anisotropic_diffusion(VOL, spacing=(1, 1, 1), kappa=1.0, time_step=1.0)


def test_nl_means_equals_skimage_and_dask() -> None:
    from skimage.restoration import denoise_nl_means

    small = VOL[:12, :14, :16]
    out = P.nl_means(small, h=40.0, patch_size=3, patch_distance=3)
    ref = denoise_nl_means(small.astype(np.float64), h=40.0, patch_size=3, patch_distance=3, preserve_range=True)
    np.testing.assert_allclose(out, ref, atol=1e-3)
    od = P.nl_means(da.from_array(small, chunks=(6, 7, 8)), h=40.0, patch_size=3, patch_distance=3)
    np.testing.assert_allclose(od.compute(), out, atol=1e-3)
    s2 = P.nl_means(da.from_array(small, chunks=(6, 7, 8)), h=40.0, per_slice=True).compute()
    np.testing.assert_allclose(s2, P.nl_means(small, h=40.0, per_slice=True), atol=1e-3)


def test_normalise_methods_numpy_and_dask() -> None:
    hu = VOL_I16
    d = da.from_array(hu, chunks=CHUNKS)
    mask = hu > 0
    w = P.normalise(hu, method="window", window=(-160, 240))
    np.testing.assert_allclose(w, np.clip(hu, -160, 240))
    wr = P.normalise(hu, method="window", window=(-160, 240), rescale=True)
    np.testing.assert_allclose(wr, (np.clip(hu, -160, 240) + 160) / 400, atol=1e-6)
    z = P.normalise(hu, method="zscore", mask=mask)
    np.testing.assert_allclose(z, (hu - hu[mask].mean()) / hu[mask].std(), atol=1e-5)
    p = P.normalise(hu, method="percentile", percentiles=(1, 99))
    lo, hi = np.percentile(hu, [1, 99])
    np.testing.assert_allclose(p, np.clip((hu - lo) / (hi - lo), 0, 1), atol=1e-6)
    for kw in (dict(method="window", window=(-160, 240)), dict(method="zscore", mask=mask), dict(method="percentile")):
        got = P.normalise(d, **kw)  # type: ignore[arg-type]
        np.testing.assert_allclose(got.compute(), P.normalise(hu, **kw), atol=1e-6)  # type: ignore[arg-type]
    out = np.empty(hu.shape, np.float32)
    assert P.normalise(hu, method="none", out=out) is out
    with pytest.raises(ValueError, match="window"):
        P.normalise(hu, method="window", window=(10, 5))
    with pytest.raises(ValueError, match="method"):
        P.normalise(hu, method="minmax")


def test_suv() -> None:
    # 370 MBq injected, 60 min before the scan, F-18 (6586.2 s), 70 kg: 1 kBq/mL -> SUV
    f = P.suv_factor(injected_dose_bq=370e6, patient_weight_kg=70.0, decay_time_s=3600.0, half_life_s=6586.2)
    assert f * 1000.0 == pytest.approx(70_000.0 * 1000.0 / (370e6 * 2 ** (-3600 / 6586.2)))
    act = np.full((2, 2, 2), 5000.0, np.float32)
    suv = P.normalise(act, method="suv", injected_dose_bq=370e6, patient_weight_kg=70.0, decay_time_s=3600.0, half_life_s=6586.2)
    np.testing.assert_allclose(suv, 5000.0 * f, rtol=1e-6)
    with pytest.raises(ValueError, match="patient_weight_kg"):
        P.suv_factor(injected_dose_bq=1e8, patient_weight_kg=0.0, decay_time_s=0.0, half_life_s=6586.2)


def _bias_phantom(n: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n)] * 3, indexing="ij")
    tissue = np.where(x**2 + y**2 + z**2 < 0.8, 100.0, 0.0) + np.where((x - 0.2) ** 2 + y**2 + z**2 < 0.1, 50.0, 0.0)
    field = np.exp(0.3 * x - 0.2 * y * z + 0.25 * z**2)
    img = (tissue * field + np.random.default_rng(5).normal(0, 2, tissue.shape)).astype(np.float32)
    inner = (x**2 + y**2 + z**2 < 0.7) & ((x - 0.2) ** 2 + y**2 + z**2 > 0.15)
    return img, tissue > 0, field, inner


def test_bias_field_polynomial_recovers_field() -> None:
    img, mask, field, inner = _bias_phantom()
    corr, est = P.bias_field_correction(img, mask=mask, order=3, shrink=2)

    def cov(v: np.ndarray) -> float:
        return float(v[inner].std() / v[inner].mean())

    assert cov(img) > 0.1 and cov(corr) < 0.03
    ratio = est[mask] / field[mask]
    assert ratio.std() / ratio.mean() < 0.01  # the field is recovered up to a global scale
    cd, fd = P.bias_field_correction(da.from_array(img, chunks=16), mask=da.from_array(mask, chunks=16), order=3, shrink=2)
    np.testing.assert_allclose(fd.compute(), est, rtol=1e-6)


def test_bias_field_n4() -> None:
    pytest.importorskip("SimpleITK")
    img, mask, _, inner = _bias_phantom(32)
    corr, _ = P.bias_field_correction(img, mask=mask, method="n4", shrink=2, n4_iterations=(20, 20))
    assert corr[inner].std() / corr[inner].mean() < 0.5 * img[inner].std() / img[inner].mean()


def test_register_rigid_recovers_known_transform() -> None:
    pytest.importorskip("SimpleITK")
    rng = np.random.default_rng(0)
    n = 64
    world = ndi.gaussian_filter(rng.normal(0, 1, (n, n, n)), 2.5).astype(np.float32) * 300
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n)] * 3, indexing="ij")
    world += np.where(x**2 + (y / 0.8) ** 2 + z**2 < 0.5, 100, 0).astype(np.float32)
    waff = np.diag([2.0, 2.0, 2.0, 1.0])
    faff = waff.copy()
    faff[:3, 3] = 24.0
    fixed = world[12:52, 12:52, 12:52]
    rot = np.eye(4)
    rot[:3, :3] = Rotation.from_euler("xyz", [4, -3, 5], degrees=True).as_matrix()
    rot[:3, 3] = [3, -2, 4]
    c = np.eye(4)
    c[:3, 3] = 63.0
    true = c @ rot @ np.linalg.inv(c)
    maff = np.diag([2.5, 2.5, 2.5, 1.0])
    maff[:3, 3] = [20, 22, 21]
    moving = P.resample_to_grid(world, moving_affine=waff, target_shape=(34, 34, 34), target_affine=maff,
                                transform=np.linalg.inv(true), mode="nearest")
    est = P.register_rigid(fixed, moving, fixed_spacing=(2, 2, 2), moving_spacing=(2.5, 2.5, 2.5),
                           fixed_affine=faff, moving_affine=maff)
    pts = faff @ np.array([[0, 0, 0, 1], [39, 0, 20, 1], [20, 39, 39, 1], [39, 39, 39, 1.0]]).T
    err = np.linalg.norm((est @ pts - true @ pts)[:3], axis=0)
    assert err.max() < 1.0  # mm, for a 2-2.5 mm grid
    with pytest.raises(ValueError, match="metric"):
        P.register_rigid(fixed, moving, fixed_spacing=(2, 2, 2), moving_spacing=(2, 2, 2), metric="mi")


def test_denoise_dispatch() -> None:
    np.testing.assert_array_equal(P.denoise(VOL_I16, method="median", spacing=(1, 1, 1), size=3), ndi.median_filter(VOL_I16, 3))
    with pytest.raises(ValueError, match="method"):
        P.denoise(VOL, method="wiener", spacing=(1, 1, 1))
