"""IBSI-1 texture matrices and features: GLCM, GLRLM, GLSZM, GLDZM, NGTDM, NGLDM.

Every texture matrix is held as a *sparse stack*: one row per non-zero element
``(matrix id, i, j, count)``. A stack holds all the matrices of one aggregation
level at once (e.g. one GLCM per slice and direction), so features of all of
them are evaluated together with ``bincount`` reductions instead of a Python
loop per matrix, and merging matrices (IBSI aggregation methods) is a relabel
of matrix ids followed by a sum of duplicate elements.

Matrices are built without Python loops over voxels:

* GLCM -- shifted-array pairs, counted by ``bincount`` (both directions, so the
  matrix is symmetric).
* GLRLM -- for direction ``d`` the flat index advances by the constant stride
  ``s = d . strides`` along every line; thanks to the zero border, the flat array
  folded into ``s`` columns holds every line of voxels as a contiguous sequence,
  in which runs are found with two comparisons.
* GLSZM / GLDZM -- multi-label connected components (``cc3d``, 26- or per-slice
  8-connectivity) and a taxicab distance transform of the morphological mask.
* NGTDM / NGLDM -- neighbourhood sums and counts with shifted arrays.

Axis 0 is the slice axis. The 2D directions are the in-plane ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cc3d
import numpy as np
from scipy import ndimage as ndi

from imaging.types import TextureDimension

DIRECTIONS_3D: tuple[tuple[int, int, int], ...] = (
    (0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 1, 1), (0, 1, -1), (1, 0, 1), (1, 0, -1),
    (1, 1, 0), (1, -1, 0), (1, 1, 1), (1, 1, -1), (1, -1, 1), (1, -1, -1),
)
DIRECTIONS_2D: tuple[tuple[int, int, int], ...] = ((0, 0, 1), (0, 1, 0), (0, 1, 1), (0, 1, -1))

FeatureArrays = dict[str, np.ndarray]


@dataclass
class Stack:
    """A stack of sparse texture matrices.

    Attributes
    ----------
    mid : ndarray int64 (n_entries,)
        Matrix id of each element.
    i : ndarray int64
        Row index: discretised grey level (1-based).
    j : ndarray int64
        Column index: grey level (GLCM), run length, zone size, distance or dependence (1-based).
    n : ndarray float64
        Element count.
    n_mats : int
        Number of matrices.
    n_v : ndarray float64 (n_mats,)
        Number of voxels behind each matrix (summed when matrices are merged).
    """

    mid: np.ndarray
    i: np.ndarray
    j: np.ndarray
    n: np.ndarray
    n_mats: int
    n_v: np.ndarray


def _coalesce(mid: np.ndarray, i: np.ndarray, j: np.ndarray, n: np.ndarray, n_mats: int,
              n_v: np.ndarray) -> Stack:
    """Sum duplicate ``(mid, i, j)`` elements."""
    if mid.size == 0:
        e = np.zeros(0, dtype=np.int64)
        return Stack(e, e, e, np.zeros(0), n_mats, n_v)
    imax = int(i.max()) + 1
    jmax = int(j.max()) + 1
    key = (mid.astype(np.int64) * imax + i) * jmax + j
    space = n_mats * imax * jmax
    if space <= 4_000_000:
        counts = np.bincount(key, weights=n, minlength=space)
        uk = np.flatnonzero(counts)
        un = counts[uk]
    else:
        uk, inv = np.unique(key, return_inverse=True)
        un = np.bincount(inv, weights=n)
    uj = uk % jmax
    rest = uk // jmax
    return Stack(rest // imax, rest % imax, uj, un.astype(np.float64), n_mats, n_v)


def merge(stack: Stack, groups: np.ndarray, n_groups: int) -> Stack:
    """Merge matrices: matrix ``m`` is added into matrix ``groups[m]``; voxel counts add up."""
    groups = np.asarray(groups, dtype=np.int64)
    n_v = np.bincount(groups, weights=stack.n_v, minlength=n_groups).astype(np.float64)
    return _coalesce(groups[stack.mid], stack.i, stack.j, stack.n, n_groups, n_v)


def _seg_sum(stack: Stack, x: np.ndarray) -> np.ndarray:
    # bincount of an empty input returns integers; keep every feature array float
    return np.bincount(stack.mid, weights=x, minlength=stack.n_mats).astype(np.float64, copy=False)


def _group_sumsq(mid: np.ndarray, key: np.ndarray, n: np.ndarray, n_mats: int) -> np.ndarray:
    """Per matrix: sum over distinct ``key`` of (sum of ``n`` with that key)^2."""
    if mid.size == 0:
        return np.zeros(n_mats)
    kmax = int(key.max()) + 1
    combined = mid * kmax + key
    uk, inv = np.unique(combined, return_inverse=True)
    sums = np.bincount(inv, weights=n)
    return np.bincount(uk // kmax, weights=sums * sums, minlength=n_mats).astype(np.float64, copy=False)


def _entropy_terms(p: np.ndarray) -> np.ndarray:
    out = np.zeros_like(p)
    nz = p > 0
    out[nz] = p[nz] * np.log2(p[nz])
    return out


# ---------------------------------------------------------------------------------------------
# GLCM
# ---------------------------------------------------------------------------------------------

def _shift_view(padded: np.ndarray, pad: int, shape: tuple[int, ...], offset: tuple[int, ...]) -> np.ndarray:
    return padded[tuple(slice(pad + o, pad + o + n) for o, n in zip(offset, shape, strict=True))]


def glcm_stack(levels: np.ndarray, *, distance: int = 1, two_d: bool = False) -> Stack:
    """Grey level co-occurrence matrices, one per direction (3D) or per slice and direction (2D).

    Matrix id: ``k`` for 3D direction ``k`` (of :data:`DIRECTIONS_3D`), ``z * 4 + k`` for
    slice ``z`` and 2D direction ``k`` (of :data:`DIRECTIONS_2D`). Each matrix counts
    the pairs along ``+d`` and ``-d`` (symmetric, IBSI ``M = M_+ + M_+^T``).

    Parameters
    ----------
    levels : ndarray int (n0, n1, n2)
        Discretised grey levels, 0 outside the intensity mask.
    distance : int
        Chebyshev distance delta: neighbour offsets are ``delta * d``.
    two_d : bool
    """
    lv = np.asarray(levels)
    dirs = DIRECTIONS_2D if two_d else DIRECTIONS_3D
    padded = np.pad(lv, distance)
    shape = lv.shape
    mids, ii, jj = [], [], []
    zidx = np.broadcast_to(np.arange(shape[0])[:, None, None], shape)
    for k, d in enumerate(dirs):
        off = tuple(distance * c for c in d)
        b = _shift_view(padded, distance, shape, off)
        valid = (lv > 0) & (b > 0)
        a_v = lv[valid].astype(np.int64)
        b_v = b[valid].astype(np.int64)
        if two_d:
            m = zidx[valid].astype(np.int64) * len(dirs) + k
        else:
            m = np.full(a_v.size, k, dtype=np.int64)
        mids += [m, m]
        ii += [a_v, b_v]
        jj += [b_v, a_v]
    n_mats = shape[0] * len(dirs) if two_d else len(dirs)
    mid = np.concatenate(mids)
    return _coalesce(mid, np.concatenate(ii), np.concatenate(jj), np.ones(mid.size), n_mats, np.zeros(n_mats))


def glcm_features(stack: Stack, n_levels: int) -> FeatureArrays:
    """The 25 IBSI GLCM features of every matrix of a stack (NaN for empty matrices)."""
    nm = stack.n_mats
    i = stack.i.astype(np.float64)
    j = stack.j.astype(np.float64)
    total = _seg_sum(stack, stack.n)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = stack.n / total[stack.mid]
        s = lambda x: _seg_sum(stack, x)  # noqa: E731
        ng = int(n_levels)
        # marginal probabilities p_i (the matrix is symmetric, so p_i. = p_.j)
        px = np.bincount(stack.mid * (ng + 1) + stack.i, weights=p, minlength=nm * (ng + 1)).reshape(nm, ng + 1)
        g = np.arange(ng + 1, dtype=np.float64)
        mu = px @ g
        var_m = (px * (g[None, :] - mu[:, None]) ** 2).sum(axis=1)
        jmax = np.zeros(nm)
        np.maximum.at(jmax, stack.mid, p)
        out: FeatureArrays = {}
        out["cm.joint.max"] = jmax
        out["cm.joint.avg"] = s(i * p)
        out["cm.joint.var"] = s((i - mu[stack.mid]) ** 2 * p)
        hxy = -s(_entropy_terms(p))
        out["cm.joint.entr"] = hxy
        dk = np.abs(stack.i - stack.j)
        pdiff = np.bincount(stack.mid * ng + dk, weights=p, minlength=nm * ng).reshape(nm, ng)
        kd = np.arange(ng, dtype=np.float64)
        davg = pdiff @ kd
        out["cm.diff.avg"] = davg
        out["cm.diff.var"] = (pdiff * (kd[None, :] - davg[:, None]) ** 2).sum(axis=1)
        out["cm.diff.entr"] = -_entropy_terms(pdiff).sum(axis=1)
        sk = stack.i + stack.j
        psum = np.bincount(stack.mid * (2 * ng + 1) + sk, weights=p, minlength=nm * (2 * ng + 1)).reshape(nm, -1)
        ks = np.arange(2 * ng + 1, dtype=np.float64)
        savg = psum @ ks
        out["cm.sum.avg"] = savg
        out["cm.sum.var"] = (psum * (ks[None, :] - savg[:, None]) ** 2).sum(axis=1)
        out["cm.sum.entr"] = -_entropy_terms(psum).sum(axis=1)
        out["cm.energy"] = s(p * p)
        d = i - j
        ad = np.abs(d)
        out["cm.contrast"] = s(d * d * p)
        out["cm.dissimilarity"] = s(ad * p)
        out["cm.inv.diff"] = s(p / (1.0 + ad))
        out["cm.inv.diff.norm"] = s(p / (1.0 + ad / ng))
        out["cm.inv.diff.mom"] = s(p / (1.0 + d * d))
        out["cm.inv.diff.mom.norm"] = s(p / (1.0 + d * d / (ng * ng)))
        off = ad > 0
        out["cm.inv.var"] = np.bincount(stack.mid[off], weights=p[off] / (d[off] * d[off]),
                                        minlength=nm).astype(np.float64, copy=False)
        cov = s((i - mu[stack.mid]) * (j - mu[stack.mid]) * p)
        corr = cov / var_m
        corr[(var_m <= 0) & (total > 0)] = 1.0
        out["cm.corr"] = corr
        out["cm.auto.corr"] = s(i * j * p)
        c = i + j - 2.0 * mu[stack.mid]
        out["cm.clust.tend"] = s(c * c * p)
        out["cm.clust.shade"] = s(c ** 3 * p)
        out["cm.clust.prom"] = s(c ** 4 * p)
        hx = -_entropy_terms(px).sum(axis=1)
        pij_marg = px[stack.mid, stack.i] * px[stack.mid, stack.j]
        hxy1 = -s(p * np.log2(pij_marg))
        hxy2 = 2.0 * hx  # -sum_ij p_i p_j log2(p_i p_j) = 2 HX for p_i. = p_.j
        ic1 = (hxy - hxy1) / hx
        ic1[(hx <= 0) & (total > 0)] = 1.0
        out["cm.info.corr.1"] = ic1
        out["cm.info.corr.2"] = np.sqrt(np.clip(1.0 - np.exp(-2.0 * (hxy2 - hxy)), 0.0, None))
    out = {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
    empty = total <= 0
    for v in out.values():
        v[empty] = np.nan
    return out


# ---------------------------------------------------------------------------------------------
# GLRLM
# ---------------------------------------------------------------------------------------------

def _runs(padded: np.ndarray, d: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of equal non-zero values along direction ``d`` in a zero-bordered array.

    Returns grey level, length and the flat index (in ``padded``) of the first voxel of each run.
    """
    shape = padded.shape
    strides = (shape[1] * shape[2], shape[2], 1)
    step = int(sum(a * b for a, b in zip(d, strides, strict=True)))
    if step < 0:
        step = -step
    flat = padded.ravel()
    rows = -(-flat.size // step)
    folded = np.zeros((rows + 1) * step, dtype=flat.dtype)
    folded[: flat.size] = flat
    seq = np.ascontiguousarray(folded.reshape(rows + 1, step).T).ravel()
    nz = seq != 0
    prev = np.empty_like(seq)
    prev[0] = 0
    prev[1:] = seq[:-1]
    nxt = np.empty_like(seq)
    nxt[-1] = 0
    nxt[:-1] = seq[1:]
    starts = np.flatnonzero(nz & (seq != prev))
    ends = np.flatnonzero(nz & (seq != nxt))
    length = ends - starts + 1
    gl = seq[starts].astype(np.int64)
    orig = (starts % (rows + 1)) * step + starts // (rows + 1)
    return gl, length.astype(np.int64), orig


def glrlm_stack(levels: np.ndarray, *, two_d: bool = False) -> Stack:
    """Grey level run length matrices, ids as in :func:`glcm_stack`.

    ``n_v`` is the number of ROI voxels behind each matrix (the slice for 2D).
    """
    lv = np.asarray(levels)
    dirs = DIRECTIONS_2D if two_d else DIRECTIONS_3D
    padded = np.pad(lv, 1)
    plane = padded.shape[1] * padded.shape[2]
    mids, ii, jj = [], [], []
    for k, d in enumerate(dirs):
        gl, length, orig = _runs(padded, d)
        if two_d:
            z = orig // plane - 1
            mids.append(z * len(dirs) + k)
        else:
            mids.append(np.full(gl.size, k, dtype=np.int64))
        ii.append(gl)
        jj.append(length)
    if two_d:
        n_mats = lv.shape[0] * len(dirs)
        per_slice = (lv > 0).reshape(lv.shape[0], -1).sum(axis=1).astype(np.float64)
        n_v = np.repeat(per_slice, len(dirs))
    else:
        n_mats = len(dirs)
        n_v = np.full(n_mats, float((lv > 0).sum()))
    mid = np.concatenate(mids)
    return _coalesce(mid, np.concatenate(ii), np.concatenate(jj), np.ones(mid.size), n_mats, n_v)


# ---------------------------------------------------------------------------------------------
# Zone matrices
# ---------------------------------------------------------------------------------------------

def label_zones(levels: np.ndarray, *, two_d: bool = False) -> np.ndarray:
    """Zones: connected voxels of equal grey level (26-connected, or 8-connected per slice)."""
    lv = np.ascontiguousarray(np.asarray(levels, dtype=np.int32))
    if not two_d:
        return cc3d.connected_components(lv, connectivity=26, out_dtype=np.uint32).astype(np.int64)
    # per-slice 8-connectivity: interleave empty slices so that 26-connectivity cannot link slices
    spread = np.zeros((2 * lv.shape[0] - 1,) + lv.shape[1:], dtype=np.int32)
    spread[::2] = lv
    lab = cc3d.connected_components(spread, connectivity=26, out_dtype=np.uint32)
    return np.ascontiguousarray(lab[::2]).astype(np.int64)


def _zone_table(levels: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per zone: grey level, size, slice of one of its voxels, and the flat voxel->zone index."""
    flat = labels.ravel()
    sel = np.flatnonzero(flat)
    zl = flat[sel]
    n_z = int(zl.max()) if zl.size else 0
    size = np.bincount(zl, minlength=n_z + 1)[1:]
    gl = np.zeros(n_z + 1, dtype=np.int64)
    gl[zl] = np.asarray(levels).ravel()[sel]
    plane = labels.shape[1] * labels.shape[2]
    zs = np.zeros(n_z + 1, dtype=np.int64)
    zs[zl] = sel // plane
    return gl[1:], size.astype(np.int64), zs[1:], sel


def glszm_stack(levels: np.ndarray, *, two_d: bool = False) -> Stack:
    """Grey level size zone matrices: one (3D) or one per slice (2D, id = slice)."""
    lv = np.asarray(levels)
    labels = label_zones(lv, two_d=two_d)
    gl, size, zs, _sel = _zone_table(lv, labels)
    return _zone_stack(lv, gl, size, zs, two_d)


def _zone_stack(lv: np.ndarray, gl: np.ndarray, j: np.ndarray, zs: np.ndarray, two_d: bool) -> Stack:
    if two_d:
        n_mats = lv.shape[0]
        n_v = (lv > 0).reshape(n_mats, -1).sum(axis=1).astype(np.float64)
        mid = zs
    else:
        n_mats = 1
        n_v = np.array([float((lv > 0).sum())])
        mid = np.zeros(gl.size, dtype=np.int64)
    return _coalesce(mid, gl, j, np.ones(gl.size), n_mats, n_v)


def border_distance(morph_mask: np.ndarray, *, two_d: bool = False) -> np.ndarray:
    """Distance of each ROI voxel to the ROI edge (IBSI GLDZM): 1 for voxels touching the
    outside, in steps of 6-connected (3D) or in-plane 4-connected (2D) neighbours.
    Voxels beyond the array border count as outside."""
    m = np.pad(np.asarray(morph_mask, dtype=bool), 1)
    if two_d:
        metric = np.zeros((3, 3, 3), dtype=bool)
        metric[1] = ndi.generate_binary_structure(2, 1)
    else:
        metric = ndi.generate_binary_structure(3, 1)
    dist = ndi.distance_transform_cdt(m, metric=metric)
    return dist[1:-1, 1:-1, 1:-1]


def gldzm_stack(levels: np.ndarray, morph_mask: np.ndarray, *, two_d: bool = False) -> Stack:
    """Grey level distance zone matrices: zones of the intensity mask (``levels > 0``), each at
    the minimum distance to the edge of the *morphological* mask over its voxels."""
    lv = np.asarray(levels)
    labels = label_zones(lv, two_d=two_d)
    gl, _size, zs, sel = _zone_table(lv, labels)
    dist = border_distance(morph_mask, two_d=two_d).ravel()
    zd = np.full(gl.size + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(zd, labels.ravel()[sel], dist[sel].astype(np.int64))
    return _zone_stack(lv, gl, zd[1:], zs, two_d)


# ---------------------------------------------------------------------------------------------
# Neighbourhood matrices
# ---------------------------------------------------------------------------------------------

def _neighbour_offsets(distance: int, two_d: bool) -> list[tuple[int, int, int]]:
    r = range(-distance, distance + 1)
    return [(a, b, c) for a in ([0] if two_d else r) for b in r for c in r if (a, b, c) != (0, 0, 0)]


@dataclass
class Ngtdm:
    """Neighbourhood grey tone difference matrices: ``s[m, i]`` and ``n[m, i]`` per matrix ``m``."""

    s: np.ndarray
    n: np.ndarray


def ngtdm(levels: np.ndarray, *, distance: int = 1, two_d: bool = False) -> Ngtdm:
    """NGTDM with IBSI's valid-neighbourhood rule: neighbours outside the ROI are ignored and
    voxels without any ROI neighbour are left out (``n_i`` counts voxels with ``W_k > 0``)."""
    lv = np.asarray(levels)
    ng = int(lv.max())
    padded = np.pad(lv, distance)
    total = np.zeros(lv.shape, dtype=np.float64)
    count = np.zeros(lv.shape, dtype=np.float64)
    for off in _neighbour_offsets(distance, two_d):
        b = _shift_view(padded, distance, lv.shape, off)
        total += b
        count += b > 0
    valid = (lv > 0) & (count > 0)
    g = lv[valid].astype(np.int64)
    diff = np.abs(g - total[valid] / count[valid])
    if two_d:
        n_mats = lv.shape[0]
        mid = np.nonzero(valid)[0].astype(np.int64)
    else:
        n_mats = 1
        mid = np.zeros(g.size, dtype=np.int64)
    key = mid * (ng + 1) + g
    s = np.bincount(key, weights=diff, minlength=n_mats * (ng + 1)).reshape(n_mats, ng + 1)
    n = np.bincount(key, minlength=n_mats * (ng + 1)).reshape(n_mats, ng + 1).astype(np.float64)
    return Ngtdm(s, n)


def ngtdm_features(mats: Ngtdm) -> FeatureArrays:
    """The 5 NGTDM features of every matrix (NaN for matrices without valid voxels)."""
    n_mats = mats.s.shape[0]
    out = {k: np.full(n_mats, np.nan) for k in
           ("ngt.coarseness", "ngt.contrast", "ngt.busyness", "ngt.complexity", "ngt.strength")}
    for m in range(n_mats):
        n = mats.n[m]
        nvc = n.sum()
        if nvc <= 0:
            continue
        present = np.flatnonzero(n > 0)
        p = n[present] / nvc
        s = mats.s[m, present]
        lvl = present.astype(np.float64)
        ngp = present.size
        ps = float(np.sum(p * s))
        out["ngt.coarseness"][m] = 1e6 if ps == 0 else 1.0 / ps
        di = lvl[:, None] - lvl[None, :]
        if ngp > 1:
            out["ngt.contrast"][m] = (np.sum(p[:, None] * p[None, :] * di * di) / (ngp * (ngp - 1))
                                      * np.sum(s) / nvc)
            ip = lvl * p
            denom = np.sum(np.abs(ip[:, None] - ip[None, :]))
            out["ngt.busyness"][m] = ps / denom if denom > 0 else 0.0
        else:
            out["ngt.contrast"][m] = 0.0
            out["ngt.busyness"][m] = 0.0
        psx = p * s
        out["ngt.complexity"][m] = float(
            np.sum(np.abs(di) * (psx[:, None] + psx[None, :]) / (p[:, None] + p[None, :])) / nvc)
        ssum = float(np.sum(s))
        out["ngt.strength"][m] = (float(np.sum((p[:, None] + p[None, :]) * di * di)) / ssum) if ssum > 0 else 0.0
    return out


def ngldm_stack(levels: np.ndarray, *, distance: int = 1, coarseness: float = 0.0, two_d: bool = False) -> Stack:
    """Neighbouring grey level dependence matrices: dependence ``j = 1 + #{neighbours in the ROI
    with |X_k - X_m| <= alpha}`` for every ROI voxel (one matrix, or one per slice)."""
    lv = np.asarray(levels)
    padded = np.pad(lv, distance)
    dep = np.ones(lv.shape, dtype=np.int64)
    a = lv.astype(np.int64)
    for off in _neighbour_offsets(distance, two_d):
        b = _shift_view(padded, distance, lv.shape, off)
        if coarseness == 0:
            dep += (b == lv) & (b > 0)
        else:
            dep += (b > 0) & (np.abs(b.astype(np.int64) - a) <= coarseness)
    roi = lv > 0
    g = lv[roi].astype(np.int64)
    j = dep[roi]
    if two_d:
        n_mats = lv.shape[0]
        mid = np.nonzero(roi)[0].astype(np.int64)
        n_v = roi.reshape(n_mats, -1).sum(axis=1).astype(np.float64)
    else:
        n_mats = 1
        mid = np.zeros(g.size, dtype=np.int64)
        n_v = np.array([float(g.size)])
    return _coalesce(mid, g, j, np.ones(g.size), n_mats, n_v)


# ---------------------------------------------------------------------------------------------
# Features of run/zone/dependence matrices (shared structure)
# ---------------------------------------------------------------------------------------------

_ZONE_NAMES: dict[str, tuple[str, ...]] = {
    "rlm": ("sre", "lre", "lgre", "hgre", "srlge", "srhge", "lrlge", "lrhge", "glnu", "glnu.norm",
            "rlnu", "rlnu.norm", "r.perc", "gl.var", "rl.var", "rl.entr"),
    "szm": ("sze", "lze", "lgze", "hgze", "szlge", "szhge", "lzlge", "lzhge", "glnu", "glnu.norm",
            "zsnu", "zsnu.norm", "z.perc", "gl.var", "zs.var", "zs.entr"),
    "dzm": ("sde", "lde", "lgze", "hgze", "sdlge", "sdhge", "ldlge", "ldhge", "glnu", "glnu.norm",
            "zdnu", "zdnu.norm", "z.perc", "gl.var", "zd.var", "zd.entr"),
    "ngl": ("lde", "hde", "lgce", "hgce", "ldlge", "ldhge", "hdlge", "hdhge", "glnu", "glnu.norm",
            "dcnu", "dcnu.norm", "dc.perc", "gl.var", "dc.var", "dc.entr", "dc.energy"),
}


def zone_features(stack: Stack, family: str) -> FeatureArrays:
    """GLRLM / GLSZM / GLDZM / NGLDM features of every matrix of a stack.

    ``i`` is the grey level and ``j`` the run length, zone size, zone distance or
    dependence count; ``N_s`` the number of runs/zones/neighbourhoods and the
    percentage feature is ``N_s / N_v``.
    """
    names = _ZONE_NAMES[family]
    nm = stack.n_mats
    i = stack.i.astype(np.float64)
    j = stack.j.astype(np.float64)
    c = stack.n
    with np.errstate(divide="ignore", invalid="ignore"):
        ns = _seg_sum(stack, c)
        s = lambda x: _seg_sum(stack, x) / ns  # noqa: E731
        i2, j2 = i * i, j * j
        vals = [
            s(c / j2), s(c * j2), s(c / i2), s(c * i2),
            s(c / (i2 * j2)), s(c * i2 / j2), s(c * j2 / i2), s(c * i2 * j2),
        ]
        inu = _group_sumsq(stack.mid, stack.i, c, nm)
        jnu = _group_sumsq(stack.mid, stack.j, c, nm)
        vals += [inu / ns, inu / (ns * ns), jnu / ns, jnu / (ns * ns), ns / stack.n_v]
        p = c / ns[stack.mid]
        mu_i = _seg_sum(stack, i * p)
        mu_j = _seg_sum(stack, j * p)
        vals += [
            _seg_sum(stack, (i - mu_i[stack.mid]) ** 2 * p),
            _seg_sum(stack, (j - mu_j[stack.mid]) ** 2 * p),
            -_seg_sum(stack, _entropy_terms(p)),
        ]
        if family == "ngl":
            vals.append(_seg_sum(stack, p * p))
    out = {f"{family}.{n}": np.asarray(v, dtype=np.float64) for n, v in zip(names, vals, strict=True)}
    empty = ns <= 0
    for v in out.values():
        v[empty] = np.nan
    return out


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------

def _mean(features: FeatureArrays) -> dict[str, float]:
    out = {}
    for k, v in features.items():
        finite = v[np.isfinite(v)]
        out[k] = float(finite.mean()) if finite.size else float("nan")
    return out


def _single(features: FeatureArrays) -> dict[str, float]:
    return {k: float(v[0]) for k, v in features.items()}


def aggregate_directional(stack2d: Stack | None, stack3d: Stack | None,
                          fn: Callable[[Stack], FeatureArrays], n_slices: int,
                          dims: tuple[TextureDimension, ...]) -> dict[str, dict[str, float]]:
    """GLCM/GLRLM aggregation methods (IBSI): returns ``{token: {feature: value}}``.

    ``2d_avg`` per slice and direction, averaged; ``2d_smrg`` directions merged per
    slice, averaged over slices; ``2.5d_dmrg`` slices merged per direction, averaged
    over directions; ``2.5d_vmrg`` everything merged; ``3d_avg`` per 3D direction,
    averaged; ``3d_vmrg`` all 3D directions merged.
    """
    res: dict[str, dict[str, float]] = {}
    nd2 = len(DIRECTIONS_2D)
    if stack2d is not None:
        ids = np.arange(stack2d.n_mats)
        if "2d" in dims:
            res["2d_avg"] = _mean(fn(stack2d))
            res["2d_smrg"] = _mean(fn(merge(stack2d, ids // nd2, n_slices)))
        if "2.5d" in dims:
            res["2.5d_dmrg"] = _mean(fn(merge(stack2d, ids % nd2, nd2)))
            res["2.5d_vmrg"] = _single(fn(merge(stack2d, np.zeros_like(ids), 1)))
    if stack3d is not None and "3d" in dims:
        res["3d_avg"] = _mean(fn(stack3d))
        res["3d_vmrg"] = _single(fn(merge(stack3d, np.zeros(stack3d.n_mats, dtype=np.int64), 1)))
    return res


def aggregate_slicewise(stack2d: Stack | None, stack3d: Stack | None, fn: Callable[[Stack], FeatureArrays],
                        dims: tuple[TextureDimension, ...]) -> dict[str, dict[str, float]]:
    """GLSZM/GLDZM/NGLDM aggregation: ``2d`` averaged over slices, ``2.5d`` slices merged, ``3d``."""
    res: dict[str, dict[str, float]] = {}
    if stack2d is not None:
        if "2d" in dims:
            res["2d"] = _mean(fn(stack2d))
        if "2.5d" in dims:
            res["2.5d"] = _single(fn(merge(stack2d, np.zeros(stack2d.n_mats, dtype=np.int64), 1)))
    if stack3d is not None and "3d" in dims:
        res["3d"] = _single(fn(stack3d))
    return res


def aggregate_ngtdm(levels: np.ndarray, *, distance: int,
                    dims: tuple[TextureDimension, ...]) -> dict[str, dict[str, float]]:
    """NGTDM aggregation: ``2d`` per slice averaged, ``2.5d`` summed ``s_i`` and ``n_i``, ``3d``."""
    res: dict[str, dict[str, float]] = {}
    if "2d" in dims or "2.5d" in dims:
        m2 = ngtdm(levels, distance=distance, two_d=True)
        if "2d" in dims:
            res["2d"] = _mean(ngtdm_features(m2))
        if "2.5d" in dims:
            res["2.5d"] = _single(ngtdm_features(Ngtdm(m2.s.sum(axis=0, keepdims=True),
                                                       m2.n.sum(axis=0, keepdims=True))))
    if "3d" in dims:
        res["3d"] = _single(ngtdm_features(ngtdm(levels, distance=distance, two_d=False)))
    return res
