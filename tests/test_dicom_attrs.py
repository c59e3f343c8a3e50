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


def _vendor_files(shared_data, folders):
    """``(path, fresh, reference)`` for about 40 Part 10 files per folder: as the ingest reads them, and by pydicom."""
    from storage.dicom.rawread import dataset_from_bytes

    for folder in folders:
        files = sorted(p for p in (shared_data / folder).rglob("*") if p.is_file() and p.suffix.lower() in ("", ".dcm"))
        for path in files[::max(1, len(files) // 40)]:
            data = path.read_bytes()
            if data[128:132] == b"DICM":
                yield path, dataset_from_bytes(data) or pydicom.dcmread(path, force=True), pydicom.dcmread(path, force=True)


def test_attr_equals_dataset_get_on_vendor_files(shared_data):
    """Every vendor's files as the ingest reads them (rawread, else pydicom): same value, same type."""
    checked = 0
    for path, fresh, reference in _vendor_files(shared_data, ("ibsi_sts_ct_pet_mr_rtstruct", "nih_ge_siemens_epi_4d",
                                                              "siemens_xa30i_t1w_classic")):
        for kw in KEYWORDS:
            got, want = attr(fresh, kw, "absent"), reference.get(kw, "absent")
            assert type(got) is type(want) and got == want, (path.name, kw, got, want)
        checked += 1
    assert checked >= 60


DS_KEYWORDS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "RescaleSlope",
               "RescaleIntercept", "SliceLocation", "WindowCenter")


def _as_floats(value):
    """What ``float()`` of pydicom's converted DS value gives, shaped as :func:`numbers` returns it."""
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        return float(value)
    return tuple(float(v) for v in value)


def _check_numbers(fresh, reference, kw):
    from pydicom.dataelem import RawDataElement

    from storage.dicom.attrs import numbers

    got, want = numbers(fresh, kw, "absent"), reference.get(kw, "absent")
    if isinstance(got, float | tuple):  # read from the raw bytes: the same numbers, the element left raw
        assert _as_floats(want) == got and type(_as_floats(want)) is type(got), (kw, got, want)
        assert isinstance(fresh._dict[reference.data_element(kw).tag], RawDataElement)
        return True
    assert type(got) is type(want) and got == want, (kw, got, want)
    return False


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize("raw, fast", [(b"1.5", True), (b" -2.25e-3 \\+7\\.5 ", True), (b"0.5\\0.75\x00", True),
                                       (b"3. \x00 \x00", True), (b"1\\\\2", False), (b"1.5\\", False),
                                       (b"abc", False), (b"1e999", True), (b"", False), (b"  ", False),
                                       (b"1 .5", False), (b"1.5\x002", False), (b"0x10", False)])
def test_numbers_equals_float_of_dsfloat(tmp_path, implicit, raw, fast):
    """Synthetic DS values, well-formed or not: the raw path only for well-formed numbers, same floats."""
    import warnings

    padded = raw if len(raw) % 2 == 0 else raw + b" "
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5"
        ds.ImagePositionPatient = "7" * len(padded) if padded else ""  # placeholder, replaced by the raw bytes
        ds.Rows = 4  # not DS: attr's value
        path = tmp_path / "n.dcm"
        ds.save_as(path, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
        if padded:
            data = path.read_bytes()
            assert data.count(b"7" * len(padded)) == 1
            path.write_bytes(data.replace(b"7" * len(padded), padded))
        fresh, reference = pydicom.dcmread(path, force=True), pydicom.dcmread(path, force=True)
        assert _check_numbers(fresh, reference, "ImagePositionPatient") is fast
        assert _check_numbers(fresh, reference, "Rows") is False
        assert _check_numbers(fresh, reference, "SliceThickness") is False  # absent: the default


def test_numbers_respects_pydicom_ds_settings(tmp_path):
    """With pydicom set to numpy DS values, numbers() gives what pydicom gives (no raw path)."""
    from pydicom import config

    from storage.dicom.attrs import numbers

    ds = Dataset()
    ds.PixelSpacing = ["0.5", "0.75"]
    path = tmp_path / "s.dcm"
    ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=False)
    config.use_DS_numpy = True
    try:
        value = numbers(pydicom.dcmread(path, force=True), "PixelSpacing")
        assert not isinstance(value, tuple) and list(value) == [0.5, 0.75]
    finally:
        config.use_DS_numpy = False


def test_numbers_on_vendor_files(shared_data):
    """DS values of every vendor's files as the ingest reads them: the floats pydicom's DSfloat values give."""
    raw_reads = checked = 0
    for _path, fresh, reference in _vendor_files(shared_data, ("ibsi_sts_ct_pet_mr_rtstruct", "nih_ge_siemens_epi_4d",
                                                               "siemens_xa30i_t1w_classic", "sts_cohort")):
        for kw in DS_KEYWORDS:
            raw_reads += _check_numbers(fresh, reference, kw)
        checked += 1
    assert checked >= 80 and raw_reads >= 4 * checked


@pytest.mark.parametrize("text", ["1.2.840.10008.5.1.4.1.1.2", "1.2.3", "0.1", "1.02.3", "1.2.3.", " 1.2.3",
                                  "1.2.a", "9" * 65, "1..2", "", "2.25.123456789012345678901234567890"])
def test_uid_values_equal_pydicoms_every_time(tmp_path, text):
    """A valid UID is validated once and cached; an invalid one warns (or raises) on every read, as pydicom does."""
    import warnings

    from pydicom import config

    ds = Dataset()
    ds.SOPClassUID = "1.2"
    ds.add_new(0x0020000E, "UI", text)  # SeriesInstanceUID, any text
    path = tmp_path / "u.dcm"
    ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=False)
    for _ in range(2):
        with warnings.catch_warnings(record=True) as got_w:
            warnings.simplefilter("always")
            got = attr(pydicom.dcmread(path, force=True), "SeriesInstanceUID")
        with warnings.catch_warnings(record=True) as want_w:
            warnings.simplefilter("always")
            want = pydicom.dcmread(path, force=True).get("SeriesInstanceUID")
        assert type(got) is type(want) and got == want and getattr(got, "is_valid", 0) == getattr(want, "is_valid", 0)
        assert [str(w.message) for w in got_w] == [str(w.message) for w in want_w]
    previous = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.RAISE
    try:
        try:
            want = pydicom.dcmread(path, force=True).get("SeriesInstanceUID")
        except ValueError:
            with pytest.raises(ValueError):
                attr(pydicom.dcmread(path, force=True), "SeriesInstanceUID")
        else:
            assert attr(pydicom.dcmread(path, force=True), "SeriesInstanceUID") == want
    finally:
        config.settings.reading_validation_mode = previous
