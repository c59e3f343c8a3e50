"""The compiled structural walk (:mod:`storage.dicom.guard.fastwalk`) against the guard's Python walk.

Wherever the compiled walk answers, its structure is the Python walk's (same summary, pixel data
span, fragments and decoded-attribute offsets), and it never answers where the Python walk rejects:
on every file in ``../shared/data``, in both little-endian encodings, and on seeded damage to the
element headers, lengths, items and delimiters of real files (implicit and explicit, with nested
sequences, encapsulated pixel data). Its table lists the top-level elements the reader of
:mod:`storage.dicom.rawread` finds, and that reader builds the same data set from it.
"""

from __future__ import annotations

import io
import pathlib
import random
import struct

import pydicom
import pytest

from storage.dicom.guard import fastwalk
from storage.dicom.guard.common import _dictionary_is_sq, _Reject
from storage.dicom.guard.structure import _read_meta, _walk
from storage.dicom.rawread import _elements, _elements_from_table, _meta, dataset_from_bytes
from tests.test_rawseq import defined_lengths


def _python(data: bytes, start: int, *, implicit: bool, max_depth: int = 32):
    try:
        return _walk(data, start, len(data), implicit=implicit, little=True, max_depth=max_depth)
    except _Reject as rej:
        return rej.reason
    except struct.error:  # pragma: no cover - the walk length-checks every header
        return "struct.error"


def _agree(data: bytes, start: int, *, implicit: bool, max_depth: int = 32) -> bool:
    """Assert the compiled walk agrees with the Python walk; True when it answered."""
    fast = fastwalk.walk_little_endian(data, start, len(data), implicit=implicit, max_depth=max_depth)
    ref = _python(data, start, implicit=implicit, max_depth=max_depth)
    if fast is None:
        return False
    assert not isinstance(ref, str), f"the compiled walk accepted what the Python walk rejects ({ref})"
    structure, top = fast
    assert structure == ref
    assert (structure.fragments, structure.values) == (ref.fragments, ref.values)
    assert len(top.tag) == ref.n_elements and top.start == start and top.end == ref.end
    return True


def _start(data: bytes) -> int:
    """Where the guard starts the data set: after the File Meta group (or 0 without a preamble)."""
    if data[128:132] != b"DICM":
        return 0
    fp = io.BytesIO(data)
    return _read_meta(fp, 132, len(data))[1]


def _files(shared: pathlib.Path) -> list[pathlib.Path]:
    files = [p for p in sorted(shared.rglob("*")) if p.is_file() and p.suffix.lower() not in
             (".md", ".csv", ".xlsx", ".json", ".txt", ".nii", ".gz", ".nrrd", ".py", ".yaml", ".npy", ".zip")]
    return [p for p in files if p.stat().st_size < 64 << 20]


def test_dictionary_lookup_is_pydicoms():
    from pydicom import datadict

    tags = [int(t) for t in datadict.DicomDictionary]
    tags += [0x50102600, 0x50FE2600, 0x50002600, 0x60000010, 0x60223000, 0x7F000010, 0x10010010, 0x00091001,
             0x50012600, 0x00000000, 0xFFFFFFFF, 0x7FE00010]
    rng = random.Random(3)
    tags += [rng.randrange(1 << 32) for _ in range(2000)]
    wrong = [hex(t) for t in tags if fastwalk.dictionary_is_sq(t) != _dictionary_is_sq(t)]
    assert not wrong
    assert sum(fastwalk.dictionary_is_sq(t) for t in tags) > 1000  # it does find sequences
    assert fastwalk.dictionary_is_sq(0x50102600) and not fastwalk.dictionary_is_sq(0x50112600)  # repeater, private


def test_every_real_file_walks_as_the_python_walk(shared_data):
    answered = rejected_both = 0
    for p in _files(shared_data):  # (declines only where the Python walk rejects, or past CAPACITY)
        data = p.read_bytes()
        if len(data) < 8:
            continue
        start = _start(data)
        for implicit in (True, False):
            if _agree(data, start, implicit=implicit):
                answered += 1
            else:
                rejected_both += isinstance(_python(data, start, implicit=implicit), str)
    assert answered > 4000 and rejected_both > 1000, (answered, rejected_both)


