"""IBSI-2 Laplacian-of-Gaussian filter (reference manual arXiv:2006.05470, section "Laplacian of
Gaussian", phase-1 tests 2.a-2.c)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from imaging.filters._core import (
    SCIPY_MODE,
    as_work,
    check_boundary,
    check_dimensions,
    check_dtype,
    check_positive,
    check_spacing,
    check_volume,
    finish,
    run_stage,
    separable_convolve,
)
from imaging.types import ArrayLike, FilterDimensions, IBSIBoundary


def log_radius(sigma_voxels: float, truncate: float) -> int:
    """IBSI-2 LoG filter radius: the filter size is ``M = 1 + 2 * floor(truncate * sigma + 0.5)`` voxels."""
    return int(np.floor(truncate * sigma_voxels + 0.5))


def gaussian_kernels_1d(sigma_voxels: float, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Sampled 1-D Gaussian ``g(x) = exp(-x^2 / 2 s^2) / (sqrt(2 pi) s)`` and its second derivative
    ``g''(x) = g(x) (x^2 / s^4 - 1 / s^2)`` on ``x = -radius..radius`` (voxels), *not* renormalised:
    their separable combination is exactly the sampled analytic LoG kernel of IBSI-2."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    s2 = sigma_voxels * sigma_voxels
    g = np.exp(-0.5 * x * x / s2) / (np.sqrt(2.0 * np.pi) * sigma_voxels)
    d2 = g * (x * x / (s2 * s2) - 1.0 / s2)
    return g, d2


def laplacian_of_gaussian(
    volume: Any,
    *,
    spacing: Any,
    sigma_mm: float,
    truncate: float,
    boundary: IBSIBoundary,
    dimensions: FilterDimensions = "3D",
    dtype: npt.DTypeLike = np.float32,
) -> ArrayLike:
    """Laplacian-of-Gaussian filter as defined by IBSI-2.

    The kernel is the sampled analytic LoG in voxel units,
    ``h(x) = -1/s^2 * (1 / (sqrt(2 pi) s))^D * (D - |x|^2 / s^2) * exp(-|x|^2 / (2 s^2))`` with
    ``s = sigma_mm / spacing`` voxels, truncated to ``M = 1 + 2 floor(truncate * s + 0.5)`` voxels per axis
    (IBSI-2: truncation at ``truncate`` standard deviations). It is applied separably as
    ``sum_a g''_a * prod_{b != a} g_b``, which equals ``h`` exactly. With anisotropic voxels every axis uses
    its own ``s_a = sigma_mm / spacing_a`` (the IBSI manual recommends isotropic resampling first).

    Parameters
    ----------
    volume : ndarray or dask array, shape (n0, n1, n2)
    spacing : (3,) float, mm, array-axis order.
    sigma_mm : float, > 0. Gaussian standard deviation in mm.
    truncate : float, > 0. Filter half-width in standard deviations (IBSI-2 phase 1 uses 4).
    boundary : {"zero", "nearest", "periodic", "mirror"}
    dimensions : {"3D", "2D"}; "2D" filters every slice in-plane (axes 1 and 2, ``D = 2``).
    dtype : floating dtype of the response map.

    Returns
    -------
    response : same array type as ``volume``, shape (n0, n1, n2), ``dtype``.
    """
    vol = check_volume(volume)
    sp = check_spacing(spacing)
    sigma = check_positive("sigma_mm", sigma_mm)
    trunc = check_positive("truncate", truncate)
    mode = SCIPY_MODE[check_boundary(boundary)]
    nd = check_dimensions(dimensions)
    dt = check_dtype(dtype)
    axes = (0, 1, 2) if nd == 3 else (1, 2)
    gauss: list[np.ndarray] = []
    second: list[np.ndarray] = []
    radius = [0, 0, 0]
    for ax in axes:
        s_vox = sigma / sp[ax]
        r = log_radius(s_vox, trunc)
        g, d2 = gaussian_kernels_1d(s_vox, r)
        gauss.append(g)
        second.append(d2)
        radius[ax] = r

    def _fn(block: np.ndarray) -> np.ndarray:
        out = np.zeros(block.shape, dtype=block.dtype)
        for i in range(len(axes)):
            kernels = [second[j] if j == i else gauss[j] for j in range(len(axes))]
            out += separable_convolve(block, kernels, axes, mode)
        return out

    return finish(run_stage(as_work(vol, dt), _fn, radius=radius, boundary=boundary), dt)
