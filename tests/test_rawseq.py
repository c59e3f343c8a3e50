"""storage.dicom.rawseq: sequence items read from the bytes equal pydicom's items, element by element.

The oracle is ``pydicom.dcmread`` of the same bytes: every element of every item, nested
sequences included, gives the same value (and type) through :meth:`RawItem.get` as through
``Dataset.get``; where the bytes are not in the layout the reader handles, it hands over to pydicom.
"""

from __future__ import annotations

import io
import warnings

import pydicom
import pytest
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from storage.dicom.rawread import dataset_from_bytes
from storage.dicom.rawseq import RawItem, sequence_items
from storage.dicom.rtstruct import contour_points

SEQUENCES = ("ReferencedFrameOfReferenceSequence", "StructureSetROISequence", "ROIContourSequence",
             "RTROIObservationsSequence")


def _same_items(got: list, want, path: str = "") -> int:
    """Assert ``got`` (RawItem or Dataset items) equals pydicom's ``want`` items; the number of values compared."""
    want = list(want or [])
    assert len(got) == len(want), path
    n = 0
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        tags = [t for t in w.keys()]
        if isinstance(g, RawItem):
            assert sorted(g.tags()) == sorted(tags), f"{path}[{k}]"
        for tag in tags:
            kw = keyword_for_tag(tag)
            if not kw:
                continue
            gv, wv = g.get(kw), w.get(kw)
            if isinstance(wv, Sequence):
                n += _same_items(gv, wv, f"{path}[{k}].{kw}")
            else:
                assert type(gv) is type(wv) and gv == wv, (f"{path}[{k}].{kw}", gv, wv)
                n += 1
    return n


def _rtstructs(shared):
    files = sorted(shared.glob("sts_cohort/dicom/STS_0*/*/mask/*.dcm"))
    files += sorted(p for p in (shared / "ibsi_sts_ct_pet_mr_rtstruct").rglob("*") if p.is_file())
    out = []
    for p in files:
        data = p.read_bytes()
        if data[128:132] == b"DICM" and b"1.2.840.10008.5.1.4.1.1.481.3" in data[:4096]:
            out.append((p, data))
    return out


def test_rtstruct_items_equal_pydicom(shared_data):
    """Every RTSTRUCT in the shared data: all items of its sequences, every value, as pydicom reads them."""
    files = _rtstructs(shared_data)
    assert len(files) >= 78
    compared = raw_items = 0
    for p, data in files:
        ds, ref = dataset_from_bytes(data), pydicom.dcmread(io.BytesIO(data))
        for kw in SEQUENCES:
            got = sequence_items(ds, kw)
            raw_items += sum(isinstance(i, RawItem) for i in got)
            compared += _same_items(got, ref.get(kw), f"{p.name}:{kw}")
        # the data set itself is left as it was: the sequences are still encoded
        assert all(type(ds._dict[ref.data_element(kw).tag]).__name__ == "RawDataElement"
                   for kw in SEQUENCES if kw in ref)
        for rc_got, rc_want in zip(sequence_items(ds, "ROIContourSequence"), ref.ROIContourSequence, strict=True):
            for c_got, c_want in zip(rc_got.get("ContourSequence") or [], rc_want.get("ContourSequence") or [],
                                     strict=True):
                assert contour_points(c_got).tobytes() == contour_points(c_want).tobytes()
    assert raw_items >= 4 * len(files) and compared > 10_000, (raw_items, compared)


