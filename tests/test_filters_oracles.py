"""Oracle tests of the IBSI-2 filters: dask == numpy with chunks that cross borders, scipy / PyWavelets /
analytic-kernel oracles, rotation invariance, and argument validation."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import dask.array as da
import numpy as np
import pytest
import pywt
from scipy import ndimage as ndi

from imaging.filters import (
    gabor_filter,
    gabor_kernel,
    laplacian_of_gaussian,
    laws_filter,
    laws_kernel,
    mean_filter,
    wavelet_filter,
)
from imaging.filters._core import SCIPY_MODE, right_angle_rotations

BOUNDARIES = ["zero", "nearest", "periodic", "mirror"]
F64 = np.float64


@pytest.fixture(scope="module")
def vol20() -> np.ndarray:
    return np.random.default_rng(20).normal(100.0, 30.0, size=(20, 20, 20))


@pytest.fixture(scope="module")
def cube12() -> np.ndarray:
    return np.random.default_rng(12).normal(size=(12, 12, 12))


# ---------------------------------------------------------------------------------------------------------
# dask == numpy (20^3 array, chunks of 7 so that every kernel crosses chunk borders)
# ---------------------------------------------------------------------------------------------------------

CASES: dict[str, Callable[..., object]] = {
    "mean3d": lambda v, b: mean_filter(v, support_voxels=5, boundary=b, dtype=F64),
    "mean2d": lambda v, b: mean_filter(v, support_voxels=15, boundary=b, dimensions="2D", dtype=F64),
    "log3d_aniso": lambda v, b: laplacian_of_gaussian(
        v, spacing=(2.0, 1.0, 1.5), sigma_mm=3.0, truncate=4.0, boundary=b, dtype=F64
    ),
    "log2d": lambda v, b: laplacian_of_gaussian(
        v, spacing=(1.0, 1.0, 1.0), sigma_mm=2.0, truncate=4.0, boundary=b, dimensions="2D", dtype=F64
    ),
    "laws3d_ri_energy": lambda v, b: laws_filter(
        v, kernels="E5L5S5", boundary=b, rotation_invariance=True, pooling="max", energy_distance=3, dtype=F64
    ),
    "laws2d": lambda v, b: laws_filter(v, kernels="L5S5", boundary=b, dtype=F64),
    "gabor2d": lambda v, b: gabor_filter(
        v,
        spacing=(1.0, 1.0, 1.0),
        sigma_mm=2.0,
        lambda_mm=3.0,
        gamma=0.5,
        theta=np.pi / 3,
        truncate=3.0,
        boundary=b,
        dtype=F64,
    ),
    "gabor3d_ri": lambda v, b: gabor_filter(
        v,
        spacing=(1.0, 1.0, 1.0),
        sigma_mm=1.5,
        lambda_mm=3.0,
        gamma=1.0,
        theta=0.0,
        truncate=3.0,
        boundary=b,
        dimensions="3D",
        rotation_invariance=True,
        theta_step=np.pi / 2,
        pooling="average",
        dtype=F64,
    ),
    "wavelet_db2_l2_ri": lambda v, b: wavelet_filter(
        v,
        wavelet="db2",
        subband="LHL",
        level=2,
        boundary=b,
        rotation_invariance=True,
        pooling="average",
        dtype=F64,
    ),
    "wavelet_coif1_2d": lambda v, b: wavelet_filter(
        v, wavelet="coif1", subband="HL", level=1, boundary=b, dtype=F64
    ),
}


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_dask_equals_numpy(vol20: np.ndarray, case: str, boundary: str) -> None:
    fn = CASES[case]
    expected = fn(vol20, boundary)
    lazy = fn(da.from_array(vol20, chunks=7), boundary)
    assert isinstance(expected, np.ndarray)
    assert isinstance(lazy, da.Array)
    assert lazy.dtype == expected.dtype
    got = lazy.compute()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9 * float(np.abs(expected).max() + 1))


def test_dask_output_dtype_and_laziness(vol20: np.ndarray) -> None:
    lazy = mean_filter(da.from_array(vol20.astype(np.uint8), chunks=7), support_voxels=3, boundary="zero")
    assert isinstance(lazy, da.Array) and lazy.dtype == np.float32
    assert lazy.compute().dtype == np.float32


# ---------------------------------------------------------------------------------------------------------
# scipy / analytic / PyWavelets oracles
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_mean_equals_scipy_uniform_filter(vol20: np.ndarray, boundary: str) -> None:
    mode = SCIPY_MODE[boundary]
    np.testing.assert_allclose(
        mean_filter(vol20, support_voxels=7, boundary=boundary, dtype=F64),
        ndi.uniform_filter(vol20, size=7, mode=mode),
        rtol=1e-12,
        atol=1e-9,
    )
    np.testing.assert_allclose(
        mean_filter(vol20, support_voxels=7, boundary=boundary, dimensions="2D", dtype=F64),
        ndi.uniform_filter(vol20, size=(1, 7, 7), mode=mode),
        rtol=1e-12,
        atol=1e-9,
    )


def test_mirror_is_numpy_symmetric_not_scipy_mirror() -> None:
    """IBSI 'mirror' repeats the edge voxel (d c b a | a b c d)."""
    x = np.zeros((1, 1, 9))
    x[0, 0, 0] = 9.0
    out = mean_filter(x, support_voxels=3, boundary="mirror", dimensions="2D", dtype=F64)
    assert out[0, 0, 0] == pytest.approx((9.0 + 9.0 + 0.0) / 3)


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("sigma_mm", [1.5, 3.0])
def test_log_matches_scipy_gaussian_laplace(vol20: np.ndarray, boundary: str, sigma_mm: float) -> None:
    """Same radius (floor(truncate * sigma + 0.5)); scipy renormalises the sampled Gaussian, IBSI does not:
    the two agree to well below the 1% IBSI tolerance."""
    mine = laplacian_of_gaussian(
        vol20, spacing=(1.0, 1.0, 1.0), sigma_mm=sigma_mm, truncate=4.0, boundary=boundary, dtype=F64
    )
    ref = ndi.gaussian_laplace(vol20, sigma=sigma_mm, truncate=4.0, mode=SCIPY_MODE[boundary])
    span = float(ref.max() - ref.min())
    assert np.max(np.abs(mine - ref)) < 1e-3 * span


@pytest.mark.parametrize("dimensions", ["2D", "3D"])
def test_log_impulse_response_is_the_ibsi_analytic_kernel(dimensions: str) -> None:
    n, sigma_vox = 21, 1.5
    x = np.zeros((n, n, n))
    x[n // 2, n // 2, n // 2] = 1.0
    out = laplacian_of_gaussian(
        x,
        spacing=(2.0, 2.0, 2.0),
        sigma_mm=2.0 * sigma_vox,
        truncate=4.0,
        boundary="zero",
        dimensions=dimensions,
        dtype=F64,
    )
    d = 3 if dimensions == "3D" else 2
    r = int(np.floor(4.0 * sigma_vox + 0.5))
    z, y, xx = np.mgrid[:n, :n, :n] - n // 2
    norm2 = (y**2 + xx**2 + (z**2 if d == 3 else 0)).astype(float)
    analytic = (
        -1.0
        / sigma_vox**2
        * (1.0 / (np.sqrt(2 * np.pi) * sigma_vox)) ** d
        * (d - norm2 / sigma_vox**2)
        * np.exp(-norm2 / (2 * sigma_vox**2))
    )
    inside = (np.abs(y) <= r) & (np.abs(xx) <= r) & ((np.abs(z) <= r) if d == 3 else (z == 0))
    expected = np.where(inside, analytic, 0.0)
    np.testing.assert_allclose(out, expected, atol=1e-15)


def test_laws_kernels_are_unit_norm_and_axis_order_is_x_y_z() -> None:
    for name in ("L5", "E5", "S5", "W5", "R5", "L3", "E3", "S3"):
        assert np.sum(laws_kernel(name) ** 2) == pytest.approx(1.0)
    x = np.zeros((11, 11, 11))
    x[5, 5, 5] = 1.0
    out = laws_filter(x, kernels="E5L5S5", boundary="zero", dtype=F64)
    # impulse response = E5 along x (axis 2), L5 along y (axis 1), S5 along z (axis 0)
    expected = np.einsum("i,j,k->ijk", laws_kernel("S5"), laws_kernel("L5"), laws_kernel("E5"))
    np.testing.assert_allclose(out[3:8, 3:8, 3:8], expected, atol=1e-15)
    assert np.count_nonzero(out) == np.count_nonzero(expected)


def test_laws_energy_is_mean_of_absolute_response(vol20: np.ndarray) -> None:
    resp = laws_filter(vol20, kernels="L3E3S3", boundary="mirror", dtype=F64)
    energy = laws_filter(vol20, kernels="L3E3S3", boundary="mirror", energy_distance=2, dtype=F64)
    np.testing.assert_allclose(energy, ndi.uniform_filter(np.abs(resp), size=5, mode="reflect"), atol=1e-9)


@pytest.mark.parametrize("wavelet", ["haar", "db2", "db3", "coif1"])
@pytest.mark.parametrize("level", [1, 2])
def test_wavelet_periodic_equals_pywavelets_swtn(wavelet: str, level: int) -> None:
    """Undecimated decomposition with periodic padding == pywt.swtn (a trous), every sub-band."""
    x = np.random.default_rng(3).normal(size=(16, 16, 16))
    coeffs = pywt.swtn(x, wavelet, level=2, axes=(0, 1, 2), trim_approx=False, norm=False)
    ref = coeffs[2 - level]  # coarsest level first
    for letters in itertools.product("LH", repeat=3):
        subband = "".join(letters)
        key = "".join("a" if c == "L" else "d" for c in reversed(subband))  # pywt keys in axis order z, y, x
        mine = wavelet_filter(
            x, wavelet=wavelet, subband=subband, level=level, boundary="periodic", dtype=F64
        )
        np.testing.assert_allclose(mine, ref[key], atol=1e-10, err_msg=subband)


def test_gabor_impulse_response_is_the_kernel() -> None:
    n = 41
    x = np.zeros((3, n, n))
    x[1, n // 2, n // 2] = 1.0
    kw = dict(sigma_mm=3.0, lambda_mm=4.0, gamma=0.5, theta=np.pi / 3, truncate=3.0)
    k = gabor_kernel(spacing_yx=(1.0, 1.0), **kw)
    ry, rx = k.shape[0] // 2, k.shape[1] // 2
    for response, part in (("real", k.real), ("imaginary", k.imag), ("modulus", np.abs(k))):
        out = gabor_filter(x, spacing=(1.0, 1.0, 1.0), boundary="zero", response=response, dtype=F64, **kw)
        c = n // 2
        np.testing.assert_allclose(out[1, c - ry : c + ry + 1, c - rx : c + rx + 1], part, atol=1e-10)
        assert np.abs(out[0]).max() < 1e-10 and np.abs(out[2]).max() < 1e-10


def test_gabor_kernel_orientation_and_extent() -> None:
    k = gabor_kernel(spacing_yx=(2.0, 2.0), sigma_mm=10.0, lambda_mm=4.0, gamma=0.5, theta=0.0, truncate=4.0)
    # envelope sd across the wave = sigma / gamma = 20 mm -> half-width 80 mm = 40 voxels
    assert k.shape == (81, 81)
    assert k[40, 40] == pytest.approx(1.0)
    # theta = 0: the wave runs along x (axis 2), constant phase along y
    assert np.angle(k[40, 41]) == pytest.approx(2 * np.pi * 2.0 / 4.0 - 2 * np.pi * round(2.0 / 4.0))
    assert np.allclose(np.angle(k[30:50, 40]), 0.0)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_gabor_fft_equals_direct_convolution(vol20: np.ndarray, boundary: str) -> None:
    kw = dict(sigma_mm=1.5, lambda_mm=3.0, gamma=0.7, theta=0.4, truncate=2.0)
    k = gabor_kernel(spacing_yx=(1.0, 1.0), **kw)
    mode = SCIPY_MODE[boundary]
    re = ndi.convolve(vol20, k.real[None], mode=mode)
    im = ndi.convolve(vol20, k.imag[None], mode=mode)
    out = gabor_filter(vol20, spacing=(1.0, 1.0, 1.0), boundary=boundary, dtype=F64, **kw)
    np.testing.assert_allclose(out, np.hypot(re, im), rtol=1e-9, atol=1e-8)


# ---------------------------------------------------------------------------------------------------------
# rotation invariance: f(R x) == R f(x) for every right-angle rotation R
# ---------------------------------------------------------------------------------------------------------


def _rotations_3d() -> list[Callable[[np.ndarray], np.ndarray]]:
    """The 24 proper rotations of a cube array as functions."""
    out = []
    for m in right_angle_rotations(3):
        perm = [int(np.flatnonzero(m[i])[0]) for i in range(3)]
        flips = tuple(i for i in range(3) if m[i, perm[i]] < 0)

        def rot(a: np.ndarray, perm: list[int] = perm, flips: tuple[int, ...] = flips) -> np.ndarray:
            b = np.transpose(a, perm)
            return np.flip(b, axis=flips) if flips else b

        out.append(rot)
    return out


def test_right_angle_rotations_group() -> None:
    assert len(right_angle_rotations(3)) == 24
    assert len(right_angle_rotations(2)) == 4
    assert all(round(np.linalg.det(m)) == 1 for m in right_angle_rotations(3))


ROT_INV_3D: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "laws_max": lambda v: laws_filter(
        v, kernels="E5L5S5", boundary="mirror", rotation_invariance=True, pooling="max", dtype=F64
    ),
    "laws_energy_avg": lambda v: laws_filter(
        v,
        kernels="E3W5R5",
        boundary="zero",
        rotation_invariance=True,
        pooling="average",
        energy_distance=2,
        dtype=F64,
    ),
    "wavelet_db2_lhl": lambda v: wavelet_filter(
        v,
        wavelet="db2",
        subband="LHL",
        level=1,
        boundary="zero",
        rotation_invariance=True,
        pooling="average",
        dtype=F64,
    ),
    "wavelet_haar_l2": lambda v: wavelet_filter(
        v,
        wavelet="haar",
        subband="HHL",
        level=2,
        boundary="periodic",
        rotation_invariance=True,
        pooling="max",
        dtype=F64,
    ),
    "gabor_3d": lambda v: gabor_filter(
        v,
        spacing=(1.0, 1.0, 1.0),
        sigma_mm=1.5,
        lambda_mm=3.0,
        gamma=0.5,
        theta=0.0,
        truncate=2.0,
        boundary="nearest",
        dimensions="3D",
        rotation_invariance=True,
        theta_step=np.pi / 4,
        pooling="average",
        dtype=F64,
    ),
}


@pytest.mark.parametrize("case", sorted(ROT_INV_3D))
def test_rotation_invariant_3d(cube12: np.ndarray, case: str) -> None:
    f = ROT_INV_3D[case]
    base = f(cube12)
    for rot in _rotations_3d():
        np.testing.assert_allclose(f(np.ascontiguousarray(rot(cube12))), rot(base), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("case", ["laws", "wavelet", "gabor"])
def test_rotation_invariant_2d_in_plane(cube12: np.ndarray, case: str) -> None:
    f = {
        "laws": lambda v: laws_filter(
            v,
            kernels="L5S5",
            boundary="mirror",
            rotation_invariance=True,
            pooling="max",
            energy_distance=2,
            dtype=F64,
        ),
        "wavelet": lambda v: wavelet_filter(
            v,
            wavelet="coif1",
            subband="HL",
            level=1,
            boundary="periodic",
            rotation_invariance=True,
            pooling="average",
            dtype=F64,
        ),
        "gabor": lambda v: gabor_filter(
            v,
            spacing=(3.0, 1.0, 1.0),
            sigma_mm=1.5,
            lambda_mm=3.0,
            gamma=0.5,
            theta=0.3,
            truncate=2.0,
            boundary="zero",
            dimensions="2D",
            rotation_invariance=True,
            theta_step=np.pi / 2,
            pooling="max",
            dtype=F64,
        ),
    }[case]
    base = f(cube12)
    for k in (1, 2, 3):
        rotated = np.ascontiguousarray(np.rot90(cube12, k, axes=(1, 2)))
        np.testing.assert_allclose(f(rotated), np.rot90(base, k, axes=(1, 2)), atol=1e-9, rtol=1e-9)


def test_without_rotation_invariance_the_response_is_not_invariant(cube12: np.ndarray) -> None:
    """Control for the tests above: a directional filter without pooling is not rotation-equivariant."""
    f = lambda v: laws_filter(v, kernels="E5L5S5", boundary="mirror", dtype=F64)  # noqa: E731
    rotated = np.ascontiguousarray(np.rot90(cube12, 1, axes=(0, 2)))
    assert not np.allclose(f(rotated), np.rot90(f(cube12), 1, axes=(0, 2)), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# argument validation: errors name the parameter
# ---------------------------------------------------------------------------------------------------------

V = np.zeros((5, 5, 5))
S = (1.0, 1.0, 1.0)
GAB = dict(spacing=S, sigma_mm=1.0, lambda_mm=2.0, gamma=1.0, theta=0.0, truncate=2.0, boundary="zero")


@pytest.mark.parametrize(
    ("call", "exc", "word"),
    [
        (lambda: mean_filter(V, support_voxels=4, boundary="zero"), ValueError, "support_voxels"),
        (lambda: mean_filter(V, support_voxels=0, boundary="zero"), ValueError, "support_voxels"),
        (lambda: mean_filter(V, support_voxels=2.5, boundary="zero"), ValueError, "support_voxels"),
        (lambda: mean_filter(V, support_voxels="5", boundary="zero"), TypeError, "support_voxels"),
        (lambda: mean_filter(V, support_voxels=3, boundary="reflect"), ValueError, "boundary"),
        (
            lambda: mean_filter(V, support_voxels=3, boundary="zero", dimensions="4D"),
            ValueError,
            "dimensions",
        ),
        (lambda: mean_filter(np.zeros((5, 5)), support_voxels=3, boundary="zero"), ValueError, "volume"),
        (lambda: mean_filter(V, support_voxels=3, boundary="zero", dtype=np.int16), TypeError, "dtype"),
        (
            lambda: laplacian_of_gaussian(V, spacing=S, sigma_mm=-1.0, truncate=4.0, boundary="zero"),
            ValueError,
            "sigma_mm",
        ),
        (
            lambda: laplacian_of_gaussian(V, spacing=S, sigma_mm=1.0, truncate=0.0, boundary="zero"),
            ValueError,
            "truncate",
        ),
        (
            lambda: laplacian_of_gaussian(V, spacing=(1.0, 1.0), sigma_mm=1.0, truncate=4.0, boundary="zero"),
            ValueError,
            "spacing",
        ),
        (
            lambda: laplacian_of_gaussian(
                V, spacing=(1.0, 0.0, 1.0), sigma_mm=1.0, truncate=4.0, boundary="zero"
            ),
            ValueError,
            "spacing",
        ),
        (lambda: laws_filter(V, kernels="L5X5E5", boundary="zero"), ValueError, "kernels"),
        (lambda: laws_filter(V, kernels="L5", boundary="zero"), ValueError, "kernels"),
        (
            lambda: laws_filter(V, kernels="L5E5E5", boundary="zero", rotation_invariance=True),
            ValueError,
            "pooling",
        ),
        (lambda: laws_filter(V, kernels="L5E5E5", boundary="zero", pooling="median"), ValueError, "pooling"),
        (
            lambda: laws_filter(V, kernels="L5E5E5", boundary="zero", energy_distance=0),
            ValueError,
            "energy_distance",
        ),
        (lambda: gabor_filter(V, **{**GAB, "gamma": 0.0}), ValueError, "gamma"),
        (lambda: gabor_filter(V, **{**GAB, "lambda_mm": -2.0}), ValueError, "lambda_mm"),
        (lambda: gabor_filter(V, **{**GAB, "theta": "pi"}), TypeError, "theta"),
        (lambda: gabor_filter(V, **GAB, response="phase"), ValueError, "response"),
        (lambda: gabor_filter(V, **GAB, rotation_invariance=True, pooling="max"), ValueError, "theta_step"),
        (
            lambda: gabor_filter(V, **GAB, rotation_invariance=True, theta_step=1.0, pooling="max"),
            ValueError,
            "theta_step",
        ),
        (lambda: gabor_filter(V, **GAB, dimensions="3D"), ValueError, "pooling"),
        (
            lambda: wavelet_filter(V, wavelet="db99", subband="LLL", level=1, boundary="zero"),
            ValueError,
            "wavelet",
        ),
        (
            lambda: wavelet_filter(V, wavelet="db2", subband="LXL", level=1, boundary="zero"),
            ValueError,
            "subband",
        ),
        (
            lambda: wavelet_filter(V, wavelet="db2", subband="LHL", level=0, boundary="zero"),
            ValueError,
            "level",
        ),
    ],
)
def test_validation_errors_name_the_parameter(call: Callable[[], object], exc: type, word: str) -> None:
    with pytest.raises(exc, match=word):
        call()


@pytest.mark.parametrize("case", ["mean3d", "log3d_aniso", "laws3d_ri_energy", "gabor2d", "wavelet_coif1_2d"])
def test_float32_working_precision_matches_float64(vol20: np.ndarray, case: str) -> None:
    """float32 output uses a float32 working copy: same map to ~1e-6 of its range, numpy and dask."""
    f64 = CASES[case](vol20, "mirror")
    call = {
        "mean3d": lambda v: mean_filter(v, support_voxels=5, boundary="mirror"),
        "log3d_aniso": lambda v: laplacian_of_gaussian(
            v, spacing=(2.0, 1.0, 1.5), sigma_mm=3.0, truncate=4.0, boundary="mirror"
        ),
        "laws3d_ri_energy": lambda v: laws_filter(
            v, kernels="E5L5S5", boundary="mirror", rotation_invariance=True, pooling="max", energy_distance=3
        ),
        "gabor2d": lambda v: gabor_filter(
            v,
            spacing=(1.0, 1.0, 1.0),
            sigma_mm=2.0,
            lambda_mm=3.0,
            gamma=0.5,
            theta=np.pi / 3,
            truncate=3.0,
            boundary="mirror",
        ),
        "wavelet_coif1_2d": lambda v: wavelet_filter(
            v, wavelet="coif1", subband="HL", level=1, boundary="mirror"
        ),
    }[case]
    span = float(f64.max() - f64.min())
    for x in (vol20, da.from_array(vol20, chunks=7)):
        out = np.asarray(call(x))
        assert out.dtype == np.float32
        assert np.max(np.abs(out - f64)) < 2e-6 * span


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_kernel_longer_than_the_array(boundary: str) -> None:
    """Radius >= axis length: the dask path filters that axis in one chunk; both equal explicit padding."""
    from imaging.filters._core import NUMPY_MODE
    from imaging.filters.log import gaussian_kernels_1d, log_radius

    x = np.random.default_rng(4).normal(size=(6, 30, 30))
    kw = dict(spacing=(1.0, 1.0, 1.0), sigma_mm=2.0, truncate=4.0, boundary=boundary, dtype=F64)
    r = log_radius(2.0, 4.0)
    assert r >= x.shape[0]
    expected_np = laplacian_of_gaussian(x, **kw)
    lazy = laplacian_of_gaussian(da.from_array(x, chunks=(3, 7, 7)), **kw)
    np.testing.assert_allclose(lazy.compute(), expected_np, atol=1e-12)
    # explicit: pad with numpy's equivalent mode, full 'valid' separable convolution
    g, d2 = gaussian_kernels_1d(2.0, r)
    p = np.pad(x, r, mode=NUMPY_MODE[boundary])
    ref = np.zeros(x.shape)
    for i in range(3):
        t = p
        for ax in range(3):
            k = d2 if ax == i else g
            t = np.apply_along_axis(lambda v, k=k: np.convolve(v, k, mode="valid"), ax, t)
        ref += t
    np.testing.assert_allclose(expected_np, ref, atol=1e-10)
