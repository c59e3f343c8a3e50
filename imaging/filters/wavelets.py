"""IBSI-2 separable wavelets, undecimated (stationary, a trous) decomposition (reference manual
arXiv:2006.05470, section "Separable wavelets", phase-1 tests 5.a-7.a)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pywt

from imaging.filters._core import (
    SCIPY_MODE,
    Pool,
    as_work,
    check_boundary,
    check_dtype,
    check_pooling,
    check_positive,
    check_volume,
    dilate_kernel,
    finish,
    kernel_key,
    kernel_radius,
    odd_kernel,
    run_stage,
    separable_convolve,
    unique_rotations,
)
from imaging.types import ArrayLike, IBSIBoundary, Pooling


def wavelet_kernels(wavelet: str) -> tuple[np.ndarray, np.ndarray]:
    """Decomposition low- and high-pass filters of a discrete PyWavelets wavelet (``dec_lo``, ``dec_hi``),
    made odd-length with a trailing zero (centre tap ``len // 2``) as in the IBSI-2 reference
    implementations."""
    if not isinstance(wavelet, str) or wavelet not in pywt.wavelist(kind="discrete"):
        raise ValueError(
            f"wavelet must be a discrete PyWavelets wavelet name such as 'haar', 'db2', 'db3' or "
            f"'coif1', got {wavelet!r}"
        )
    w = pywt.Wavelet(wavelet)
    return odd_kernel(w.dec_lo), odd_kernel(w.dec_hi)


def parse_subband(subband: str) -> list[str]:
    """``"LHL"`` -> ``["L", "H", "L"]`` (letters for x, y(, z)); 2 letters = 2-D, 3 letters = 3-D."""
    if not isinstance(subband, str) or len(subband) not in (2, 3) or set(subband.upper()) - {"L", "H"}:
        raise ValueError(
            f"subband must be 2 (2D) or 3 (3D) letters L/H for x, y(, z), e.g. 'LHL', got {subband!r}"
        )
    return list(subband.upper())


def wavelet_filter(
    volume: Any,
    *,
    wavelet: str,
    subband: str,
    level: int,
    boundary: IBSIBoundary,
    rotation_invariance: bool = False,
    pooling: Pooling | None = None,
    dtype: npt.DTypeLike = np.float32,
) -> ArrayLike:
    """Undecimated separable wavelet response map of one sub-band at one decomposition level (IBSI-2).

    The letters of ``subband`` select the low-pass (L, ``dec_lo``) or high-pass (H, ``dec_hi``) filter along
    x, y(, z) = array axes 2, 1(, 0). Level ``j`` uses the a trous algorithm: levels ``1..j-1`` apply the
    low-pass filter along every axis (the L...L sub-band) and level ``j`` applies the sub-band filters, all
    dilated by ``2^(level-1)``. Each level is a separate convolution stage whose border uses ``boundary``.
    Two letters filter every slice in-plane (2-D), three filter the volume (3-D).

    Rotation invariance: the whole filter chain is rotated by every right-angle rotation (24 in 3-D, 4 in
    2-D) and the response maps are pooled (IBSI-2 uses average pooling for wavelets).

    Parameters
    ----------
    volume : ndarray or dask array, shape (n0, n1, n2)
    wavelet : str, discrete PyWavelets name, e.g. "haar", "db2", "db3", "coif1".
    subband : str, e.g. "LHL" (3-D) or "HL" (2-D).
    level : int, >= 1. Decomposition level.
    boundary : {"zero", "nearest", "periodic", "mirror"}
    rotation_invariance : bool
    pooling : {"max", "min", "average"} or None; required when ``rotation_invariance``.
    dtype : floating dtype of the response map.

    Returns
    -------
    response : same array type as ``volume``, shape (n0, n1, n2), ``dtype``.
    """
    vol = check_volume(volume)
    lo, hi = wavelet_kernels(wavelet)
    letters = parse_subband(subband)
    lev = check_positive("level", level, integer=True)
    bnd = check_boundary(boundary)
    mode = SCIPY_MODE[bnd]
    if not isinstance(rotation_invariance, bool | np.bool_):
        raise TypeError(f"rotation_invariance must be a bool, got {rotation_invariance!r}")
    pool_kind = check_pooling(pooling, rotation_invariance=bool(rotation_invariance))
    dt = check_dtype(dtype)
    nd = len(letters)
    axes = (0, 1, 2) if nd == 3 else (1, 2)
    # array-axis order (z,) y, x  <-  letters x, y(, z)
    final = [lo if c == "L" else hi for c in reversed(letters)]
    stages = [[dilate_kernel(lo, 2 ** (j - 1)) for _ in range(nd)] for j in range(1, lev)]
    stages.append([dilate_kernel(k, 2 ** (lev - 1)) for k in final])
    chains = unique_rotations(stages, nd, bool(rotation_invariance))

    work = as_work(vol, dt)
    cache: dict[tuple, ArrayLike] = {}
    pool = Pool(pool_kind)
    for chain in chains:
        out = work
        key: tuple = ()
        for kernels in chain:
            key = key + (kernel_key(kernels),)
            if key in cache:
                out = cache[key]
                continue
            radius = [0, 0, 0]
            for ax, k in zip(axes, kernels, strict=True):
                radius[ax] = kernel_radius(k)

            def _fn(block: np.ndarray, kernels: list[np.ndarray] = kernels) -> np.ndarray:
                return separable_convolve(block, kernels, axes, mode)

            out = run_stage(out, _fn, radius=radius, boundary=bnd)
            cache[key] = out
        pool.add(out)
    return finish(pool.result(), dt)
