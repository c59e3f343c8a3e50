"""imaging.detect: scale-space blob detection (chunk-safe NMS) on the seeded lesion phantom."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi

from imaging import detect as D
from imaging import metrics as M

SP = (1.5, 1.0, 1.0)
SIGMAS = np.geomspace(1.2, 3.5, 6)


@pytest.fixture(scope="module")
def phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return D.synthetic_lesion_phantom((48, 80, 80), n_blobs=12, seed=3, spacing=SP)


def test_phantom_is_seeded_and_well_formed(phantom: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    vol, centres, radii = phantom
    vol2, centres2, radii2 = D.synthetic_lesion_phantom((48, 80, 80), n_blobs=12, seed=3, spacing=SP)
    np.testing.assert_array_equal(vol, vol2)
    np.testing.assert_array_equal(centres, centres2)
    assert vol.dtype == np.float32 and centres.shape == (12, 3) and radii.shape == (12,)
    assert np.all((radii >= 2.5) & (radii <= 5.0))
    c_mm = centres * np.asarray(SP)
    d = np.linalg.norm(c_mm[:, None] - c_mm[None], axis=-1) + np.eye(12) * 1e9
    assert np.all(d >= radii[:, None] + radii[None] + 4.0 - 1e-9)
    # the brightest voxel of each lesion is near its centre and about background + contrast
    for c in centres:
        i = tuple(np.rint(c).astype(int))
        assert vol[i] > 60
    assert not np.array_equal(vol, D.synthetic_lesion_phantom((48, 80, 80), n_blobs=12, seed=4, spacing=SP)[0])


@pytest.mark.parametrize("method,threshold", [("log", 40.0), ("dog", 30.0)])
def test_detection_recall_and_precision_on_phantom(phantom: tuple[np.ndarray, np.ndarray, np.ndarray], method: str, threshold: float) -> None:
    vol, centres, radii = phantom
    df = D.detect_blobs(vol, spacing=SP, sigmas_mm=SIGMAS, threshold=threshold, method=method, slab=16)
    assert list(df.columns[:9]) == ["z", "y", "x", "z_mm", "y_mm", "x_mm", "sigma_mm", "radius_mm", "response"]
    res = M.score_detections(df[["z_mm", "y_mm", "x_mm"]].to_numpy(), centres * np.asarray(SP),
                             scores=df["response"].to_numpy(), reference_radii_mm=radii)
    assert res["recall"] == 1.0
    assert res["precision"] >= 0.95
    # estimated size follows the true size (radius = sqrt(3) sigma for a solid sphere)
    matched = []
    for c, r in zip(centres * np.asarray(SP), radii, strict=True):
        d = np.linalg.norm(df[["z_mm", "y_mm", "x_mm"]].to_numpy() - c, axis=1)
        matched.append((r, float(df["radius_mm"].iloc[int(np.argmin(d))])))
    m = np.array(matched)
    assert np.corrcoef(m[:, 0], m[:, 1])[0, 1] > 0.6


def test_detection_independent_of_chunking(phantom: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    vol = phantom[0]
    ref = D.detect_blobs(vol, spacing=SP, sigmas_mm=SIGMAS, threshold=40.0, slab=48)
    for chunks in ((13, 27, 31), (24, 40, 40)):
        got = D.detect_blobs(da.from_array(vol, chunks=chunks), spacing=SP, sigmas_mm=SIGMAS, threshold=40.0)
        assert got.equals(ref)
    assert D.detect_blobs(vol, spacing=SP, sigmas_mm=SIGMAS, threshold=40.0, slab=5, n_threads=2).equals(ref)


def test_blob_on_chunk_corner_found_once() -> None:
    z, y, x = np.meshgrid(*[np.arange(48)] * 3, indexing="ij")
    vol = (100 * np.exp(-((z - 24) ** 2 + (y - 24) ** 2 + (x - 24) ** 2) / (2 * 2.0**2))).astype(np.float32)
    chunked = da.from_array(vol, chunks=24)  # the maximum (24, 24, 24) is on the corner of 8 chunks
    sig = [1.5, 2.0, 2.5]
    df = D.detect_blobs(chunked, spacing=(1, 1, 1), sigmas_mm=sig, threshold=5.0, overlap=1.0)  # no pruning
    assert len(df) == 1 and tuple(df[["z", "y", "x"]].iloc[0]) == (24, 24, 24)
    assert df["sigma_mm"].iloc[0] == 1.5  # 3-D optimum for a Gaussian blob of SD t: sigma = t * sqrt(2/3) = 1.63
    # a plateau maximum split by a chunk border: still one detection (ties broken by position)
    flat = np.zeros((20, 20, 20), np.float32)
    flat[9:11, 9:11, 9:11] = 100.0
    got = D.detect_blobs(da.from_array(ndi.gaussian_filter(flat, 0.01), chunks=10), spacing=(1, 1, 1), sigmas_mm=[1.0],
                         threshold=1.0, overlap=1.0)
    assert len(got) == 1


def test_log_response_equals_scipy_gaussian_laplace() -> None:
    vol = np.random.default_rng(0).normal(size=(20, 22, 24)).astype(np.float32)
    r = D.scale_space_response(vol, spacing=(1, 1, 1), sigmas_mm=[1.5, 2.0])
    for i, s in enumerate((1.5, 2.0)):
        ref = -(s**2) * ndi.gaussian_laplace(vol.astype(np.float64), s)
        np.testing.assert_allclose(r[i], ref, atol=1e-5)
    # anisotropic spacing: derivatives in mm
    r2 = D.scale_space_response(vol, spacing=(2.0, 1.0, 1.0), sigmas_mm=[2.0])
    ref2 = sum(-(4.0 / sp**2) * ndi.gaussian_filter(vol.astype(np.float64), (1.0, 2.0, 2.0), order=o)
               for o, sp in (((2, 0, 0), 2.0), ((0, 2, 0), 1.0), ((0, 0, 2), 1.0)))
    np.testing.assert_allclose(r2[0], ref2, atol=1e-5)


def test_exclude_border_affine_and_validation(phantom: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    vol = phantom[0]
    aff = np.diag([1.5, 1.0, 1.0, 1.0])
    aff[:3, 3] = [10, 20, 30]
    df = D.detect_blobs(vol, spacing=SP, sigmas_mm=SIGMAS, threshold=40.0, exclude_border=10, affine=aff)
    assert (df[["z", "y", "x"]].to_numpy() >= 10).all()
    assert (df["y"] < 70).all()
    np.testing.assert_allclose(df["L_mm"], df["z_mm"] + 10)
    with pytest.raises(ValueError, match="sigmas_mm"):
        D.detect_blobs(vol, spacing=SP, sigmas_mm=[2.0, 1.0], threshold=1.0)
    with pytest.raises(ValueError, match="method"):
        D.detect_blobs(vol, spacing=SP, sigmas_mm=[1.0], threshold=1.0, method="doh")
    empty = D.detect_blobs(np.zeros((10, 10, 10), np.float32), spacing=(1, 1, 1), sigmas_mm=[1.0], threshold=1.0)
    assert len(empty) == 0 and "response" in empty.columns
