"""Segmentation and detection metrics (pure numpy/scipy).

Dice similarity coefficient, 95th-percentile symmetric Hausdorff distance between
surfaces (mm, anisotropic spacing honoured through the Euclidean distance
transform), and volume difference; detection scoring (recall, precision, FROC
curve and its CPM summary) against reference masks or points.
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


# ---------------------------------------------------------------------------------------------
# Detection scoring (recall / precision / FROC)
# ---------------------------------------------------------------------------------------------

#: False positives per volume at which the FROC sensitivity is summarised (LUNA16 CPM points).
FROC_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def score_detections(
    points_mm: np.ndarray,
    reference: np.ndarray,
    *,
    scores: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
    max_distance_mm: float | None = None,
    reference_radii_mm: np.ndarray | None = None,
    threshold: float | None = None,
    duplicates: str = "fp",
    fp_rates: Sequence[float] = FROC_FP_RATES,
) -> dict:
    """Score point detections against reference lesions: recall, precision and an FROC curve.

    Detections are matched greedily in order of decreasing score (each reference at
    most once). A detection hits a reference

    * **masks**: ``reference`` is a label image (int, one label per lesion) or a bool
      mask (split into 26-connected lesions) on the grid of ``spacing``; the hit test
      is "the detection's voxel ``round(point / spacing)`` lies inside the lesion"
      (the LUNA16/FROC convention);
    * **points**: ``reference`` is an ``(m, 3)`` array of lesion centres in mm; the
      detection must lie within ``reference_radii_mm[i]`` (if given) or
      ``max_distance_mm`` of the centre (the nearest unmatched one is taken).

    Parameters
    ----------
    points_mm : (n, 3) float
        Detection positions in mm, array-axis order (``index * spacing``).
    scores : (n,) float, optional
        Detection confidence (default: all equal, in the given order).
    threshold : float, optional
        Only detections with ``score >= threshold`` count for recall/precision
        (the FROC curve always uses all of them).
    duplicates : {"fp", "ignore"}
        A second detection of an already found lesion counts as a false positive
        ("fp", strict) or is ignored ("ignore", LUNA16).
    fp_rates : sequence of float
        FP-per-volume points for the FROC summary (sensitivity at each; ``cpm`` is their mean).

    Returns
    -------
    dict
        ``tp, fp, fn, recall, precision, f1``, ``froc`` (list of dicts with
        ``threshold, sensitivity, fp``), ``froc_points`` (``{rate: sensitivity}``) and ``cpm``.
    """
    pts = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
    n = pts.shape[0]
    sc = np.zeros(n) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if sc.shape[0] != n:
        raise ValueError(f"scores must have one value per detection ({n}), got {sc.shape[0]}")
    if duplicates not in ("fp", "ignore"):
        raise ValueError(f"duplicates must be 'fp' or 'ignore', got {duplicates!r}")
    ref = np.asarray(reference)
    order = np.lexsort((np.arange(n), -sc))  # by score, stable
    outcome = np.zeros(n, dtype=np.int8)  # 1 TP, -1 FP, 0 ignored duplicate
    if ref.ndim == 3:
        if spacing is None or len(spacing) != 3:
            raise ValueError(f"spacing (3 values) is needed with reference masks, got {spacing!r}")
        if ref.dtype == bool:
            labels, n_ref = ndi.label(ref, structure=np.ones((3, 3, 3), bool))
        else:
            labels = ref.astype(np.int64)
            n_ref = int(len(np.unique(labels[labels > 0])))
        found: set[int] = set()
        idx = np.rint(pts / np.asarray(spacing, dtype=np.float64)).astype(np.int64)
        for i in order:
            p = idx[i]
            inside = bool(np.all(p >= 0) and np.all(p < np.asarray(labels.shape)))
            lab = int(labels[tuple(p)]) if inside else 0
            if lab == 0:
                outcome[i] = -1
            elif lab in found:
                outcome[i] = -1 if duplicates == "fp" else 0
            else:
                found.add(lab)
                outcome[i] = 1
    else:
        centres = ref.astype(np.float64).reshape(-1, 3)
        n_ref = centres.shape[0]
        if reference_radii_mm is not None:
            reach = np.asarray(reference_radii_mm, dtype=np.float64).reshape(-1)
            if reach.shape[0] != n_ref:
                raise ValueError(f"reference_radii_mm must have {n_ref} values, got {reach.shape[0]}")
        elif max_distance_mm is not None and max_distance_mm > 0:
            reach = np.full(n_ref, float(max_distance_mm))
        else:
            raise ValueError("point references need max_distance_mm > 0 or reference_radii_mm")
        matched = np.zeros(n_ref, dtype=bool)
        for i in order:
            d = np.linalg.norm(centres - pts[i], axis=1) if n_ref else np.empty(0)
            within = d <= reach
            free = np.flatnonzero(within & ~matched)
            if free.size:
                matched[free[np.argmin(d[free])]] = True
                outcome[i] = 1
            elif within.any():
                outcome[i] = -1 if duplicates == "fp" else 0
            else:
                outcome[i] = -1
    sel = np.ones(n, bool) if threshold is None else sc >= threshold
    tp = int(np.sum((outcome == 1) & sel))
    fp = int(np.sum((outcome == -1) & sel))
    fn = int(n_ref - tp)
    recall = tp / n_ref if n_ref else float("nan")
    precision = tp / (tp + fp) if tp + fp else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else float("nan")
    # FROC: cumulative along decreasing score; one point per distinct score
    o = outcome[order]
    cum_tp = np.cumsum(o == 1)
    cum_fp = np.cumsum(o == -1)
    s_sorted = sc[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted) != 0), n - 1] if n else np.empty(0, int)
    froc = [{"threshold": float(s_sorted[k]), "sensitivity": float(cum_tp[k] / n_ref) if n_ref else float("nan"),
             "fp": int(cum_fp[k])} for k in last]
    points = {}
    for rate in fp_rates:
        ok = [f["sensitivity"] for f in froc if f["fp"] <= rate]
        points[float(rate)] = float(max(ok)) if ok else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "n_reference": int(n_ref), "recall": recall, "precision": precision, "f1": f1,
            "froc": froc, "froc_points": points, "cpm": float(np.mean(list(points.values()))) if points else float("nan")}
