"""Automatic segmentation used by the processing stage where no reference mask exists.

A composition of the pure building blocks (:mod:`imaging.enhance`,
:mod:`imaging.segment`, :mod:`imaging.metrics`):

* PET: the fixed-fraction isocontour of SUVmax (40 % by default), the component
  holding the SUVmax voxel (a standard PET tumour delineation, e.g. Erdi et al. 1997).
* CT / MR / other: log enhancement ``I' = log(I - min(I) + 1)``, Otsu threshold
  from a chunked histogram, morphological opening, connected components with a
  size filter, the largest components kept.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from imaging import enhance, segment


def auto_segment(volume: Any, *, spacing: tuple[float, ...], modality: str | None, log_enhancement: bool = True,
                 threshold: str = "otsu", bins: int = 256, opening_radius: int = 1, min_size: int = 50,
                 connectivity: int = 1, keep_largest: int = 3, pet_fraction: float = 0.4,
                 method: str = "threshold", seeds: np.ndarray | None = None, grow_k: float = 2.5,
                 grow_radius: int = 2, split_touching: bool = False, split_min_distance_mm: float = 10.0,
                 memory_budget_bytes: int | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Segment one 3-D volume into labelled candidate ROIs.

    Parameters
    ----------
    volume : ndarray or dask array (n0, n1, n2)
    spacing : tuple of 3 float, mm (recorded in the component table)
    modality : str or None
        ``"PT"`` uses the PET isocontour rule, anything else the threshold chain.
    threshold : {"otsu", "multi_otsu"}
        ``multi_otsu`` keeps the brightest of three classes.
    method : {"threshold", "region_grow"}
        ``region_grow`` grows from ``seeds`` (``(n, 3)`` voxel indices) over the voxels within
        ``grow_k`` standard deviations of the intensity around the seeds (ITK ConfidenceConnected
        criterion, statistics in a cube of half-width ``grow_radius``); PET ignores it.
    split_touching : bool
        Split touching objects with a marker watershed on the distance transform (markers:
        distance maxima at least ``split_min_distance_mm`` apart).
    memory_budget_bytes : int, optional
        Above it, a dask foreground stays lazy and is labelled chunk by chunk with a
        union-find merge across chunk faces (:func:`imaging.segment.label`).

    Returns
    -------
    labels : int32 ndarray (n0, n1, n2)
        1..k for the kept components, largest first; 0 background.
    components : list of dict
        ``label``, ``voxels``, ``volume_ml``, ``centroid_vox`` per kept component.
    """
    if getattr(volume, "ndim", 0) != 3:
        raise ValueError(f"volume must be 3-D, got shape {getattr(volume, 'shape', None)!r}")
    if keep_largest < 1:
        raise ValueError(f"keep_largest must be >= 1, got {keep_largest!r}")
    if method not in ("threshold", "region_grow"):
        raise ValueError(f"method must be 'threshold' or 'region_grow', got {method!r}")
    if modality == "PT":
        fg = segment.pet_isocontour(volume, fraction=pet_fraction, connected=True, connectivity=connectivity)
    elif method == "region_grow":
        if seeds is None or len(seeds) == 0:
            raise ValueError("method='region_grow' needs seeds (voxel indices), got none")
        fg = grow_from_seeds(volume, np.asarray(seeds, dtype=np.int64), k=grow_k, radius=grow_radius,
                             connectivity=connectivity)
    else:
        work = enhance.log_transform(volume) if log_enhancement else volume
        if threshold == "multi_otsu":
            t = float(np.max(segment.multi_otsu_thresholds(work, classes=3, bins=bins)))
        elif threshold == "otsu":
            t = float(segment.otsu_threshold(work, bins=bins))
        else:
            raise ValueError(f"threshold must be 'otsu' or 'multi_otsu', got {threshold!r}")
        fg = work > t
        if opening_radius > 0:
            fg = segment.binary_opening(fg, connectivity=connectivity, iterations=opening_radius)
    lazy = (isinstance(fg, da.Array) and memory_budget_bytes is not None and not split_touching
            and segment.label_memory_bytes(fg.shape) > memory_budget_bytes)
    if not lazy:
        fg = fg.compute() if isinstance(fg, da.Array) else np.asarray(fg)
    if split_touching:
        labels, n = split_touching_objects(fg, spacing=spacing, min_distance_mm=split_min_distance_mm,
                                           connectivity=connectivity, min_size=min_size)
    else:
        labels, n = segment.label(fg, connectivity=connectivity, min_size=min_size,
                                  memory_budget_bytes=memory_budget_bytes)
    labels = np.asarray(labels)
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    order = np.argsort(-counts[1:], kind="stable")[:keep_largest] + 1
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    out = lut[labels]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    comps = []
    for new, old in enumerate(order, start=1):
        idx = np.argwhere(out == new)
        comps.append({"label": int(new), "voxels": int(counts[old]), "volume_ml": float(counts[old] * voxel_ml),
                      "centroid_vox": [float(c) for c in idx.mean(axis=0)]})
    return out, comps