def _structure_set(*, undefined: bool, charset_in_item: bool = False, implicit: bool = False) -> Dataset:
    """A small RT Structure Set with two ROIs, nested contour and image references."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.481.3", "1.2.3.9"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    image = Dataset()
    image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5"
    series = Dataset()
    series.SeriesInstanceUID = "1.2.3.4"
    series.ContourImageSequence = Sequence([image, image])
    study = Dataset()
    study.ReferencedSOPInstanceUID = "1.2.3"
    study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = "1.2.3.7"
    frame.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    rois, contours = [], []
    for n, name in ((1, "GTV tumour"), (2, "Läsion\\2")):  # Latin-1 text, a backslash (two LO values)
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = n, name, "1.2.3.7"
        if charset_in_item:
            roi.SpecificCharacterSet = "ISO_IR 192"
        rois.append(roi)
        c = Dataset()
        c.ContourGeometricType, c.NumberOfContourPoints = "CLOSED_PLANAR", 3
        c.ContourData = ["1.5", "-2", "3e1", "4", "5.25", "30", "7", "8", "30"]
        c.ContourImageSequence = Sequence([image])
        rc = Dataset()
        rc.ReferencedROINumber, rc.ROIDisplayColor = n, [255, 0, 0]
        rc.ContourSequence = Sequence([c, c])
        contours.append(rc)
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(contours)
    ds.RTROIObservationsSequence = Sequence([])
    if undefined:
        for elem in ds.iterall():
            if elem.VR == "SQ":
                elem.value.is_undefined_length = True
                for item in elem.value:
                    item.is_undefined_length_sequence_item = True
    return ds


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize("undefined", [True, False])
def test_synthetic_items_equal_pydicom(tmp_path, implicit, undefined):
    """Implicit and explicit VR, defined- and undefined-length sequences and items, nested three deep."""
    ds = _structure_set(undefined=undefined, implicit=implicit)
    path = tmp_path / "rs.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    fresh, ref = dataset_from_bytes(data), pydicom.dcmread(path)
    assert fresh is not None
    for kw in SEQUENCES:
        got = sequence_items(fresh, kw)
        assert all(isinstance(i, RawItem) for i in got), kw
        _same_items(got, ref.get(kw), kw)
    roi = sequence_items(fresh, "StructureSetROISequence")[1]
    assert list(roi.get("ROIName")) == ["Läsion", "2"]  # read by pydicom from the item's raw elements
    assert "ROIName" in roi and "ContourData" not in roi and roi.get("ContourData", 7) == 7
    contour = sequence_items(fresh, "ROIContourSequence")[0].get("ContourSequence")[0]
    assert contour_points(contour).tolist() == [[1.5, -2.0, 30.0], [4.0, 5.25, 30.0], [7.0, 8.0, 30.0]]


@pytest.mark.parametrize("undefined", [True, False])
def test_nested_sequences_are_parsed_once(tmp_path, monkeypatch, undefined):
    """Items read through with their parent (undefined length) or on the first ``get`` are kept: no sequence's
    bytes are parsed twice, however often and from however deep its items are asked for."""
    import storage.dicom.rawseq as rawseq

    ds = _structure_set(undefined=undefined)
    path = tmp_path / "rs.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path, enforce_file_format=True)
    fresh, ref = dataset_from_bytes(path.read_bytes()), pydicom.dcmread(path)
    parsed: list[int] = []
    real = rawseq._items

    def counted(data, pos, end, **kw):
        parsed.append(kw["base"] + pos)  # the absolute offset of the sequence value
        return real(data, pos, end, **kw)

    monkeypatch.setattr(rawseq, "_items", counted)
    for kw in SEQUENCES:
        got = sequence_items(fresh, kw)
        for _ in range(2):  # asked for twice: the second time from the kept items
            _same_items(got, ref.get(kw), kw)
    assert parsed and len(parsed) == len(set(parsed)), sorted(parsed)
    # the kept items are handed out as a list of the caller's own
    rc = sequence_items(fresh, "ROIContourSequence")[0]
    first = rc.get("ContourSequence")
    first.clear()
    assert len(rc.get("ContourSequence")) == 2


def test_item_with_its_own_character_set(tmp_path):
    """An item carrying SpecificCharacterSet: its values are read by pydicom, with that character set."""
    ds = _structure_set(undefined=True, charset_in_item=True)
    path = tmp_path / "cs.dcm"
    ds.save_as(path, enforce_file_format=True)
    fresh, ref = dataset_from_bytes(path.read_bytes()), pydicom.dcmread(path)
    _same_items(sequence_items(fresh, "StructureSetROISequence"), ref.StructureSetROISequence)


def test_unusual_layouts_are_left_to_pydicom(tmp_path):
    """Bytes outside the layout read here: pydicom's own items (the same values), never an error of ours."""
    ds = _structure_set(undefined=False)
    path = tmp_path / "u.dcm"
    ds.save_as(path, enforce_file_format=True)
    data = bytearray(path.read_bytes())
    fresh = dataset_from_bytes(bytes(data))
    elem = fresh._dict[pydicom.tag.Tag("StructureSetROISequence")]
    # the first item's first element written in implicit VR inside the explicit data set (pydicom switches for it)
    value = bytearray(elem.value)
    first = value[8:16]
    assert first[4:6] == b"IS"
    length = int.from_bytes(first[6:8], "little")
    value[8:16] = first[:4] + length.to_bytes(4, "little")
    fresh._dict[elem.tag] = elem._replace(value=bytes(value))
    items = sequence_items(fresh, "StructureSetROISequence")
    assert items and not isinstance(items[0], RawItem)
    assert int(items[0].ROINumber) == 1
    # an empty sequence
    assert sequence_items(fresh, "RTROIObservationsSequence") == []
    assert sequence_items(fresh, "DirectoryRecordSequence") == []  # absent


