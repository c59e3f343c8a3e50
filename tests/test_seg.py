"""DICOM SEG -> masks, with SEG objects built here (pydicom) from a real series and its reference mask."""

from __future__ import annotations

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.pixels import pack_bits  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from storage.dicom import collect_folder  # noqa: E402
from storage.dicom.convert import convert_series  # noqa: E402
from storage.dicom.scan import scan  # noqa: E402
from storage.dicom.seg import convert_seg  # noqa: E402
from storage.dicom.series import group_series  # noqa: E402
from storage.images import read_nifti  # noqa: E402

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def _item(**kw):
    d = Dataset()
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def build_seg(vol, segments: dict[str, np.ndarray], *, affine=None, fractional=False, only_nonempty=True):
    """A SEG whose frames lie on the grid ``affine`` (default: the volume's); segments are [k, r, c] arrays."""
    affine = vol.affine if affine is None else affine
    shape = next(iter(segments.values())).shape
    ps0, ps1 = np.linalg.norm(affine[:3, 1]), np.linalg.norm(affine[:3, 2])
    iop = np.r_[affine[:3, 2] / ps1, affine[:3, 1] / ps0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SEG_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = SEG_CLASS, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "SEG", generate_uid(), generate_uid()
    ds.FrameOfReferenceUID = vol.frame_of_reference_uid
    ds.Rows, ds.Columns = shape[1], shape[2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    ds.SegmentationType = "FRACTIONAL" if fractional else "BINARY"
    if fractional:
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.MaximumFractionalValue = 255
        ds.SegmentationFractionalType = "PROBABILITY"
    else:
        ds.BitsAllocated = ds.BitsStored = 1
        ds.HighBit = 0
    ds.ReferencedSeriesSequence = Sequence([_item(SeriesInstanceUID=vol.series_uid, ReferencedInstanceSequence=Sequence(
        [_item(ReferencedSOPClassUID="1.2.840.10008.5.1.4.1.1.2", ReferencedSOPInstanceUID=u)
         for u in vol.instance_uids]))])
    ds.SegmentSequence = Sequence([_item(SegmentNumber=i + 1, SegmentLabel=name, SegmentAlgorithmType="MANUAL")
                                   for i, name in enumerate(segments)])
    ds.SharedFunctionalGroupsSequence = Sequence([_item(
        PlaneOrientationSequence=Sequence([_item(ImageOrientationPatient=[float(v) for v in iop])]),
        PixelMeasuresSequence=Sequence([_item(PixelSpacing=[float(ps0), float(ps1)],
                                              SliceThickness=float(np.linalg.norm(affine[:3, 0])))]))])
    per, frames = [], []
    for i, (_, arr) in enumerate(segments.items()):
        for k in range(arr.shape[0]):
            if only_nonempty and not arr[k].any():
                continue
            ipp = affine[:3, 0] * k + affine[:3, 3]
            per.append(_item(PlanePositionSequence=Sequence([_item(ImagePositionPatient=[float(v) for v in ipp])]),
                             SegmentIdentificationSequence=Sequence([_item(ReferencedSegmentNumber=i + 1)]),
                             FrameContentSequence=Sequence([_item(DimensionIndexValues=[i + 1, k + 1])])))
            frames.append(arr[k])
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    ds.NumberOfFrames = len(frames)
    stack = np.stack(frames)
    if fractional:
        ds.PixelData = stack.astype(np.uint8).tobytes()
    else:
        ds.PixelData = pack_bits(stack.astype(np.uint8).ravel())
    return ds


@pytest.fixture(scope="module")
def ct_and_mask(shared_data):
    base = shared_data / "ibsi_sts_ct_pet_mr_rtstruct"
    entries, _ = scan(base / "dicom" / "STS_008" / "CT" / "image")
    (g,) = group_series(entries)
    (vol,) = convert_series(g)[0]
    ref = read_nifti(base / "nifti" / "STS_008" / "CT_mask.nii.gz").volume > 0
    assert ref.shape == vol.volume.shape
    return vol, ref


def test_binary_seg_same_grid_exact(ct_and_mask, tmp_path):
    vol, ref = ct_and_mask
    box = np.zeros_like(ref)
    box[10:20, 30:60, 40:90] = True
    ds = build_seg(vol, {"tumour": ref, "box": box})
    p = tmp_path / "seg.dcm"
    ds.save_as(p, enforce_file_format=True)
    masks, rej = convert_seg(pydicom.dcmread(p), [vol])
    assert rej == [] and [m.roi_name for m in masks] == ["tumour", "box"]
    np.testing.assert_array_equal(masks[0].mask, ref)
    np.testing.assert_array_equal(masks[1].mask, box)
    assert not masks[0].meta["resampled"] and masks[0].source == "seg"


def test_seg_on_coarser_shifted_grid_is_resampled_by_position(ct_and_mask):
    vol, ref = ct_and_mask
    # SEG pixels 2x larger in-plane, centred on 2x2 blocks of the CT grid, covering slices 5.. only
    aff = vol.affine.copy()
    aff[:3, 1] *= 2
    aff[:3, 2] *= 2
    aff[:3, 3] = vol.affine[:3, 3] + 0.5 * vol.affine[:3, 1] + 0.5 * vol.affine[:3, 2] + 5 * vol.affine[:3, 0]
    k, r, c = ref.shape
    small = ref[5:, : r // 2 * 2 : 2, : c // 2 * 2 : 2]
    masks, rej = convert_seg(build_seg(vol, {"coarse": small}, affine=aff), [vol])
    assert rej == [] and masks[0].meta["resampled"]
    expect = np.zeros_like(ref)
    rows = np.minimum(np.arange(r) // 2, small.shape[1] - 1)
    cols = np.minimum(np.arange(c) // 2, small.shape[2] - 1)
    expect[5:] = small[:, rows][:, :, cols]
    # voxels beyond the SEG's last row/column have no SEG pixel
    expect[:, small.shape[1] * 2:, :] = False
    expect[:, :, small.shape[2] * 2:] = False
    np.testing.assert_array_equal(masks[0].mask, expect)


def test_fractional_seg_threshold(ct_and_mask):
    vol, ref = ct_and_mask
    prob = np.where(ref, 200, 0).astype(np.uint8)
    prob[ref & (np.indices(ref.shape)[2] % 2 == 0)] = 100  # below 0.5 * 255
    masks, rej = convert_seg(build_seg(vol, {"p": prob}, fractional=True), [vol])
    assert rej == []
    np.testing.assert_array_equal(masks[0].mask, prob >= 127.5)
    assert masks[0].meta["segmentation_type"] == "FRACTIONAL"


def test_seg_without_reference_is_rejected(ct_and_mask):
    vol, ref = ct_and_mask
    ds = build_seg(vol, {"t": ref})
    ds.ReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3"
    ds.FrameOfReferenceUID = "1.2.3"
    for rs in ds.ReferencedSeriesSequence:
        rs.ReferencedInstanceSequence = Sequence([])
    masks, rej = convert_seg(ds, [vol], sha256="s")
    assert masks == [] and rej[0].reason == "seg_reference_not_found"


def test_collect_folder_reads_seg(shared_data, ct_and_mask, tmp_path):
    import shutil

    vol, ref = ct_and_mask
    src = shared_data / "ibsi_sts_ct_pet_mr_rtstruct" / "dicom" / "STS_008" / "CT" / "image"
    shutil.copytree(src, tmp_path / "in")
    build_seg(vol, {"tumour": ref}).save_as(tmp_path / "in" / "seg_object", enforce_file_format=True)
    res = collect_folder(tmp_path / "in")
    assert res.rejections == [] and len(res.volumes) == 1
    (m,) = res.masks
    np.testing.assert_array_equal(m.mask, ref)
