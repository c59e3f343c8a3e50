"""Segmentation and detection metrics (pure numpy/scipy).

Dice similarity coefficient, 95th-percentile symmetric Hausdorff distance between
surfaces (mm, anisotropic spacing honoured through the Euclidean distance
transform), and volume difference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks must have the same shape, got {a.shape} and {b.shape}")
    return a, b


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice = 2|A∩B| / (|A| + |B|); 1.0 when both are empty."""
    a, b = _pair(a, b)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def _surface(m: np.ndarray) -> np.ndarray:
    return m & ~ndi.binary_erosion(m, structure=ndi.generate_binary_structure(m.ndim, 1), border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, *, spacing: Sequence[float]) -> np.ndarray:
    """Distances (mm) from every surface voxel of ``a`` to the surface of ``b`` and vice versa."""
    a, b = _pair(a, b)
    if len(spacing) != a.ndim:
        raise ValueError(f"spacing must have {a.ndim} values, got {tuple(spacing)!r}")
    if not a.any() or not b.any():
        return np.array([np.inf])
    sa, sb = _surface(a), _surface(b)
    da = ndi.distance_transform_edt(~sb, sampling=spacing)
    db = ndi.distance_transform_edt(~sa, sampling=spacing)
    return np.concatenate([da[sa], db[sb]])


def hausdorff95(a: np.ndarray, b: np.ndarray, *, spacing: Sequence[float]) -> float:
    """95th percentile of the symmetric surface distances (mm); inf when a mask is empty."""
    d = surface_distances(a, b, spacing=spacing)
    return float(np.percentile(d, 95)) if np.isfinite(d).all() else float("inf")


def volume_difference(a: np.ndarray, b: np.ndarray, *, spacing: Sequence[float]) -> float:
    """Volume of ``a`` minus volume of ``b`` in mm^3."""
    a, b = _pair(a, b)
    return float((int(a.sum()) - int(b.sum())) * float(np.prod(spacing)))
