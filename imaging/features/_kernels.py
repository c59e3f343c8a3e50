"""Compiled inner loops of the morphology features (numba, ``nogil`` so ROIs run in parallel threads).

These are the two iterative parts that do not vectorise well: Khachiyan's algorithm for
the minimum volume enclosing ellipsoid and the per-orientation minimum-area rectangle
of the oriented bounding box search. Compiled once per machine (``cache=True``).
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True)
def khachiyan_weights(points: np.ndarray, tol: float, max_iter: int) -> np.ndarray:
    """Barycentric weights ``u`` of Khachiyan's MVEE algorithm.

    Iterates ``u <- (1 - beta) u + beta e_j`` with ``j = argmax_i q_i^T X(u)^-1 q_i``
    until ``||u_new - u|| < tol`` (``q_i = (p_i, 1)``, ``X(u) = Q diag(u) Q^T``).
    """
    n, d = points.shape
    dd = d + 1
    q = np.ones((dd, n))
    for i in range(n):
        for a in range(d):
            q[a, i] = points[i, a]
    u = np.full(n, 1.0 / n)
    x = np.empty((dd, dd))
    for _ in range(max_iter):
        for a in range(dd):
            for b in range(dd):
                s = 0.0
                for i in range(n):
                    s += q[a, i] * u[i] * q[b, i]
                x[a, b] = s
        xi = np.linalg.inv(x)
        best = -1.0
        j = 0
        for i in range(n):
            s = 0.0
            for a in range(dd):
                t = 0.0
                for b in range(dd):
                    t += xi[a, b] * q[b, i]
                s += q[a, i] * t
            if s > best:
                best = s
                j = i
        step = (best - dd) / (dd * (best - 1.0))
        ss = 0.0
        for i in range(n):
            diff = (1.0 - u[i]) if i == j else -u[i]
            ss += diff * diff
        err = step * np.sqrt(ss)
        for i in range(n):
            u[i] *= 1.0 - step
        u[j] += step
        if err < tol:
            break
    return u


@nb.njit(cache=True, nogil=True)
def _cross(ox: float, oy: float, ax: float, ay: float, bx: float, by: float) -> float:
    return (ax - ox) * (by - oy) - (ay - oy) * (bx - ox)


@nb.njit(cache=True, nogil=True)
def _hull2d(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the 2D convex hull (Andrew's monotone chain), counter-clockwise."""
    n = x.size
    o1 = np.argsort(y, kind="mergesort")
    o2 = np.argsort(x[o1], kind="mergesort")
    order = o1[o2]  # lexicographic by (x, y)
    hull = np.empty(2 * n + 1, dtype=np.int64)
    k = 0
    for idx in range(n):
        i = order[idx]
        while k >= 2 and _cross(x[hull[k - 2]], y[hull[k - 2]], x[hull[k - 1]], y[hull[k - 1]], x[i], y[i]) <= 0:
            k -= 1
        hull[k] = i
        k += 1
    lower = k + 1
    for idx in range(n - 2, -1, -1):
        i = order[idx]
        while k >= lower and _cross(x[hull[k - 2]], y[hull[k - 2]], x[hull[k - 1]], y[hull[k - 1]],
                                    x[i], y[i]) <= 0:
            k -= 1
        hull[k] = i
        k += 1
    return hull[: max(k - 1, 1)]


@nb.njit(cache=True, nogil=True)
def min_box_over_normals(points: np.ndarray, normals: np.ndarray) -> tuple[float, float]:
    """Smallest box (volume, area) with one face orthogonal to one of ``normals``.

    For each normal the points are projected on its plane and the minimum-area
    rectangle of the projection is found by rotating calipers (one rectangle side
    flush with a 2D hull edge).
    """
    best_v = np.inf
    best_a = np.inf
    n = points.shape[0]
    px = np.empty(n)
    py = np.empty(n)
    for f in range(normals.shape[0]):
        nx, ny, nz = normals[f, 0], normals[f, 1], normals[f, 2]
        nn = np.sqrt(nx * nx + ny * ny + nz * nz)
        nx, ny, nz = nx / nn, ny / nn, nz / nn
        if abs(nx) < 0.9:
            hx, hy, hz = 1.0, 0.0, 0.0
        else:
            hx, hy, hz = 0.0, 1.0, 0.0
        ux, uy, uz = ny * hz - nz * hy, nz * hx - nx * hz, nx * hy - ny * hx
        un = np.sqrt(ux * ux + uy * uy + uz * uz)
        ux, uy, uz = ux / un, uy / un, uz / un
        vx, vy, vz = ny * uz - nz * uy, nz * ux - nx * uz, nx * uy - ny * ux
        hmin = np.inf
        hmax = -np.inf
        for i in range(n):
            p0, p1, p2 = points[i, 0], points[i, 1], points[i, 2]
            h = p0 * nx + p1 * ny + p2 * nz
            hmin = min(hmin, h)
            hmax = max(hmax, h)
            px[i] = p0 * ux + p1 * uy + p2 * uz
            py[i] = p0 * vx + p1 * vy + p2 * vz
        depth = hmax - hmin
        hull = _hull2d(px, py)
        m = hull.size
        for e in range(m):
            a = hull[e]
            b = hull[(e + 1) % m]
            ex, ey = px[b] - px[a], py[b] - py[a]
            el = np.sqrt(ex * ex + ey * ey)
            if el == 0.0:
                continue
            cx, cy = ex / el, ey / el
            w0, w1, h0, h1 = np.inf, -np.inf, np.inf, -np.inf
            for t in range(m):
                k = hull[t]
                s1 = px[k] * cx + py[k] * cy
                s2 = -px[k] * cy + py[k] * cx
                w0, w1 = min(w0, s1), max(w1, s1)
                h0, h1 = min(h0, s2), max(h1, s2)
            w, hh = w1 - w0, h1 - h0
            vol = w * hh * depth
            if vol < best_v:
                best_v = vol
                best_a = 2.0 * (w * hh + w * depth + hh * depth)
    return best_v, best_a
