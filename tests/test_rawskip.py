"""Where an undefined-length value ends (:mod:`storage.dicom.rawskip`), against pydicom and a plain Python reader.

Two oracles: pydicom's ``dcmread`` (the reader must build the data set it builds, so a sequence cut
anywhere else shows as different elements) and the pure-Python skip the compiled one replaced
(kept below, statement for statement). Donors: nested undefined-length sequences in implicit and
explicit VR, an implicit-VR item inside an explicit data set, encapsulated pixel data; then
seeded damage to item/delimiter tags, lengths, VRs and truncation.
"""

from __future__ import annotations

import io
import random
import struct

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from storage.dicom.guard.common import _silenced
from storage.dicom.rawread import dataset_from_bytes
from storage.dicom.rawskip import skip_items
from tests.test_rawread import _described

_LONG = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


class _Unusual(Exception):
    pass


def _is_vr(vr: bytes) -> bool:
    return 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B


def _py_items(data: bytes, pos: int, implicit: bool, depth: int) -> int:
    end = len(data)
    while True:
        if pos + 8 > end:
            raise _Unusual
        group, elem, length = struct.unpack_from("<HHL", data, pos)
        tag, pos = group << 16 | elem, pos + 8
        if tag == 0xFFFEE0DD:
            return pos
        if tag != 0xFFFEE000:
            raise _Unusual
        if length == 0xFFFFFFFF:
            pos = _py_dataset(data, pos, implicit, depth + 1)
        else:
            pos += length
            if pos > end:
                raise _Unusual


def _py_dataset(data: bytes, pos: int, implicit: bool, depth: int) -> int:
    if depth > 64:
        raise _Unusual
    end = len(data)
    if not implicit and pos + 6 <= end and not _is_vr(data[pos + 4:pos + 6]):
        implicit = True
    while True:
        if pos + 8 > end:
            raise _Unusual
        if implicit:
            group, elem, length = struct.unpack_from("<HHL", data, pos)
            hlen = 8
        else:
            group, elem, vr, length = struct.unpack_from("<HH2sH", data, pos)
            hlen = 8
            if not _is_vr(vr):
                group, elem, length = struct.unpack_from("<HHL", data, pos)
            elif vr in _LONG:
                if pos + 12 > end:
                    raise _Unusual
                length = struct.unpack_from("<L", data, pos + 8)[0]
                hlen = 12
        pos += hlen
        if group << 16 | elem == 0xFFFEE00D:
            return pos
        if group == 0xFFFE:
            raise _Unusual
        if length == 0xFFFFFFFF:
            pos = _py_items(data, pos, implicit, depth)
        else:
            pos += length
            if pos > end:
                raise _Unusual


def _reference(data: bytes, pos: int, implicit: bool) -> int:
    try:
        return _py_items(data, pos, implicit, 0)
    except (_Unusual, struct.error):
        return -1