def defined_lengths(ds) -> None:
    """Mark every sequence and item of ``ds`` (nested too) for writing with defined lengths (in place)."""
    for elem in ds.iterall():
        if elem.VR == "SQ":
            elem.value.is_undefined_length = False
            for item in elem.value:
                item.is_undefined_length_sequence_item = False


def _outcome(ds, volumes):
    """What rasterising a structure set gives: masks (name, digest, meta) and rejections, or the exception type."""
    import hashlib

    from storage.dicom.rtstruct import rasterise_rtstruct

    try:
        masks, rejections = rasterise_rtstruct(ds, volumes, sha256="0" * 64)
    except Exception as exc:  # noqa: BLE001 - the same failure on both sides is agreement
        return ("raises", type(exc).__name__)
    return ([(m.roi_name, hashlib.sha256(m.mask.tobytes()).hexdigest(), sorted(m.meta.items())) for m in masks],
            sorted((r.reason, r.detail) for r in rejections))


def test_damaged_structure_sets_read_as_pydicom_reads_them(shared_data, monkeypatch):
    """Seeded damage to real RTSTRUCT bytes (bit flips, zeroed runs, bad item lengths, truncation): rasterising with
    the raw items gives exactly what it gives with pydicom's own items (masks, meta, rejections, or the same error)."""
    import random
    import re

    import storage.dicom.rawseq as rawseq
    from storage.dicom import collect_files

    patient = shared_data / "sts_cohort" / "dicom" / "STS_003"
    volumes = collect_files(sorted(patient.glob("CT/image/*.dcm"))).volumes
    donors = [p.read_bytes() for p in sorted(patient.glob("CT/mask/*.dcm"))]
    assert donors and volumes
    # the same structure set with defined-length sequences and items: the top-level reader keeps those encoded
    # without walking them, so their damage is met by the item reader itself
    ds = pydicom.dcmread(io.BytesIO(donors[0]))
    defined_lengths(ds)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    donors.append(buf.getvalue())
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian  # and in explicit VR (VRs to damage)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    donors.append(buf.getvalue())
    rng = random.Random(20261204)
    # element headers of the RT groups (3006,xxxx) inside the sequences, where damage meets the item reader
    headers = [[m.start() for m in re.finditer(rb"\x06\x30", d) if 300 < m.start() < len(d) - 16] for d in donors]
    compared = raw_read = 0
    for k in range(480):
        d = k % len(donors)
        b = bytearray(donors[d])
        kind = k % 5
        if kind == 0:  # bits of an element header (tag, VR, length)
            m = rng.choice(headers[d])
            for _ in range(rng.randint(1, 2)):
                b[m + rng.randrange(8)] ^= 1 << rng.randrange(8)
        elif kind == 1:  # a zeroed run from an element header on
            m = rng.choice(headers[d])
            n = rng.choice((4, 8, 16))
            b[m:m + n] = bytes(n)
        elif kind == 2:  # an item's length
            items = [m for m in range(300, len(b) - 8) if b[m:m + 4] == b"\xfe\xff\x00\xe0"]
            m = rng.choice(items)
            b[m + 4:m + 8] = rng.randrange(0, 5000).to_bytes(4, "little")
        elif kind == 3:
            b = b[:rng.randrange(300, len(b))]
        else:  # anywhere (mostly contour text)
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(300, len(b))
                b[i] ^= 1 << rng.randrange(8)
        data = bytes(b)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if dataset_from_bytes(data) is None:
                continue  # not in the layout the raw readers handle at all: pydicom reads it in both cases
            fast = _outcome(dataset_from_bytes(data), volumes)
            elem = dataset_from_bytes(data)._dict[pydicom.tag.Tag("ROIContourSequence")]
            raw_read += rawseq._parse(elem, ["iso8859"]) is not None  # read by the item reader, not handed over
            with monkeypatch.context() as m:
                m.setattr(rawseq, "_parse", lambda elem, encoding: None)  # every sequence through pydicom
                reference = _outcome(dataset_from_bytes(data), volumes)
        assert fast == reference, (k, kind)
        compared += 1
    assert compared > 120 and raw_read > 100, (compared, raw_read)  # the rest: declined by the top-level reader
