"""IBSI-2 Gabor filter (reference manual arXiv:2006.05470, section "Gabor kernels",
phase-1 tests 4.a, 4.b)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import signal

from imaging.filters._core import (
    NUMPY_MODE,
    Pool,
    as_work,
    check_boundary,
    check_dimensions,
    check_dtype,
    check_pooling,
    check_positive,
    check_spacing,
    check_volume,
    finish,
    run_stage,
)
from imaging.types import ArrayLike, FilterDimensions, GaborResponse, IBSIBoundary, Pooling

#: (axis normal to the plane, in-plane "y" axis, in-plane "x" axis); the axial plane comes first.
PLANES: tuple[tuple[int, int, int], ...] = ((0, 1, 2), (1, 0, 2), (2, 0, 1))


def gabor_kernel(
    *,
    spacing_yx: tuple[float, float],
    sigma_mm: float,
    lambda_mm: float,
    gamma: float,
    theta: float,
    truncate: float,
) -> np.ndarray:
    """Complex 2-D Gabor kernel on the voxel grid of a plane (IBSI-2).

    ``h(x, y) = exp(-(u^2 + gamma^2 v^2) / (2 sigma^2)) * exp(i 2 pi u / lambda)`` with
    ``u = x cos(theta) + y sin(theta)``, ``v = -x sin(theta) + y cos(theta)``; ``x, y`` are in mm
    (voxel index times spacing, origin at the kernel centre), so anisotropic in-plane voxels are handled.
    The kernel is truncated at ``truncate`` times the largest envelope standard deviation,
    ``max(sigma, sigma / gamma)``: half-width ``floor(truncate * that / spacing + 0.5)`` voxels per axis.

    Returns
    -------
    kernel : complex128 ndarray, shape (2 ry + 1, 2 rx + 1), indexed [y, x].
    """
    sy, sx = spacing_yx
    extent = truncate * max(sigma_mm, sigma_mm / gamma)
    ry = int(np.floor(extent / sy + 0.5))
    rx = int(np.floor(extent / sx + 0.5))
    y = np.arange(-ry, ry + 1, dtype=np.float64)[:, None] * sy
    x = np.arange(-rx, rx + 1, dtype=np.float64)[None, :] * sx
    u = x * np.cos(theta) + y * np.sin(theta)
    v = -x * np.sin(theta) + y * np.cos(theta)
    envelope = np.exp(-(u * u + gamma * gamma * v * v) / (2.0 * sigma_mm * sigma_mm))
    return envelope * np.exp(1j * 2.0 * np.pi * u / lambda_mm)


def gabor_orientations(theta: float, theta_step: float | None, response: str) -> list[float]:
    """Orientations ``theta + k * theta_step`` in ``[theta, theta + 2 pi)``; for the modulus response
    ``theta`` and ``theta + pi`` give the same map, so only the first half is kept when it covers exactly
    half of the orientations (pooling is unchanged: each map would appear twice)."""
    if theta_step is None:
        return [theta]
    n = int(round(2.0 * np.pi / theta_step))
    if n < 1 or not np.isclose(n * theta_step, 2.0 * np.pi, rtol=0, atol=1e-9):
        raise ValueError(
            f"theta_step must divide 2*pi into a whole number of orientations, got {theta_step!r}"
        )
    thetas = [theta + k * theta_step for k in range(n)]
    if response == "modulus" and n % 2 == 0:
        thetas = thetas[: n // 2]
    return thetas


def gabor_filter(
    volume: Any,
    *,
    spacing: Any,
    sigma_mm: float,
    lambda_mm: float,
    gamma: float,
    theta: float,
    boundary: IBSIBoundary,
    truncate: float,
    dimensions: FilterDimensions = "2D",
    rotation_invariance: bool = False,
    theta_step: float | None = None,
    pooling: Pooling | None = None,
    response: GaborResponse = "modulus",
    dtype: npt.DTypeLike = np.float32,
) -> ArrayLike:
    """Gabor filter response map (IBSI-2), applied in-plane slice by slice.

    The 2-D kernel of :func:`gabor_kernel` is convolved with every slice of a plane orientation:
    ``dimensions="2D"`` uses the axial planes only (axes 1 = y and 2 = x); ``"3D"`` applies it in the three
    orthogonal planes (axial; axes 0/2; axes 0/1) and pools the three response maps. With
    ``rotation_invariance`` the orientation runs over ``theta + k * theta_step`` in ``[theta, theta + 2 pi)``
    and those maps are pooled too (IBSI-2 4.a.2 / 4.b.2: ``theta_step = pi/4``, average pooling). The
    response is the modulus (default), real or imaginary part of the complex response.

    Parameters
    ----------
    volume : ndarray or dask array, shape (n0, n1, n2)
    spacing : (3,) float, mm, array-axis order.
    sigma_mm : float, > 0. Standard deviation of the Gaussian envelope along the wave direction, mm.
    lambda_mm : float, > 0. Wavelength, mm.
    gamma : float, > 0. Spatial aspect ratio (envelope sd across the wave is ``sigma / gamma``).
    theta : float. Orientation, radians, measured from the x axis (axis 2) towards y (axis 1).
    boundary : {"zero", "nearest", "periodic", "mirror"}
    truncate : float, > 0. Kernel half-width in units of ``max(sigma, sigma / gamma)``.
    dimensions : {"2D", "3D"}
    rotation_invariance : bool
    theta_step : float or None. Orientation step (radians), required with ``rotation_invariance``.
    pooling : {"max", "min", "average"} or None; required when more than one map is produced.
    response : {"modulus", "real", "imaginary"}
    dtype : floating dtype of the response map.

    Returns
    -------
    response : same array type as ``volume``, shape (n0, n1, n2), ``dtype``.
    """
    vol = check_volume(volume)
    sp = check_spacing(spacing)
    sigma = check_positive("sigma_mm", sigma_mm)
    lam = check_positive("lambda_mm", lambda_mm)
    gam = check_positive("gamma", gamma)
    trunc = check_positive("truncate", truncate)
    if (
        isinstance(theta, bool)
        or not isinstance(theta, int | float | np.floating | np.integer)
        or not np.isfinite(theta)
    ):
        raise TypeError(f"theta must be a finite angle in radians, got {theta!r}")
    bnd = check_boundary(boundary)
    nd = check_dimensions(dimensions)
    if not isinstance(rotation_invariance, bool | np.bool_):
        raise TypeError(f"rotation_invariance must be a bool, got {rotation_invariance!r}")
    if response not in ("modulus", "real", "imaginary"):
        raise ValueError(f"response must be 'modulus', 'real' or 'imaginary', got {response!r}")
    if rotation_invariance:
        if theta_step is None:
            raise ValueError("theta_step must be given (radians) when rotation_invariance is True, got None")
        step = check_positive("theta_step", theta_step)
    elif theta_step is not None:
        raise ValueError(f"theta_step is only used with rotation_invariance=True, got {theta_step!r}")
    else:
        step = None
    multiple = bool(rotation_invariance) or nd == 3
    pool_kind = check_pooling(pooling, rotation_invariance=multiple)
    dt = check_dtype(dtype)
    pad_mode: Any = NUMPY_MODE[bnd]
    thetas = gabor_orientations(float(theta), step, response)
    planes = PLANES if nd == 3 else PLANES[:1]

    jobs: list[tuple[tuple[int, int, int], np.ndarray]] = []
    radius = [0, 0, 0]
    for plane in planes:
        _, ay, ax = plane
        for th in thetas:
            k = gabor_kernel(
                spacing_yx=(sp[ay], sp[ax]),
                sigma_mm=sigma,
                lambda_mm=lam,
                gamma=gam,
                theta=th,
                truncate=trunc,
            )
            jobs.append((plane, k))
            radius[ay] = max(radius[ay], k.shape[0] // 2)
            radius[ax] = max(radius[ax], k.shape[1] // 2)

    def _fn(block: np.ndarray) -> np.ndarray:
        pool = Pool(pool_kind)
        for (_, ay, ax), k in jobs:
            ry, rx = k.shape[0] // 2, k.shape[1] // 2
            pad = [(0, 0)] * 3
            pad[ay] = (ry, ry)
            pad[ax] = (rx, rx)
            padded = np.pad(block, pad, mode=pad_mode)
            shape = [1, 1, 1]
            shape[ay], shape[ax] = k.shape
            # kernel axes (y, x) go to (ay, ax); ay < ax in every plane
            kern = k.reshape(shape).astype(np.result_type(block.dtype, np.complex64), copy=False)
            res = signal.fftconvolve(padded, kern, mode="valid", axes=(ay, ax))
            if response == "modulus":
                pool.add(np.abs(res))
            elif response == "real":
                pool.add(res.real.copy())
            else:
                pool.add(res.imag.copy())
        return np.asarray(pool.result(), dtype=block.dtype)

    return finish(run_stage(as_work(vol, dt), _fn, radius=radius, boundary=bnd), dt)