def _donors(shared: pathlib.Path) -> list[bytes]:
    sts = shared / "sts_cohort" / "dicom" / "STS_003"
    picks = [sorted((sts / "CT" / "image").glob("*.dcm"))[5], sorted((sts / "PET" / "image").glob("*.dcm"))[2],
             sorted((sts / "MR_T1" / "image").glob("*.dcm"))[1], sorted((sts / "CT" / "mask").glob("*.dcm"))[0]]
    donors = [p.read_bytes() for p in picks]
    # explicit-VR copies (nested sequences with VRs to damage), with defined- and undefined-length items
    for p in picks[2:]:
        ds = pydicom.dcmread(p)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        donors.append(buf.getvalue())
        defined_lengths(ds)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        donors.append(buf.getvalue())
    # encapsulated pixel data (fragments)
    ds = pydicom.dcmread(picks[0])
    ds.compress(pydicom.uid.RLELossless, encoding_plugin="pydicom")
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    donors.append(buf.getvalue())
    return donors


def test_damaged_headers_walk_as_the_python_walk(shared_data):
    """Seeded damage where the walk decides: element headers, item and delimiter tags and lengths, truncation."""
    donors = _donors(shared_data)
    rng = random.Random(20261204)
    answered = rejected = 0
    for k in range(2000):
        data = donors[k % len(donors)]
        start = _start(data)
        implicit = not (data[start + 4:start + 6].isalpha() and data[start + 4:start + 6].isupper())
        b = bytearray(data)
        marks = [m for m in range(start, min(len(b) - 8, start + 60000), 2)
                 if b[m:m + 2] in (b"\xfe\xff", b"\x08\x00", b"\x28\x00", b"\x06\x30", b"\xe0\x7f", b"\x05\x30")]
        kind = k % 6
        m = rng.choice(marks)
        if kind == 0:  # bits of a header (tag, VR, length)
            for _ in range(rng.randint(1, 3)):
                b[m + rng.randrange(8)] ^= 1 << rng.randrange(8)
        elif kind == 1:  # a length set to a random or boundary value
            v = rng.choice((0, 1, 2, 0xFFFFFFFF, 0xFFFF, rng.randrange(1 << 16), rng.randrange(1 << 32)))
            if rng.random() < 0.5:
                b[m + 4:m + 8] = v.to_bytes(4, "little")
            else:
                b[m + 6:m + 8] = (v & 0xFFFF).to_bytes(2, "little")
        elif kind == 2:  # a tag turned into an item, item delimiter or sequence delimiter
            b[m:m + 4] = rng.choice((b"\xfe\xff\x00\xe0", b"\xfe\xff\x0d\xe0", b"\xfe\xff\xdd\xe0"))
        elif kind == 3:  # truncation
            b = b[:rng.randrange(start, len(b))]
        elif kind == 4:  # a VR changed (to SQ, UN, OB, a lower-case pair, an undefined length)
            b[m + 4:m + 6] = rng.choice((b"SQ", b"UN", b"OB", b"OW", b"ob", b"\x00\x00", b"UT"))
        else:  # a zeroed run
            n = rng.choice((2, 4, 8, 12))
            b[m:m + n] = bytes(n)
        mutated = bytes(b)
        depth = rng.choice((1, 2, 3, 32))
        for enc in (implicit, not implicit):
            if _agree(mutated, start, implicit=enc, max_depth=depth):
                answered += 1
            else:  # and where it declines, the Python walk rejects (small files: no capacity limit met)
                assert isinstance(_python(mutated, start, implicit=enc, max_depth=depth), str), (k, kind)
                rejected += 1
    assert answered > 800 and rejected > 2500, (answered, rejected)


