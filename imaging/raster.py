"""Polygon rasterisation at pixel centres: the pixels :func:`skimage.draw.polygon` draws, compiled.

A pixel (row ``y``, column ``x``, both integers) is drawn when it is a vertex (within
``1e-12``) or when the right- or left-crossing count of the polygon edges straddling its
row is odd: the ray-crossing classification after O'Rourke, *Computational Geometry in C*
(2nd ed., 7.4), that ``skimage.draw.polygon`` uses, i.e. inside or on an edge. For an edge
from vertex ``q`` to vertex ``p`` and a pixel, with ``y0 = yp - y``, ``y1 = yq - y``, the edge
straddles the row to the right when ``(y0 > 0) != (y1 > 0)`` and to the left when
``(y0 < 0) != (y1 < 0)``, and its crossing lies at ``xx = (x0 * y1 - x1 * y0) / (y1 - y0)``
(``x0 = xp - x``, ``x1 = xq - x``), compared with 0: the same floating-point expressions,
evaluated in the same order (numba compiles them without fused multiply-adds), so the same
pixels. Work is O(edges + crossings x columns of the bounding box): each edge visits only the
rows it can straddle, ``[floor(min(yp, yq)), ceil(max(yp, yq))]``.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["fill_polygon"]

_VERTEX_EPS = 1e-12


@numba.njit(nogil=True, cache=True)
def _fill(r: np.ndarray, c: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    n = r.shape[0]
    rows, cols = out.shape
    rmin = rmax = r[0]
    cmin = cmax = c[0]
    for i in range(n):
        if not (math.isfinite(r[i]) and math.isfinite(c[i])):
            return
        rmin = min(rmin, r[i])
        rmax = max(rmax, r[i])
        cmin = min(cmin, c[i])
        cmax = max(cmax, c[i])
    # the bounding box of candidate pixels, compared as floats before any conversion to int
    r0f = max(0.0, rmin)
    c0f = max(0.0, cmin)
    if r0f > rows - 1 or c0f > cols - 1:
        return
    r0 = int(r0f)
    c0 = int(c0f)
    r1f = math.ceil(rmax)
    c1f = math.ceil(cmax)
    if r1f < r0 or c1f < c0:
        return
    r1 = int(min(float(rows - 1), r1f))
    c1 = int(min(float(cols - 1), c1f))
    n_rows = r1 - r0 + 1
    n_cols = c1 - c0 + 1
    right = np.zeros((n_rows, n_cols), dtype=np.bool_)
    left = np.zeros((n_rows, n_cols), dtype=np.bool_)
    for e in range(n):
        q = e - 1 if e > 0 else n - 1  # the previous vertex (the edge runs q -> e)
        yp = r[e]
        yq = r[q]
        xp = c[e]
        xq = c[q]
        lo = max(math.floor(min(yp, yq)), float(r0))
        hi = min(math.ceil(max(yp, yq)), float(r1))
        if hi < lo:
            continue
        for row in range(int(lo), int(hi) + 1):
            y = float(row)
            y0 = yp - y
            y1 = yq - y
            rstrad = (y0 > 0) != (y1 > 0)
            lstrad = (y0 < 0) != (y1 < 0)
            if not (rstrad or lstrad):
                continue
            k = row - r0
            for j in range(n_cols):
                x = float(c0 + j)
                x0 = xp - x
                x1 = xq - x
                xx = (x0 * y1 - x1 * y0) / (y1 - y0)
                if rstrad and xx > 0:
                    right[k, j] = not right[k, j]
                if lstrad and xx < 0:
                    left[k, j] = not left[k, j]
    for k in range(n_rows):
        for j in range(n_cols):
            out[r0 + k, c0 + j] = right[k, j] or left[k, j]
    for i in range(n):  # vertices within 1e-12 of a pixel centre are drawn whatever the crossings say
        vr = math.floor(r[i] + 0.5)
        vc = math.floor(c[i] + 0.5)
        if abs(r[i] - vr) < _VERTEX_EPS and abs(c[i] - vc) < _VERTEX_EPS and r0 <= vr <= r1 and c0 <= vc <= c1:
            out[int(vr), int(vc)] = True


def fill_polygon(r: np.ndarray, c: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies inside the polygon or on its boundary, as a bool ``shape`` array.

    The pixels :func:`skimage.draw.polygon` draws (module docstring), as a mask.

    Parameters
    ----------
    r, c : (n,) array_like of float
        Row and column coordinates of the vertices (pixel units; the polygon closes itself).
    shape : (rows, columns)
        Output shape; pixels outside it are not drawn.

    Returns
    -------
    (rows, columns) bool ndarray
        Empty when there is no vertex or a coordinate is not finite.
    """
    rows, cols = (int(s) for s in shape)
    if rows < 0 or cols < 0:
        raise ValueError(f"shape must be two non-negative sizes, got {shape!r}")
    r = np.ascontiguousarray(r, dtype=np.float64).ravel()
    c = np.ascontiguousarray(c, dtype=np.float64).ravel()
    if r.shape != c.shape:
        raise ValueError(f"r and c must have the same length, got {r.size} and {c.size}")
    out = np.zeros((rows, cols), dtype=bool)
    if r.size and rows and cols:
        _fill(r, c, out)
    return out


def warm_up() -> None:
    """Load the compiled kernel now (compile it, the first time on a machine: numba's on-disk cache).

    Its first call in a process costs about half a second (numba's start-up and the cache load);
    a process that forks workers (the collection's forkserver) calls this once, for all of them.
    """
    _fill(np.zeros(3), np.zeros(3), np.zeros((1, 1), dtype=bool))