def grow_from_seeds(volume: Any, seeds: np.ndarray, *, k: float = 2.5, radius: int = 2,
                    connectivity: int = 1) -> Any:
    """Confidence-connected region growing: ``mean +- k * std`` of the cubes around the seeds.

    Parameters
    ----------
    volume : ndarray or dask array (n0, n1, n2)
    seeds : (n, 3) int array of voxel indices
    k : float > 0
    radius : int >= 0
        Half-width (voxels) of the cube around each seed whose intensities define the interval.
    """
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k!r}")
    seeds = np.asarray(seeds, dtype=np.int64).reshape(-1, 3)
    shape = np.asarray(volume.shape)
    if (seeds < 0).any() or (seeds >= shape).any():
        raise ValueError(f"seeds must lie inside the volume of shape {tuple(shape)}, got {seeds.tolist()}")
    samples = []
    for z, y, x in seeds:
        cube = volume[max(0, z - radius):z + radius + 1, max(0, y - radius):y + radius + 1,
                      max(0, x - radius):x + radius + 1]
        samples.append(np.asarray(cube.compute() if isinstance(cube, da.Array) else cube, dtype=np.float64).ravel())
    values = np.concatenate(samples)
    mean, std = float(values.mean()), float(values.std())
    return segment.region_grow(volume, seeds=seeds, lower=mean - k * std, upper=mean + k * std,
                               connectivity=connectivity)


def split_touching_objects(mask: np.ndarray, *, spacing: tuple[float, ...], min_distance_mm: float,
                           connectivity: int = 1, min_size: int = 0) -> tuple[np.ndarray, int]:
    """Label ``mask`` and split touching objects by a marker watershed on its distance transform."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max

    if min_distance_mm <= 0:
        raise ValueError(f"min_distance_mm must be > 0, got {min_distance_mm!r}")
    mask = np.asarray(mask, dtype=bool)
    distance = ndi.distance_transform_edt(mask, sampling=spacing)
    footprint = max(1, int(round(min_distance_mm / min(spacing))))
    peaks = peak_local_max(distance, min_distance=footprint, labels=mask.astype(np.int32), exclude_border=False)
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    split = segment.watershed(-distance, markers=markers, mask=mask, connectivity=connectivity)
    if min_size > 0:
        counts = np.bincount(split.ravel())
        small = np.flatnonzero(counts < min_size)
        split[np.isin(split, small[small > 0])] = 0
    kept = np.unique(split[split > 0])
    lut = np.zeros(int(split.max()) + 1, dtype=np.int32)
    lut[kept] = np.arange(1, len(kept) + 1, dtype=np.int32)
    return lut[split], int(len(kept))


def evaluate_segmentation(labels: np.ndarray, components: list[dict[str, Any]],
                          references: list[tuple[str, np.ndarray]], *, spacing: tuple[float, ...]
                          ) -> list[dict[str, Any]]:
    """Score the automatic components against each reference mask.

    For every reference ROI the automatic component with the highest Dice is
    reported with Dice, the 95th-percentile Hausdorff distance (mm) and the volume
    difference (ml, automatic minus reference). An empty list when there is no reference.
    """
    from imaging import metrics

    rows = []
    for roi, ref in references:
        if ref.shape != labels.shape:
            raise ValueError(f"reference mask {roi!r} has shape {ref.shape}, labels have {labels.shape}")
        best: dict[str, Any] = {"roi_name": roi, "auto_label": 0, "dice": 0.0, "hd95_mm": float("nan"),
                                "volume_diff_ml": float("nan")}
        for comp in components:
            auto = labels == comp["label"]
            d = float(metrics.dice(auto, ref))
            if d > best["dice"]:
                best = {"roi_name": roi, "auto_label": comp["label"], "dice": d,
                        "hd95_mm": float(metrics.hausdorff95(auto, ref, spacing=spacing)),
                        "volume_diff_ml": float(metrics.volume_difference(auto, ref, spacing=spacing)) / 1000.0}
        rows.append(best)
    return rows


def detect_candidates(volume: Any, *, spacing: tuple[float, ...], affine: np.ndarray, method: str,
                      sigmas_mm: tuple[float, ...], threshold: float,
                      references: list[tuple[str, np.ndarray]]) -> tuple[Any, dict[str, Any]]:
    """Candidate lesions by LoG/DoG blob detection, scored against reference masks when given.

    ``threshold`` is relative: it multiplies the volume's interquartile intensity range,
    so one setting serves HU, SUV and MR units. Returns the candidate table and a
    summary (threshold used, count, and recall/precision/FROC against the references).
    """
    from imaging import detect, metrics

    q25, q75 = (float(v) for v in segment.percentile(volume, [25.0, 75.0]))
    spread = q75 - q25 if q75 > q25 else 1.0
    absolute = float(threshold) * spread
    found = detect.detect_blobs(volume, spacing=spacing, sigmas_mm=sigmas_mm, threshold=absolute, method=method,
                                exclude_border=True, affine=affine)
    summary: dict[str, Any] = {"threshold_relative": float(threshold), "threshold": absolute,
                               "n_candidates": int(len(found))}
    if references:
        lesions = np.zeros(references[0][1].shape, dtype=np.int32)
        for i, (_name, m) in enumerate(references, start=1):
            lesions[m & (lesions == 0)] = i
        points = found[["z_mm", "y_mm", "x_mm"]].to_numpy() if len(found) else np.zeros((0, 3))
        score = metrics.score_detections(points, lesions, scores=found["response"].to_numpy() if len(found) else None,
                                         spacing=spacing)
        summary.update({k: score[k] for k in ("tp", "fp", "fn", "recall", "precision", "cpm") if k in score})
    return found, summary
