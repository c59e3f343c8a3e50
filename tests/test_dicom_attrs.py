"""storage.dicom.attrs.attr returns what ``Dataset.get(keyword, default)`` returns, raw or converted."""

import pydicom
import pytest
from pydicom.dataset import Dataset

from storage.dicom.attrs import attr


def _read(tmp_path, implicit: bool) -> Dataset:
    ds = Dataset()
    ds.Rows, ds.Columns = 4, 5
    ds.PixelSpacing = ["0.5", "0.75"]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.SliceThickness = ""  # present, empty
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5"
    path = tmp_path / f"a{int(implicit)}.dcm"
    ds.save_as(path, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
    return pydicom.dcmread(path, force=True)


@pytest.mark.parametrize("implicit", [True, False])
def test_attr_equals_dataset_get(tmp_path, implicit):
    keywords = ("Rows", "Columns", "PixelSpacing", "ImageType", "SeriesInstanceUID", "SliceThickness",
                "ImagePositionPatient", "NumberOfFrames")
    fresh, reference = _read(tmp_path, implicit), _read(tmp_path, implicit)
    for kw in keywords:
        for default in (None, 0, "x"):
            got, want = attr(fresh, kw, default), reference.get(kw, default)  # raw first, then converted
            assert type(got) is type(want) and got == want, (kw, default)
            assert attr(fresh, kw, default) == want  # again, from the converted element
    assert attr(fresh, "not_a_keyword", 7) == 7 and attr(fresh, "preamble") == fresh.preamble


KEYWORDS = ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
            "PlanarConfiguration", "NumberOfFrames", "Modality", "PhotometricInterpretation", "ImageType",
            "BurnedInAnnotation", "PatientPosition", "BodyPartExamined", "ScanOptions", "SOPClassUID",
            "SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
            "SliceThickness", "RescaleSlope", "RescaleIntercept", "EchoNumbers", "AcquisitionNumber",
            "InstanceNumber", "CorrectedImage", "Units", "SmallestImagePixelValue")


def test_attr_equals_dataset_get_on_vendor_files(shared_data):
    """Every vendor's files as the ingest reads them (rawread, else pydicom): same value, same type."""
    from storage.dicom.rawread import dataset_from_bytes

    folders = ("ibsi_sts_ct_pet_mr_rtstruct", "nih_ge_siemens_epi_4d", "siemens_xa30i_t1w_classic")
    checked = 0
    for folder in folders:
        files = sorted(p for p in (shared_data / folder).rglob("*") if p.is_file() and p.suffix.lower() in ("", ".dcm"))
        for path in files[::max(1, len(files) // 40)]:
            data = path.read_bytes()
            if data[128:132] != b"DICM":
                continue
            fresh = dataset_from_bytes(data) or pydicom.dcmread(path, force=True)
            reference = pydicom.dcmread(path, force=True)
            for kw in KEYWORDS:
                got, want = attr(fresh, kw, "absent"), reference.get(kw, "absent")
                assert type(got) is type(want) and got == want, (path.name, kw, got, want)
            checked += 1
    assert checked >= 60
