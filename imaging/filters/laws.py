"""IBSI-2 Laws kernels (reference manual arXiv:2006.05470, section "Laws kernels", phase-1 tests 3.a-3.c)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from imaging.filters._core import (
    SCIPY_MODE,
    Pool,
    as_work,
    check_boundary,
    check_dtype,
    check_pooling,
    check_positive,
    check_volume,
    finish,
    kernel_radius,
    run_stage,
    separable_convolve,
    unique_rotations,
)
from imaging.types import ArrayLike, IBSIBoundary, Pooling

#: Laws 1-D kernels before normalisation (IBSI-2 table of Laws kernels).
LAWS_KERNELS: dict[str, tuple[float, ...]] = {
    "L5": (1.0, 4.0, 6.0, 4.0, 1.0),
    "E5": (-1.0, -2.0, 0.0, 2.0, 1.0),
    "S5": (-1.0, 0.0, 2.0, 0.0, -1.0),
    "W5": (-1.0, 2.0, 0.0, -2.0, 1.0),
    "R5": (1.0, -4.0, 6.0, -4.0, 1.0),
    "L3": (1.0, 2.0, 1.0),
    "E3": (-1.0, 0.0, 1.0),
    "S3": (-1.0, 2.0, -1.0),
}
_TOKEN = re.compile(r"([LESWR][35])", re.IGNORECASE)


def laws_kernel(name: str) -> np.ndarray:
    """Normalised 1-D Laws kernel (unit L2 norm, as IBSI-2 specifies), e.g. ``laws_kernel("E5")``."""
    key = str(name).upper()
    if key not in LAWS_KERNELS:
        raise ValueError(f"Laws kernel must be one of {sorted(LAWS_KERNELS)}, got {name!r}")
    k = np.asarray(LAWS_KERNELS[key], dtype=np.float64)
    return k / np.sqrt(np.sum(k * k))


def parse_laws_kernels(kernels: str) -> list[str]:
    """Split a Laws filter name such as ``"L5E5E5"`` into ``["L5", "E5", "E5"]`` (order x, y, z)."""
    if not isinstance(kernels, str):
        raise TypeError(f"kernels must be a string such as 'L5E5E5' or 'L5S5', got {kernels!r}")
    parts = _TOKEN.findall(kernels)
    if "".join(parts).upper() != kernels.upper() or len(parts) not in (2, 3):
        raise ValueError(
            f"kernels must be 2 (2D) or 3 (3D) Laws kernels from {sorted(LAWS_KERNELS)} "
            f"written together, e.g. 'L5E5E5' or 'L5S5', got {kernels!r}"
        )
    for p in parts:
        laws_kernel(p)
    return [p.upper() for p in parts]


def laws_filter(
    volume: Any,
    *,
    kernels: str,
    boundary: IBSIBoundary,
    rotation_invariance: bool = False,
    pooling: Pooling | None = None,
    energy_distance: int | None = None,
    dtype: npt.DTypeLike = np.float32,
) -> ArrayLike:
    """Laws kernel response map, optionally rotation-invariant and/or as a texture energy map (IBSI-2).

    The filter ``kernels`` names the 1-D kernels along x, y(, z) in that order: x is array axis 2, y axis 1,
    z axis 0 (``volume[z, y, x]``). Two kernels give a 2-D filter applied in-plane to every slice, three a
    3-D filter. Kernels are normalised to unit L2 norm and convolved (not correlated) with the image.

    Rotation invariance (IBSI-2): the filter is rotated by all right-angle rotations (24 in 3-D, 4 in 2-D),
    every rotated filter is applied and the response maps are pooled voxel-wise (``pooling``). The energy
    map is then the mean of the absolute (pooled) response over the ``(2 delta + 1)^D`` neighbourhood of
    Chebyshev distance ``delta = energy_distance``; its border uses the same boundary condition.

    Parameters
    ----------
    volume : ndarray or dask array, shape (n0, n1, n2)
    kernels : str, e.g. "L5E5E5" (3-D) or "L5S5" (2-D); kernels L5 E5 S5 W5 R5 L3 E3 S3.
    boundary : {"zero", "nearest", "periodic", "mirror"}
    rotation_invariance : bool
    pooling : {"max", "min", "average"} or None; required when ``rotation_invariance``.
    energy_distance : int or None
        Chebyshev distance ``delta`` (voxels) of the energy map; None returns the plain response map.
    dtype : floating dtype of the response map.

    Returns
    -------
    response : same array type as ``volume``, shape (n0, n1, n2), ``dtype``.
    """
    vol = check_volume(volume)
    names = parse_laws_kernels(kernels)
    bnd = check_boundary(boundary)
    mode = SCIPY_MODE[bnd]
    if not isinstance(rotation_invariance, bool | np.bool_):
        raise TypeError(f"rotation_invariance must be a bool, got {rotation_invariance!r}")
    pool_kind = check_pooling(pooling, rotation_invariance=bool(rotation_invariance))
    delta = (
        None if energy_distance is None else check_positive("energy_distance", energy_distance, integer=True)
    )
    dt = check_dtype(dtype)
    nd = len(names)
    axes = (0, 1, 2) if nd == 3 else (1, 2)
    # names are x, y(, z); array axes are (z,) y, x
    base = [laws_kernel(n) for n in reversed(names)]
    chains = unique_rotations([base], nd, bool(rotation_invariance))
    r = max(kernel_radius(k) for k in base)
    radius = [0, 0, 0]
    for ax in axes:
        radius[ax] = r

    def _fn(block: np.ndarray) -> np.ndarray:
        pool = Pool(pool_kind)
        for chain in chains:
            pool.add(separable_convolve(block, chain[0], axes, mode))
        return np.asarray(pool.result())

    out = run_stage(as_work(vol, dt), _fn, radius=radius, boundary=bnd)
    if delta is not None:
        size = 2 * delta + 1
        box = tuple(size if ax in axes else 1 for ax in range(3))
        e_radius = [delta if ax in axes else 0 for ax in range(3)]

        def _energy(block: np.ndarray) -> np.ndarray:
            return ndi.uniform_filter(np.abs(block), size=box, mode=mode, cval=0.0, output=block.dtype)

        out = run_stage(out, _energy, radius=e_radius, boundary=bnd)
    return finish(out, dt)