def test_table_builds_the_readers_data_set(shared_data):
    """The reader's elements from the table are the elements it unpacks itself; the data set is dcmread's."""
    from storage.dicom.guard import GuardLimits, inspect_file
    from tests.test_rawread import _described, _mutations, _real_files

    used = 0
    for data in [p.read_bytes() for p in _real_files(shared_data)] + _mutations(shared_data, n=120):
        insp = inspect_file("x.dcm", limits=GuardLimits(), data=data)
        top = insp.top_level
        if top is None:
            continue
        try:
            _meta_ds, pos = _meta(data)
        except Exception:  # noqa: BLE001 - not the reader's layout: it declines either way
            continue
        if top.start != pos or top.switched:
            continue
        try:
            want = _elements(data, pos, len(data), top.implicit)
        except Exception as exc:  # noqa: BLE001
            want = type(exc).__name__
        try:
            got = _elements_from_table(data, top)
        except Exception as exc:  # noqa: BLE001
            got = type(exc).__name__
        assert got == want
        ds = dataset_from_bytes(data, top=top)
        assert (ds is None) == (dataset_from_bytes(data) is None)
        if ds is not None:
            assert _described(ds) == _described(pydicom.dcmread(io.BytesIO(data), force=True))
            used += 1
    assert used > 700, used


def test_capacity_overflow_leaves_it_to_python():
    elem = b"\x09\x00\x10\x00\x00\x00\x00\x00"  # an empty private element, implicit VR
    head = b"\x08\x00\x16\x00\x04\x00\x00\x00" + b"1.2\x00"
    data = head + elem * (fastwalk.CAPACITY + 1)
    assert fastwalk.walk_little_endian(data, 0, len(data), implicit=True, max_depth=4) is None
    assert _walk(data, 0, len(data), implicit=True, little=True, max_depth=4).n_elements == fastwalk.CAPACITY + 2
    small = head + elem * 10
    structure, top = fastwalk.walk_little_endian(small, 0, len(small), implicit=True, max_depth=4)
    assert structure.n_elements == 11 and top.tag[1:] == [0x00090010] * 10


@pytest.mark.parametrize("max_depth", [1, 2])
def test_nesting_limit_is_the_python_walks(max_depth):
    # (0008,1115) ReferencedSeriesSequence > item > (0008,1140) ReferencedImageSequence > item > (0008,1150)
    inner = b"\x08\x00\x50\x11\x04\x00\x00\x00" + b"1.2\x00"
    item2 = b"\xfe\xff\x00\xe0" + struct.pack("<L", len(inner)) + inner
    seq2 = b"\x08\x00\x40\x11" + struct.pack("<L", len(item2)) + item2
    item1 = b"\xfe\xff\x00\xe0" + struct.pack("<L", len(seq2)) + seq2
    data = b"\x08\x00\x16\x00\x04\x00\x00\x00" + b"1.2\x00" + b"\x08\x00\x15\x11" + struct.pack("<L", len(item1)) + item1
    fast = fastwalk.walk_little_endian(data, 0, len(data), implicit=True, max_depth=max_depth)
    ref = _python(data, 0, implicit=True, max_depth=max_depth)
    if max_depth == 1:
        assert fast is None and ref == "nesting_too_deep"
    else:
        assert fast is not None and fast[0] == ref and ref.max_depth == 2


