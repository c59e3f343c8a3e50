"""IBSI-2 mean filter (reference manual arXiv:2006.05470, section "Mean filter", phase-1 tests 1.a, 1.b)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from imaging.filters._core import (
    SCIPY_MODE,
    as_work,
    check_boundary,
    check_dimensions,
    check_dtype,
    check_positive,
    check_volume,
    finish,
    run_stage,
)
from imaging.types import ArrayLike, FilterDimensions, IBSIBoundary


def mean_filter(
    volume: Any,
    *,
    support_voxels: int,
    boundary: IBSIBoundary,
    dimensions: FilterDimensions = "3D",
    dtype: npt.DTypeLike = np.float32,
) -> ArrayLike:
    """Mean (box) filter of odd support ``M`` voxels: the response is the average over an ``M^D`` box.

    The kernel is ``1 / M^D`` on a ``M x M (x M)`` voxel grid (IBSI-2 mean filter). The support is
    defined in voxels, so no spacing is involved.

    Parameters
    ----------
    volume : ndarray or dask array, shape (n0, n1, n2)
        Image, ``volume[axis0, axis1, axis2]``. Dask input is filtered chunk-parallel.
    support_voxels : int
        Odd filter support ``M`` in voxels (IBSI-2 phase-1 tests use 15).
    boundary : {"zero", "nearest", "periodic", "mirror"}
        IBSI-2 boundary condition ("mirror" = scipy "reflect").
    dimensions : {"3D", "2D"}
        "2D" filters every slice in-plane (axes 1 and 2), "3D" filters volumetrically.
    dtype : floating dtype of the response map.

    Returns
    -------
    response : same array type as ``volume``, shape (n0, n1, n2), ``dtype``.
    """
    vol = check_volume(volume)
    m = check_positive("support_voxels", support_voxels, integer=True, odd=True)
    mode = SCIPY_MODE[check_boundary(boundary)]
    nd = check_dimensions(dimensions)
    dt = check_dtype(dtype)
    size = (m, m, m) if nd == 3 else (1, m, m)
    r = m // 2
    radius = (r, r, r) if nd == 3 else (0, r, r)

    def _fn(block: np.ndarray) -> np.ndarray:
        return ndi.uniform_filter(block, size=size, mode=mode, cval=0.0, output=block.dtype)

    return finish(run_stage(as_work(vol, dt), _fn, radius=radius, boundary=boundary), dt)