def _nested(implicit: bool) -> bytes:
    """A structure-set-like file: sequences three levels deep, undefined lengths throughout."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.481.3", "1.2.3.4"
    ds.Modality = "RTSTRUCT"
    images = Sequence([Dataset() for _ in range(3)])
    for i, item in enumerate(images):
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", f"1.2.3.{i}"
    series = Dataset()
    series.SeriesInstanceUID, series.ContourImageSequence = "1.2.3.9", images
    study = Dataset()
    study.ReferencedSOPInstanceUID, study.RTReferencedSeriesSequence = "1.2.3.8", Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID, frame.RTReferencedStudySequence = "1.2.3.7", Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    contour = Dataset()
    contour.ContourGeometricType, contour.NumberOfContourPoints = "CLOSED_PLANAR", 3
    contour.ContourData = ["0", "0", "0", "10.5", "0", "0", "0", "10.25", "0"]
    # every long-header VR (12-byte explicit header) inside an item
    values = {"SV": -5, "UV": 7, "UC": "text", "UT": "text", "UR": "http://x"}
    for k, vr in enumerate(("OB", "OD", "OF", "OL", "OV", "OW", "SV", "UV", "UC", "UR", "UT", "UN")):
        contour.add_new(0x00091010 + k, vr, values.get(vr, bytes(range(1, 9))))
    contour.add_new(0x00090010, "LO", "MEDFLOW")
    roi = Dataset()
    roi.ReferencedROINumber, roi.ContourSequence = 1, Sequence([contour, contour])
    ds.ROIContourSequence = Sequence([roi])
    ds.SeriesDescription = "after the sequences"
    for elem in ds.iterall():
        if elem.VR == "SQ":
            elem.is_undefined_length = True
            for item in elem.value:
                item.is_undefined_length_sequence_item = True
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian if implicit else \
        pydicom.uid.ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _implicit_item_in_explicit() -> bytes:
    """An explicit-VR file whose sequence item is written in implicit VR (pydicom reads such items so)."""
    explicit = _nested(False)
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = "1.2.3.5"
    inner.ReferencedFrameNumber = "1"
    # a value of 0x4241 bytes: its implicit length reads "AB" where an explicit header has its VR, so
    # only the item-level switch (the whole item implicit) ends it where pydicom does
    inner.add_new(0x00091001, "OB", bytes(0x4241))
    fp = pydicom.filebase.DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    pydicom.filewriter.write_dataset(fp, inner)
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + fp.getvalue() + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    seq = b"\x08\x00\x40\x11SQ\x00\x00\xff\xff\xff\xff" + item + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # (0008,1140)
    at = explicit.index(b"\x08\x00\x60\x00")  # before Modality (0008,0060): tag order kept
    return explicit[:at] + seq + explicit[at:]


def _encapsulated() -> bytes:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", "1.2.3.4"
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 8, 8, 7, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = pydicom.encaps.encapsulate([bytes(range(16))])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.RLELossless
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _undefined_values(data: bytes) -> list[tuple[int, bool]]:
    """(offset, implicit) of every candidate value start: just after an undefined length (0xFFFFFFFF)."""
    out, at = [], 0
    while (at := data.find(b"\xff\xff\xff\xff", at)) >= 0:
        out += [(at + 4, True), (at + 4, False)]
        at += 1
    return out


def test_skip_equals_the_python_reader_on_donors_and_damage():
    donors = [_nested(True), _nested(False), _implicit_item_in_explicit(), _encapsulated()]
    rng = random.Random(20261204)
    checked = ended = 0
    for k in range(1500):
        data = bytearray(donors[k % len(donors)])
        if k >= len(donors):
            kind = k % 4
            m = rng.choice([i for i in range(132, len(data) - 8) if data[i:i + 2] in (b"\xfe\xff", b"\x08\x00",
                                                                                         b"\x06\x30")])
            if kind == 0:
                data[m + rng.randrange(8)] ^= 1 << rng.randrange(8)
            elif kind == 1:
                data[m + 4:m + 8] = rng.choice((0, 2, 0xFFFFFFFF, rng.randrange(200))).to_bytes(4, "little")
            elif kind == 2:
                data[m:m + 4] = rng.choice((b"\xfe\xff\x00\xe0", b"\xfe\xff\x0d\xe0", b"\xfe\xff\xdd\xe0"))
            else:
                data = data[:rng.randrange(140, len(data))]
        data = bytes(data)
        for pos, implicit in _undefined_values(data):
            got, want = skip_items(data, pos, implicit=implicit), _reference(data, pos, implicit)
            assert got == want, (k, pos, implicit)
            checked += 1
            ended += got > 0
    assert checked > 5000 and ended > 500, (checked, ended)


def test_reader_with_compiled_skip_builds_dcmreads_data_set():
    donors = [_nested(True), _nested(False), _implicit_item_in_explicit(), _encapsulated()]
    rng = random.Random(7)
    compared = 0
    for k in range(400):
        data = bytearray(donors[k % len(donors)])
        if k >= len(donors):
            items = [i for i in range(132, len(data) - 8) if data[i:i + 2] == b"\xfe\xff"]
            m = rng.choice(items)
            if k % 2:
                data[m + 4:m + 8] = rng.choice((0, 0xFFFFFFFF, rng.randrange(120))).to_bytes(4, "little")
            else:
                data[m + 2 + rng.randrange(2)] ^= 1 << rng.randrange(8)
        data = bytes(data)
        with _silenced():
            ds = dataset_from_bytes(data)
            if ds is None:
                continue
            try:
                ref = pydicom.dcmread(io.BytesIO(data))
            except Exception as exc:  # noqa: BLE001
                raise AssertionError(f"the reader accepted bytes pydicom refuses ({type(exc).__name__})") from None
            assert _described(ds) == _described(ref), k
            compared += 1
    assert compared > 50, compared
