"""The per-slice fast paths of the ingest give exactly what the paths they shortcut give.

- data sets built from the reader's attribute templates carry the attributes pydicom's
  constructors give (and fall back to those constructors when the templates do not check out);
- their element keys are the process's canonical tags (what ``keyword_tag`` answers);
- the memoised split key equals the split key computed from the data set, whatever was read before;
- plane geometry read straight from raw bytes equals ``_floats(numbers(...))`` and the geometry
  check's verdict on the converted data set;
- ``_silenced`` nested in a block of its own adds nothing and still silences.
"""

from __future__ import annotations

import io
import warnings

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset

from storage.dicom import rawread, series
from storage.dicom.attrs import canonical_tag, keyword_tag, numbers
from storage.dicom.guard.common import _silenced
from tests.test_dicom_attrs import _vendor_files

VENDORS = ("ibsi_sts_ct_pet_mr_rtstruct", "nih_ge_siemens_epi_4d", "siemens_xa30i_t1w_classic", "sts_cohort")


def _reference_meta(elements):
    meta = FileMetaDataset(elements)
    meta.set_original_encoding(is_implicit_vr=False, is_little_endian=True, character_encoding="iso8859")
    return meta


@pytest.mark.parametrize("implicit", [True, False])
def test_built_data_sets_carry_pydicoms_attributes(implicit):
    assert rawread._templates() is not None  # the installed pydicom's constructors match the templates
    buf = io.BytesIO(b"\0" * 200)
    elements = {canonical_tag(0x00080060): RawDataElement(canonical_tag(0x00080060), "CS", 2, b"CT", 0, False, True)}
    meta_elements = {canonical_tag(0x00020010): RawDataElement(canonical_tag(0x00020010), "UI", 2, b"1 ", 0, False,
                                                                True)}
    ref = FileDataset(buf, elements, b"\1" * 128, _reference_meta(meta_elements), implicit, True)
    a = rawread._new_file_dataset(buf, elements, b"\1" * 128, rawread._new_meta(meta_elements), implicit)
    b = rawread._new_file_dataset(buf, dict(elements), b"\1" * 128, rawread._new_meta(dict(meta_elements)), implicit)
    for new in (a, b):
        assert type(new) is FileDataset and type(new.file_meta) is FileMetaDataset
        assert list(vars(new)) == list(vars(ref)) and list(vars(new.file_meta)) == list(vars(ref.file_meta))
        assert rawread._attributes(new) == rawread._attributes(ref)
        assert rawread._attributes(new.file_meta) == rawread._attributes(ref.file_meta)
        assert new.buffer is buf and new.is_implicit_VR is implicit and new.Modality == "CT"
        assert new.file_meta.TransferSyntaxUID == "1"
    # nothing mutable is shared between two data sets (or with the templates)
    for name, value in vars(a).items():
        if isinstance(value, dict | list | set) and name != "_dict":
            assert value is not vars(b)[name] and value is not rawread._templates()[2][name], name
    a._private_blocks[(9, "x")] = None
    assert not b._private_blocks and not rawread._templates()[2]["_private_blocks"]


def test_reader_falls_back_to_pydicoms_constructors(shared_data, monkeypatch):
    """Without templates (a pydicom whose constructors differ), the same data sets, built by pydicom."""
    from tests.test_rawread import _described

    files = [p for p in sorted((shared_data / "sts_cohort" / "dicom" / "STS_003").rglob("*.dcm"))[::20]]
    fast = [rawread.dataset_from_bytes(p.read_bytes()) for p in files]
    monkeypatch.setattr(rawread, "_templates", lambda: None)
    slow = [rawread.dataset_from_bytes(p.read_bytes()) for p in files]
    assert len(files) >= 5
    for f, s in zip(fast, slow, strict=True):
        assert list(vars(f)) == list(vars(s)) and rawread._attributes(f) == rawread._attributes(s)
        assert _described(f) == _described(s)


def test_element_keys_are_canonical_tags(shared_data):
    path = sorted((shared_data / "sts_cohort" / "dicom" / "STS_003" / "CT").rglob("*.dcm"))[0]
    ds = rawread.dataset_from_bytes(path.read_bytes())
    assert all(key is canonical_tag(int(key)) for key in ds._dict)
    assert keyword_tag("Rows") is canonical_tag(0x00280010) and keyword_tag("not_a_keyword") is None
    assert any(key is keyword_tag("Rows") for key in ds._dict)


