"""imaging.metrics.score_detections: matching, duplicates, FROC."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.metrics import score_detections


def _two_lesions() -> np.ndarray:
    lab = np.zeros((20, 20, 20), np.int32)
    lab[2:6, 2:6, 2:6] = 1
    lab[12:16, 12:16, 12:16] = 2
    return lab


def test_mask_reference_hits_misses_duplicates() -> None:
    lab = _two_lesions()
    sp = (2.0, 1.0, 1.0)
    pts = np.array([[4 * 2.0, 3, 3], [3 * 2.0, 4, 4], [10 * 2.0, 10, 10]])  # hit, duplicate, miss
    res = score_detections(pts, lab, scores=[0.9, 0.8, 0.7], spacing=sp)
    assert (res["tp"], res["fp"], res["fn"]) == (1, 2, 1)
    assert res["recall"] == 0.5 and res["precision"] == pytest.approx(1 / 3)
    ign = score_detections(pts, lab, scores=[0.9, 0.8, 0.7], spacing=sp, duplicates="ignore")
    assert (ign["tp"], ign["fp"]) == (1, 1)
    # bool masks are split into lesions
    assert score_detections(pts, lab > 0, spacing=sp)["n_reference"] == 2
    # threshold selects by score
    assert score_detections(pts, lab, scores=[0.9, 0.8, 0.7], spacing=sp, threshold=0.85)["fp"] == 0


def test_point_reference_greedy_by_score_and_froc() -> None:
    ref = np.array([[10.0, 10, 10], [30.0, 30, 30], [50.0, 50, 50]])
    det = np.array([[11.0, 10, 10], [30.0, 31, 30], [90.0, 0, 0], [49.0, 50, 50], [10.0, 11, 10]])
    sc = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    res = score_detections(det, ref, scores=sc, max_distance_mm=3.0)
    assert (res["tp"], res["fp"], res["fn"]) == (3, 2, 0)
    froc = res["froc"]
    assert [f["sensitivity"] for f in froc] == pytest.approx([1 / 3, 2 / 3, 2 / 3, 1.0, 1.0])
    assert [f["fp"] for f in froc] == [0, 0, 1, 1, 2]
    assert res["froc_points"][0.125] == pytest.approx(2 / 3) and res["froc_points"][1.0] == 1.0
    assert 0 < res["cpm"] <= 1
    per_lesion = score_detections(det, ref, scores=sc, reference_radii_mm=[0.5, 3.0, 3.0])
    assert per_lesion["tp"] == 2
    with pytest.raises(ValueError, match="max_distance_mm"):
        score_detections(det, ref)
    with pytest.raises(ValueError, match="spacing"):
        score_detections(det, np.zeros((5, 5, 5), bool))