def _vr_rich_files(tmp_path) -> list[bytes]:
    """Files with every VR at the top level, non-ASCII text, odd binary lengths, private and UN elements."""
    from pydicom.dataset import Dataset, FileMetaDataset

    out = []
    for implicit in (True, False):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.481.3", "1.2.3"  # no pixel data needed
        ds.PatientName = "Ab^Cd"
        raw = pydicom.dataelem.RawDataElement
        sd = pydicom.tag.BaseTag(0x00081030)  # StudyDescription: not ASCII (latin-1 bytes), written raw
        ds._dict[sd] = raw(sd, "LO", 4, b"caf\xe9", 0, implicit, True)
        ds.SliceThickness = "2.5"
        ps = pydicom.tag.BaseTag(0x00280030)  # PixelSpacing: a DS value that is not a number, written raw
        ds._dict[ps] = raw(ps, "DS", 6, b"0.5\\x ", 0, implicit, True)
        ds.InstanceNumber = "12"
        ds.add_new(0x00181020, "LO", "v1")  # SoftwareVersions
        ds.add_new(0x00280106, "US", 3)  # SmallestImagePixelValue (US or SS in the dictionary)
        ds.add_new(0x00091010, "DS", "1.5")  # private
        ds.add_new(0x00091011, "LO", "private text")
        ds.add_new(0x00091012, "UN", b"\x01\x02\x03")
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]  # made UN below (explicit VR): a DS once converted
        ds.add_new(0x00186011, "SQ", [])  # SequenceOfUltrasoundRegions, empty
        for tag, vr, value in ((0x00189219, "SS", -3), (0x00186030, "UL", 7), (0x00181310, "US", [1, 2, 3, 4]),
                               (0x00189089, "FD", [0.0, 0.0, 1.0]), (0x00082112, "SQ", []),
                               (0x00700084, "PN", "A^B"), (0x00080051, "SQ", []), (0x00189807, "SQ", [])):
            ds.add_new(tag, vr, value)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian if implicit else \
            pydicom.uid.ExplicitVRLittleEndian
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        data = buf.getvalue()
        if not implicit:
            at = data.index(b"\x20\x00\x37\x00DS")
            n = int.from_bytes(data[at + 6:at + 8], "little")
            data = data[:at] + b"\x20\x00\x37\x00UN\x00\x00" + n.to_bytes(4, "little") + data[at + 8:]
        out.append(data)
        # an odd-length binary value: UL of 5 bytes (explicit), and a US value of 3 bytes
        if not implicit:
            at = data.index(b"\x18\x00\x30\x60UL\x04\x00")
            out.append(data[:at] + b"\x18\x00\x30\x60UL\x05\x00" + data[at + 8:at + 12] + b"\x00" + data[at + 12:])
    return out


def test_value_check_bits_leave_out_only_what_decodes(shared_data, tmp_path):
    """An element the walk does not mark CHECK_VALUE decodes under the VR the check would give it; one it does not
    mark CHECK_DS is not DS once converted; and both checks give what looking at every element gives."""
    import copy

    from pydicom.hooks import hooks

    from storage.dicom.guard import GuardLimits, inspect_file
    from storage.dicom.guard.common import _silenced, dictionary_vr
    from storage.dicom.rawread import VALUE_CHECKS, _safe, unconvertible_elements
    from storage.dicom.series import unreadable_decimal
    from tests.test_rawread import _mutations, _real_files

    datas = _vr_rich_files(tmp_path) + [p.read_bytes() for p in _real_files(shared_data)[::4]] + \
        _mutations(shared_data, n=160)
    used = vouched = rich = 0
    for i, data in enumerate(datas):
        top = inspect_file("x.dcm", limits=GuardLimits(), data=data).top_level
        rich += i < 3 and top is not None
        with _silenced():
            ds = dataset_from_bytes(data, top=top)
        if ds is None or VALUE_CHECKS not in ds.__dict__:
            continue
        used += 1
        _n, value_tags, ds_tags = ds.__dict__[VALUE_CHECKS]
        encoding = ds.original_character_set or ds._character_set
        for tag, elem in ds._dict.items():
            if tag in value_tags:
                continue
            vr = elem.VR or dictionary_vr(int(tag))
            if vr is None or vr == "UN":
                resolved: dict = {}
                hooks.raw_element_vr(elem, resolved, encoding=encoding, ds=ds)
                vr = resolved["VR"]
            assert _safe(vr, elem, sequences_checked=True), (hex(tag), vr)
            vouched += 1
        full = copy.deepcopy(ds)
        del full.__dict__[VALUE_CHECKS]
        with _silenced():
            for tag in list(ds._dict):
                if tag not in ds_tags:
                    try:
                        assert copy.deepcopy(ds)[tag].VR != "DS", hex(tag)
                    except AssertionError:
                        raise
                    except Exception:  # noqa: BLE001 - a value that does not decode is the value check's
                        pass
            assert unreadable_decimal(ds) == unreadable_decimal(full)
            for checked in (ds, full):
                try:
                    unconvertible_elements(checked, sequences_checked=True)
                    outcome = None
                except Exception as exc:  # noqa: BLE001
                    outcome = type(exc).__name__
                if checked is ds:
                    first = outcome
            assert first == outcome
    assert used > 150 and vouched > 5000 and rich == 3, (used, vouched, rich)