def test_split_key_memo_equals_the_split_key(shared_data):
    """Every vendor's image files, each read fresh: the memoised key equals the key computed from the data set."""
    from storage.dicom.scan import classify

    series._SPLIT_KEYS.clear()
    checked = 0
    for _path, fresh, reference in _vendor_files(shared_data, VENDORS):
        if classify(reference) != "image":
            continue
        with _silenced():
            memo = series._split_key(fresh)
            assert memo == series._split_key_of(reference), _path.name
            assert series._split_key(fresh) == memo  # (a hit, or computed again when an element was converted)
        checked += 1
    assert checked >= 100 and 0 < len(series._SPLIT_KEYS) < checked


def _geometry_file(tmp_path, keyword: str, raw: bytes, *, implicit: bool, vr: str = "DS") -> bytes:
    padded = raw if len(raw) % 2 == 0 else raw + b" "
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5"
    ds.Rows, ds.Columns = 2, 2
    ds.add_new(keyword_tag(keyword), "DS", "7" * len(padded) if padded else "")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian if implicit else \
        pydicom.uid.ExplicitVRLittleEndian
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(out, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    data = out.getvalue()
    if padded:
        assert data.count(b"7" * len(padded)) == 1
        data = data.replace(b"7" * len(padded), padded)
    if vr != "DS":  # another explicit VR in the element's header
        tag = int(keyword_tag(keyword))
        header = (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little")
        assert not implicit and data.count(header + b"DS") == 1
        data = data.replace(header + b"DS", header + vr.encode())
    return data


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize("keyword, n", [("ImagePositionPatient", 3), ("ImageOrientationPatient", 6),
                                        ("PixelSpacing", 2)])
@pytest.mark.parametrize("raw", [b"1.5\\-2\\3.25", b"1\\0\\0\\0\\1\\0", b"0.5\\0.5", b"1e2\\2\\3", b"1\\2",
                                 b"1\\2\\3\\4\\5\\6\\7", b"1.5\\\\3", b"abc\\1\\2", b"", b"  ",
                                 b"1e999\\0\\0", b"+1.\\.5\\-0", b"1" * 301, b"\\".join([b"1" * 149] * 2),
                                 b"1.5\x00\\2\\3"])
def test_plane_geometry_from_raw_bytes(tmp_path, implicit, keyword, n, raw):
    data = _geometry_file(tmp_path, keyword, raw, implicit=implicit)
    with _silenced():
        fresh = rawread.dataset_from_bytes(data)
        reference = pydicom.dcmread(io.BytesIO(data))
        want = series._floats(numbers(reference, keyword), n)
        assert series._plane_floats(fresh, keyword, n) == want
        verdict = series.unreadable_geometry(fresh)
        for _ in reference:  # every element converted: the checks' slow path only
            pass
        assert verdict == series.unreadable_geometry(reference)


@pytest.mark.parametrize("vr", ["US", "AT", "FD"])
def test_plane_geometry_with_another_vr_is_unreadable(tmp_path, vr):
    data = _geometry_file(tmp_path, "ImagePositionPatient", b"\x01\x00\x02\x00\x03\x00\x04\x00", implicit=False, vr=vr)
    with _silenced():
        fresh = rawread.dataset_from_bytes(data)
        assert series.unreadable_geometry(fresh) == "ImagePositionPatient"


def test_nested_silenced_adds_nothing_and_still_silences(recwarn):
    import storage.dicom.guard.common as common

    entered = []
    real = warnings.catch_warnings

    class Counting(real):
        def __enter__(self):
            entered.append(1)
            return super().__enter__()

    warnings.catch_warnings = Counting
    try:
        with _silenced():
            assert common._quiet.active
            with _silenced():
                warnings.warn("inner", UserWarning, stacklevel=1)
            assert common._quiet.active
            warnings.simplefilter("always")  # a block that changed the filters: the next one installs its own
            with _silenced():
                warnings.warn("after", UserWarning, stacklevel=1)
    finally:
        warnings.catch_warnings = real
    warnings.warn("outside", UserWarning, stacklevel=1)
    assert len(entered) == 2 and [str(w.message) for w in recwarn] == ["outside"]
    assert not getattr(common._quiet, "active", False)


@pytest.mark.parametrize("digest", ["A" * 64, "a" * 63, "a" * 65, "a" * 64 + "\n", "g" * 64, 7])
def test_inspect_file_names_a_malformed_digest(digest):
    from storage.dicom.guard import GuardLimits, inspect_file

    with pytest.raises(ValueError, match="sha256 must be 64 lowercase hex digits"):
        inspect_file("x.dcm", limits=GuardLimits(), sha256=digest, data=b"\0" * 200)
    assert inspect_file("x.dcm", limits=GuardLimits(), sha256="0a" * 32, data=b"\0" * 200).sha256 == "0a" * 32
