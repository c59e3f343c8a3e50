"""Segmentation and metrics on the real IBSI soft-tissue-sarcoma reference volumes (fast, robust assertions only)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from imaging import metrics as M
from imaging import segment as S


def _load(shared_data: pathlib.Path, patient: str, modality: str) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    from storage.images import read_image

    root = shared_data / "ibsi_sts_ct_pet_mr_rtstruct" / "nifti" / patient
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    img = read_image(root / f"{modality}_image.nii.gz")
    ref = read_image(root / f"{modality}_mask.nii.gz")
    return np.asarray(img.volume, np.float32), np.asarray(ref.volume) > 0, tuple(float(s) for s in img.spacing)


def _region(ref: np.ndarray, spacing: tuple[float, ...], margin_mm: float = 10.0) -> np.ndarray:
    idx = np.argwhere(ref)
    pad = np.ceil(margin_mm / np.asarray(spacing)).astype(int)
    lo = np.maximum(idx.min(axis=0) - pad, 0)
    hi = np.minimum(idx.max(axis=0) + 1 + pad, ref.shape)
    roi = np.zeros(ref.shape, bool)
    roi[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return roi


@pytest.mark.parametrize("patient", ["STS_008", "STS_025"])
def test_pet_isocontour_against_reference(shared_data: pathlib.Path, patient: str) -> None:
    pet, ref, sp = _load(shared_data, patient, "PET")
    seg40 = S.pet_isocontour(pet, fraction=0.4, roi=_region(ref, sp))
    seg50 = S.pet_isocontour(pet, fraction=0.5, roi=_region(ref, sp))
    d40 = M.dice(seg40, ref)
    assert d40 > 0.6  # measured 0.72 / 0.77
    assert M.hausdorff95(seg40, ref, spacing=sp) < 15.0  # mm; measured 7.4 / 7.6 (PET voxels are 3.3-4.7 mm)
    assert seg50.sum() < seg40.sum()  # a higher fraction of SUVmax gives a smaller volume
    assert M.volume_difference(seg50, ref, spacing=sp) < M.volume_difference(seg40, ref, spacing=sp)


def test_ct_region_growing_metrics_run(shared_data: pathlib.Path) -> None:
    ct, ref, sp = _load(shared_data, "STS_025", "CT")
    idx = np.argwhere(ref)
    seed = tuple(int(v) for v in idx[np.argmin(((idx - idx.mean(axis=0)) ** 2).sum(axis=1))])
    vals = ct[ref]
    lo, hi = np.percentile(vals, [5, 95])
    seg = np.asarray(S.region_grow(np.where(_region(ref, sp), ct, np.nan), seeds=[seed], lower=lo, upper=hi))
    assert seg[seed]
    d = M.dice(seg, ref)
    hd = M.hausdorff95(seg, ref, spacing=sp)
    assert 0.0 < d <= 1.0 and np.isfinite(hd) and hd >= 0.0
