"""RTSTRUCT rasterisation against the IBSI STS reference voxel masks (Dice 1.0)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pydicom")

import pydicom  # noqa: E402

from storage.dicom.convert import convert_series  # noqa: E402
from storage.dicom.model import ConvertedVolume  # noqa: E402
from storage.dicom.rtstruct import rasterise_contours, rasterise_rtstruct  # noqa: E402
from storage.dicom.scan import scan  # noqa: E402
from storage.dicom.series import group_series  # noqa: E402
from storage.images import read_nifti  # noqa: E402


def _dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("patient", ["STS_008", "STS_025"])
@pytest.mark.parametrize("modality", ["CT", "PET", "MR_T1"])
def test_rtstruct_matches_reference_mask(shared_data, patient, modality):
    base = shared_data / "ibsi_sts_ct_pet_mr_rtstruct"
    entries, rej = scan(base / "dicom" / patient / modality / "image")
    assert rej == []
    vols = []
    for g in group_series(entries):
        vols += convert_series(g)[0]
    rs = pydicom.dcmread(base / "dicom" / patient / modality / "mask" / "RS.dcm")
    masks, rej = rasterise_rtstruct(rs, vols)
    assert rej == [] and len(masks) == 1
    m = masks[0]
    assert m.roi_name == f"GTV_Mass_{modality}"
    ref = read_nifti(base / "nifti" / patient / f"{modality}_mask.nii.gz")
    assert m.mask.shape == ref.volume.shape and m.mask.dtype == bool
    np.testing.assert_allclose(ref.affine, vols[0].affine, atol=0.01)
    assert _dice(m.mask, ref.volume > 0) == 1.0
    assert m.meta["contours_outside_volume"] == 0 and m.meta["reference_found_by"] == "referenced_series"


def test_xor_makes_holes_and_reference_fallbacks():
    aff = np.eye(4)
    outer = np.array([[1, 1, 2], [1, 8, 2], [8, 8, 2], [8, 1, 2]], dtype=float)  # x=col, y=row, z=slice (identity)
    # identity affine maps (slice,row,col)->(x,y,z): so LPS x is the slice index here; build points accordingly
    outer = outer[:, [2, 1, 0]]
    inner = np.array([[2, 3, 3], [2, 3, 6], [2, 6, 6], [2, 6, 3]], dtype=float)
    mask, stats = rasterise_contours([outer, inner], aff, (4, 10, 10))
    assert mask[2, 2, 2] and not mask[2, 4, 4] and mask[2].sum() == 64 - 16
    assert stats["n_contours"] == 2 and stats["contours_outside_volume"] == 0
    outside = outer.copy()
    outside[:, 0] = 9
    _, stats = rasterise_contours([outside], aff, (4, 10, 10))
    assert stats["contours_outside_volume"] == 1


def test_rtstruct_without_matching_volume_is_rejected(shared_data):
    base = shared_data / "ibsi_sts_ct_pet_mr_rtstruct" / "dicom" / "STS_008"
    rs = pydicom.dcmread(base / "CT" / "mask" / "RS.dcm")
    dummy = ConvertedVolume(volume=np.zeros((2, 2, 2)), affine=np.eye(4), spacing=(1, 1, 1), kind="3d", meta={},
                            series_uid="9.9.9", frame_of_reference_uid="9.9.9")
    masks, rej = rasterise_rtstruct(rs, [dummy], sha256="abc")
    assert masks == [] and [r.reason for r in rej] == ["rtstruct_reference_not_found"]
