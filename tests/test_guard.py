"""storage.dicom.guard: one test per reason code on damaged copies of real files made here."""

from __future__ import annotations

import io
import pathlib
import shutil
import struct
import time
import warnings
import zlib

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import MPEG2MPML, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian

from storage.dicom import guard as guard_mod
from storage.dicom.guard import REASON_CODES, GuardLimits, guard_file, guard_files, inspect_file

LIMITS = GuardLimits()


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def ct_dir(shared_data: pathlib.Path) -> pathlib.Path:
    d = shared_data / "ibsi_sts_ct_pet_mr_rtstruct" / "dicom" / "STS_008" / "CT" / "image"
    if not d.is_dir():
        pytest.skip("STS_008 CT series not present")
    return d


@pytest.fixture()
def ct(ct_dir: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    """A private copy of one real CT slice (Implicit VR Little Endian, 137x141, 16 bit)."""
    src = sorted(ct_dir.glob("*.dcm"))[10]
    dst = tmp_path / "ct.dcm"
    shutil.copyfile(src, dst)
    return dst


def _testfile(name: str, tmp_path: pathlib.Path) -> pathlib.Path:
    dst = tmp_path / name
    shutil.copyfile(get_testdata_file(name), dst)
    return dst


def _body_offset(data: bytes) -> int:
    """Start of the data set after the File Meta group (its group length is at bytes 140..143)."""
    assert data[128:132] == b"DICM" and data[132:138] == b"\x02\x00\x00\x00UL"
    return 144 + struct.unpack("<L", data[140:144])[0]


def _meta_bytes(file_meta: pydicom.Dataset) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_file_meta_info(buf, file_meta, enforce_standard=True)
    return buf.getvalue()


def _with_transfer_syntax(data: bytes, uid: str) -> bytes:
    """Same body, a File Meta group declaring another transfer syntax."""
    meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    meta.TransferSyntaxUID = uid
    return data[:128] + b"DICM" + _meta_bytes(meta) + data[_body_offset(data):]


def _explicit_le(path: pathlib.Path, out: pathlib.Path) -> bytes:
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(out, enforce_file_format=True)
    return out.read_bytes()


def _set_length(data: bytes, tag_bytes: bytes, length: int, *, implicit: bool = True) -> bytes:
    """Overwrite the 32-bit length of the first element whose tag bytes (LE) are ``tag_bytes``."""
    i = data.index(tag_bytes, _body_offset(data))
    assert implicit
    return data[: i + 4] + struct.pack("<L", length) + data[i + 8:]


def _modify(path: pathlib.Path, out: pathlib.Path, **attrs: object) -> pathlib.Path:
    ds = pydicom.dcmread(path)
    for k, v in attrs.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    ds.save_as(out, enforce_file_format=True)
    return out


def _reason(path: pathlib.Path, limits: GuardLimits = LIMITS) -> str | None:
    rej = guard_file(path, limits=limits)
    if rej is not None:
        assert rej.reason in REASON_CODES
        assert len(rej.sha256) == 64
        assert rej.size == path.stat().st_size
    return None if rej is None else rej.reason


# --------------------------------------------------------------------------- valid files pass


def test_reason_codes_documented_in_module_docstring_and_table():
    for code in ("not_dicom", "bad_preamble", "truncated", "pixel_length_mismatch", "absurd_dimensions",
                 "decompression_bomb", "nesting_too_deep", "decode_failed", "timeout", "memory_limit",
                 "duplicate_instance_conflict", "duplicate_instance", "unsupported_transfer_syntax",
                 "burned_in_annotation", "missing_required_attribute"):
        assert code in REASON_CODES and REASON_CODES[code]
    assert "REASON_CODES" in guard_mod.__doc__


def test_real_ct_series_passes_fast_without_worker(ct_dir, monkeypatch):
    files = sorted(ct_dir.glob("*.dcm"))
    assert len(files) > 40

    def no_worker(*a, **k):  # native files must never start a bounded worker
        raise AssertionError("a worker was started for uncompressed files")

    monkeypatch.setattr(guard_mod.workers, "_Worker", no_worker)
    from storage.dicom.guard.fastwalk import warm_up

    warm_up()  # the compiled walk's one-time compile (a fresh clone) or cache load: not the per-file cost timed here
    t0 = time.perf_counter()
    res = guard_files(files, limits=LIMITS)
    elapsed = time.perf_counter() - t0
    assert res == {f: None for f in files}
    assert elapsed < 2.0, elapsed


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "rtstruct.dcm",
                                  "SC_rgb_small_odd.dcm", "SC_ybr_full_422_uncompressed.dcm", "liver_1frame.dcm"])
def test_valid_native_files_pass(name, tmp_path):
    assert _reason(_testfile(name, tmp_path)) is None


def test_valid_compressed_files_pass_in_bounded_worker(tmp_path):
    files = [_testfile(n, tmp_path) for n in ("693_J2KI.dcm", "MR_small_RLE.dcm", "SC_rgb_rle_2frame.dcm",
                                               "JPEGLSNearLossless_16.dcm", "SC_rgb_jpeg_dcmtk.dcm")]
    res = guard_files(files, limits=LIMITS, workers=2)
    assert res == {f: None for f in files}


# --------------------------------------------------------------------------- not DICOM / preamble


def test_zero_byte_file_is_not_dicom(tmp_path):
    p = tmp_path / "empty.dcm"
    p.write_bytes(b"")
    rej = guard_file(p, limits=LIMITS)
    assert rej is not None and rej.reason == "not_dicom" and "zero-byte" in rej.detail


def test_text_file_named_dcm_is_not_dicom(tmp_path):
    p = tmp_path / "notes.dcm"
    p.write_text("Patient notes: this is not an image.\n" * 20)
    assert _reason(p) == "not_dicom"


def test_bad_preamble(ct, tmp_path):
    data = bytearray(ct.read_bytes())
    data[128:132] = b"DICX"
    p = tmp_path / "bad_preamble.dcm"
    p.write_bytes(bytes(data))
    assert _reason(p) == "bad_preamble"


def test_preamble_less_file_with_group_0008_is_accepted(ct, tmp_path):
    data = ct.read_bytes()
    with_meta = tmp_path / "no_preamble_meta.dcm"
    with_meta.write_bytes(data[132:])  # File Meta at byte 0, no preamble
    bare = tmp_path / "no_preamble_bare.dcm"
    bare.write_bytes(data[_body_offset(data):])  # Implicit VR LE data set only
    assert _reason(with_meta) is None
    assert _reason(bare) is None


def test_dicomdir_is_reported_as_such(tmp_path):
    src = pathlib.Path(get_testdata_file("DICOMDIR", read=False) or "")
    if not src.is_file():
        pytest.skip("pydicom DICOMDIR test file not available")
    p = tmp_path / "DICOMDIR"
    shutil.copyfile(src, p)
    assert _reason(p) == "dicomdir"


# --------------------------------------------------------------------------- truncation and lengths


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.9])
def test_truncated_files(ct, tmp_path, fraction):
    data = ct.read_bytes()
    p = tmp_path / f"cut_{int(fraction * 100)}.dcm"
    p.write_bytes(data[: int(len(data) * fraction)])
    assert _reason(p) == "truncated"


def test_cut_at_5_percent_is_read_by_pydicom_without_error_and_without_pixels(ct, tmp_path):
    """The field-note trap this guard exists for (pydicom 3.0.2)."""
    data = ct.read_bytes()
    p = tmp_path / "cut.dcm"
    p.write_bytes(data[: int(len(data) * 0.05)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(p)
    assert "PixelData" not in ds


def test_big_endian_header_over_little_endian_body(ct, tmp_path):
    p = tmp_path / "flipped.dcm"
    p.write_bytes(_with_transfer_syntax(ct.read_bytes(), ExplicitVRBigEndian))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert "PixelData" not in pydicom.dcmread(p)  # pydicom: no error, no pixels
    rej = guard_file(p, limits=LIMITS)
    assert rej is not None and rej.reason == "transfer_syntax_mismatch"
    assert "Implicit VR Little Endian" in rej.detail


def test_element_length_past_end_of_file(ct, tmp_path):
    data = _set_length(ct.read_bytes(), b"\x20\x00\x32\x00", 0x00F00000)  # (0020,0032) Image Position
    p = tmp_path / "len_past_eof.dcm"
    p.write_bytes(data)
    rej = guard_file(p, limits=LIMITS)
    assert rej is not None and rej.reason == "truncated" and "(0020,0032)" in rej.detail


def test_pixel_data_length_near_4_gb(ct, tmp_path):
    data = _set_length(ct.read_bytes(), b"\xe0\x7f\x10\x00", 0xFFFFFFF0)
    p = tmp_path / "px_4gb.dcm"
    p.write_bytes(data)
    rej = guard_file(p, limits=LIMITS)
    assert rej is not None and rej.reason == "truncated" and "4294967280" in rej.detail


def test_pixel_length_shorter_than_rows_columns_imply(ct, tmp_path):
    ds = pydicom.dcmread(ct)
    p = _modify(ct, tmp_path / "rows_plus.dcm", Rows=ds.Rows + 10)
    assert _reason(p) == "pixel_length_mismatch"


def test_pixel_length_a_frame_longer_than_header_implies(ct, tmp_path):
    ds = pydicom.dcmread(ct)
    p = _modify(ct, tmp_path / "rows_half.dcm", Rows=ds.Rows // 2)
    assert _reason(p) == "pixel_length_mismatch"


def test_malformed_structure_item_overruns_sequence(tmp_path):
    """An item whose length runs past its defined-length sequence (but not past EOF)."""
    src = _testfile("rtplan.dcm", tmp_path)
    data = bytearray(src.read_bytes())
    body = _body_offset(bytes(data))
    i = bytes(data).index(b"\xfe\xff\x00\xe0", body)  # first item tag
    (length,) = struct.unpack("<L", data[i + 4:i + 8])
    assert length != 0xFFFFFFFF
    data[i + 4:i + 8] = struct.pack("<L", length + 64)
    p = tmp_path / "item_overrun.dcm"
    p.write_bytes(bytes(data))
    assert _reason(p) in ("malformed_structure", "truncated")


# --------------------------------------------------------------------------- dimensions and bombs


def test_absurd_dimensions(ct, tmp_path):
    p = _modify(ct, tmp_path / "huge.dcm", Rows=65535, Columns=65535, NumberOfFrames=1000)
    rej = guard_file(p, limits=LIMITS)
    assert rej is not None and rej.reason == "absurd_dimensions" and "Rows=65535" in rej.detail


def test_expected_bytes_above_cap_is_absurd(ct, tmp_path):
    limits = GuardLimits(max_pixel_bytes=10_000)  # the slice has 137*141*2 = 38634 bytes
    rej = guard_file(ct, limits=limits)
    assert rej is not None and rej.reason == "absurd_dimensions" and "38634" in rej.detail


@pytest.mark.parametrize("attrs", [{"BitsAllocated": 12}, {"SamplesPerPixel": 2}, {"BitsStored": 20}])
def test_other_absurd_pixel_module_values(ct, tmp_path, attrs):
    p = _modify(ct, tmp_path / "odd.dcm", **attrs)
    assert _reason(p) == "absurd_dimensions"


def _deflated_bomb(ct: pathlib.Path, out: pathlib.Path, zeros: int) -> None:
    """A deflated data set: the CT header plus a pixel data element of ``zeros`` zero bytes."""
    plain = _explicit_le(ct, out.with_suffix(".plain"))
    body = plain[_body_offset(plain):]
    body = body[: body.index(b"\xe0\x7f\x10\x00OW")]
    body += b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<L", zeros)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [comp.compress(body)]
    block = bytes(1 << 20)
    for _ in range(zeros >> 20):
        parts.append(comp.compress(block))
    parts.append(comp.flush())
    meta = pydicom.dcmread(ct, stop_before_pixels=True).file_meta
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out.write_bytes(plain[:128] + b"DICM" + _meta_bytes(meta) + b"".join(parts))


def test_deflated_bomb(ct, tmp_path):
    p = tmp_path / "bomb.dcm"
    _deflated_bomb(ct, p, zeros=64 << 20)
    assert p.stat().st_size < 200_000  # 64 MiB of zeros deflate to about 64 KB
    rej = guard_file(p, limits=GuardLimits(max_inflated_bytes=16 << 20))
    assert rej is not None and rej.reason == "decompression_bomb"


def test_compressed_declared_size_above_cap_is_a_bomb(tmp_path):
    p = _testfile("693_J2KI.dcm", tmp_path)
    assert _reason(p, GuardLimits(max_pixel_bytes=100_000)) == "decompression_bomb"


def _nested_sequence(depth: int) -> bytes:
    """``depth`` nested undefined-length (0040,A730) Content Sequences, Explicit VR LE."""
    open_ = b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    close = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return open_ * depth + close * depth


def _with_nesting(ct: pathlib.Path, out: pathlib.Path, depth: int) -> pathlib.Path:
    plain = _explicit_le(ct, out.with_suffix(".plain"))
    i = plain.index(b"\xe0\x7f\x10\x00OW")
    out.write_bytes(plain[:i] + _nested_sequence(depth) + plain[i:])
    return out


def test_nesting_400_deep(ct, tmp_path):
    p = _with_nesting(ct, tmp_path / "deep.dcm", 400)
    with pytest.raises(RecursionError):  # what pydicom 3.0.2 does with it
        pydicom.dcmread(p)
    assert _reason(p) == "nesting_too_deep"


def test_nesting_limit_is_configurable(ct, tmp_path):
    p = _with_nesting(ct, tmp_path / "nest5.dcm", 5)
    assert _reason(p) is None
    assert _reason(p, GuardLimits(max_sequence_depth=4)) == "nesting_too_deep"


def test_unterminated_undefined_length_sequence_is_truncated(ct, tmp_path):
    plain = _explicit_le(ct, tmp_path / "x.plain")
    i = plain.index(b"\xe0\x7f\x10\x00OW")
    p = tmp_path / "open_seq.dcm"
    p.write_bytes(plain[:i] + _nested_sequence(3)[: -16])  # last delimiters and pixel data missing
    assert _reason(p) == "truncated"


# --------------------------------------------------------------------------- attributes, syntaxes


def test_missing_rows(ct, tmp_path):
    p = _modify(ct, tmp_path / "no_rows.dcm", Rows=None)
    rej = guard_file(p, limits=LIMITS)
    assert rej is not None and rej.reason == "missing_required_attribute" and "Rows" in rej.detail


def test_image_without_pixel_data(ct, tmp_path):
    p = _modify(ct, tmp_path / "no_px.dcm", PixelData=None)
    assert _reason(p) == "missing_required_attribute"


def test_missing_sop_instance_uid(ct, tmp_path):
    p = _modify(ct, tmp_path / "no_uid.dcm", SOPInstanceUID=None)
    assert _reason(p) == "missing_required_attribute"


def test_invalid_attribute_value(tmp_path):
    assert _reason(_testfile("badVR.dcm", tmp_path)) == "invalid_attribute"


def test_unsupported_transfer_syntax(tmp_path):
    src = _testfile("693_J2KI.dcm", tmp_path)
    p = tmp_path / "mpeg.dcm"
    p.write_bytes(_with_transfer_syntax(src.read_bytes(), MPEG2MPML))
    assert _reason(p) == "unsupported_transfer_syntax"


def test_native_syntax_with_encapsulated_pixel_data(tmp_path):
    src = _testfile("693_J2KI.dcm", tmp_path)
    p = tmp_path / "claims_native.dcm"
    p.write_bytes(_with_transfer_syntax(src.read_bytes(), ExplicitVRLittleEndian))
    assert _reason(p) == "pixel_length_mismatch"


def test_decode_failed_on_corrupt_codestream(tmp_path):
    src = _testfile("693_J2KI.dcm", tmp_path)
    data = bytearray(src.read_bytes())
    i = bytes(data).index(b"\xff\x4f\xff\x51")  # J2K SOC + SIZ markers
    data[i:i + 64] = bytes(range(64))
    p = tmp_path / "corrupt_j2k.dcm"
    p.write_bytes(bytes(data))
    rej = guard_file(p, limits=LIMITS)
    assert rej is not None and rej.reason == "decode_failed" and rej.exception_type


def test_timeout_kills_the_worker_and_the_batch_goes_on(tmp_path):
    files = [_testfile("693_J2KI.dcm", tmp_path), _testfile("CT_small.dcm", tmp_path)]
    res = guard_files(files, limits=GuardLimits(decode_timeout_s=1e-4), workers=1)
    assert res[files[0]] is not None and res[files[0]].reason == "timeout"
    assert res[files[1]] is None


def test_memory_limit(tmp_path):
    files = [_testfile("693_J2KI.dcm", tmp_path), _testfile("MR_small_RLE.dcm", tmp_path)]
    # a 512x512 16-bit frame needs 512 KiB; the worker may grow by 64 KiB only
    res = guard_files(files[:1], limits=GuardLimits(worker_memory_bytes=64 << 10), workers=1)
    assert res[files[0]] is not None and res[files[0]].reason == "memory_limit"
    # a fresh worker replaces the one that hit the limit: the next file still decodes
    res = guard_files(files, limits=GuardLimits(), workers=1)
    assert res == {f: None for f in files}


def test_memory_limit_holds_when_the_collection_started_the_worker_server(tmp_path):
    """The decode workers are forked from the server the collection's unit workers share, whose preload is large.

    There, glibc's raised mmap threshold let a frame come from free heap space the address-space cap
    never saw (the full suite: 64 KiB of allowance decoded a 512 KiB frame). Run in a fresh process so
    that the collection starts the server first, as in a real ingest.
    """
    import subprocess
    import sys

    f = _testfile("693_J2KI.dcm", tmp_path)
    code = (
        "import sys\n"
        "from storage.workers import worker_context\n"
        "ctx = worker_context()\n"
        "p = ctx.Process(target=print, args=('server up',)); p.start(); p.join()\n"
        "from storage.dicom.guard import GuardLimits, guard_files\n"
        f"res = guard_files([{str(f)!r}], limits=GuardLimits(worker_memory_bytes=64 << 10), workers=1)\n"
        "print('REASON', next(iter(res.values())).reason if next(iter(res.values())) else None)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=str(pathlib.Path(__file__).resolve().parents[1]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "REASON memory_limit" in proc.stdout, proc.stdout + proc.stderr[-2000:]


# --------------------------------------------------------------------------- duplicates


def test_duplicates(ct_dir, tmp_path):
    a, b = sorted(ct_dir.glob("*.dcm"))[:2]
    d = tmp_path / "dups"
    d.mkdir()
    shutil.copyfile(a, d / "a1.dcm")
    shutil.copyfile(a, d / "a2.dcm")  # identical duplicate
    shutil.copyfile(b, d / "b1.dcm")
    data = bytearray(b.read_bytes())
    data[-100] ^= 0x01  # same header (same SOP Instance UID), one pixel differs
    (d / "b2.dcm").write_bytes(bytes(data))
    paths = sorted(d.iterdir())
    res = guard_files(paths, limits=LIMITS)
    assert res[d / "a1.dcm"] is None
    assert res[d / "a2.dcm"] is not None and res[d / "a2.dcm"].reason == "duplicate_instance"
    assert res[d / "b1.dcm"].reason == "duplicate_instance_conflict"
    assert res[d / "b2.dcm"].reason == "duplicate_instance_conflict"


def test_a_path_given_twice_is_not_a_duplicate(ct):
    assert guard_files([ct, ct], limits=LIMITS) == {ct: None}


def test_same_uid_same_pixels_different_header_is_a_plain_duplicate(ct, tmp_path):
    other = _modify(ct, tmp_path / "renamed.dcm", SeriesDescription="another description")
    res = guard_files([ct, other], limits=LIMITS)
    assert res[ct] is None and res[other].reason == "duplicate_instance"


# --------------------------------------------------------------------------- PHI, API, inputs untouched


def test_details_hold_no_values_from_the_file(ct, tmp_path, caplog):
    ds = pydicom.dcmread(ct)
    secrets = [str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
               str(ds.get("PatientID", "")), str(ds.get("PatientName", ""))]
    secrets = [s for s in secrets if len(s) >= 4]
    variants = []
    data = ct.read_bytes()
    for frac in (0.05, 0.5):
        p = tmp_path / f"v{frac}.dcm"
        p.write_bytes(data[: int(len(data) * frac)])
        variants.append(p)
    p = tmp_path / "flip.dcm"
    p.write_bytes(_with_transfer_syntax(data, ExplicitVRBigEndian))
    variants.append(p)
    variants.append(_modify(ct, tmp_path / "huge.dcm", Rows=65535, Columns=65535, NumberOfFrames=1000))
    bogus = (str(ds.PatientID) + "abc").encode()
    bogus += b" " * (len(bogus) % 2)
    i = data.index(b"\x28\x00\x10\x00", _body_offset(data))  # insert a bad NumberOfFrames before Rows
    p = tmp_path / "badframes.dcm"
    p.write_bytes(data[:i] + b"\x28\x00\x08\x00" + struct.pack("<L", len(bogus)) + bogus + data[i:])
    variants.append(p)
    shutil.copyfile(ct, tmp_path / "dup.dcm")
    variants += [ct, tmp_path / "dup.dcm"]
    before = {v: v.read_bytes() for v in variants}
    res = guard_files(variants, limits=LIMITS)
    rejected = [r for r in res.values() if r is not None]
    assert len(rejected) == len(variants) - 1
    for r in rejected:
        for s in secrets:
            assert s not in r.detail
    assert {v: v.read_bytes() for v in variants} == before
    assert res[tmp_path / "badframes.dcm"].reason == "invalid_attribute"
    for s in secrets:  # pydicom logs invalid values; the guard must silence it
        assert s not in caplog.text


def test_unreadable_file(tmp_path):
    p = tmp_path / "dangling.dcm"
    p.symlink_to(tmp_path / "does-not-exist.dcm")
    assert guard_file(p, limits=LIMITS).reason == "unreadable_file"


def test_inspect_file_reports_compressed_needs_decode(tmp_path, ct):
    insp = inspect_file(_testfile("693_J2KI.dcm", tmp_path), limits=LIMITS)
    assert insp.rejection is None and insp.needs_decode and insp.frame_shape == (512, 512)
    native = inspect_file(ct, limits=LIMITS)
    assert native.rejection is None and not native.needs_decode


def test_argument_validation(ct):
    with pytest.raises(TypeError, match="limits"):
        guard_file(ct, limits={"max_rows": 1})
    with pytest.raises(ValueError, match="workers"):
        guard_files([ct], limits=LIMITS, workers=0)
    with pytest.raises(ValueError, match="max_rows"):
        GuardLimits(max_rows=0)
    with pytest.raises(ValueError, match="decode_timeout_s"):
        GuardLimits(decode_timeout_s=0)


def test_known_digest_path_gives_the_same_verdicts(ct, tmp_path):
    """``sha256s`` (digests from the scan) skips re-hashing; verdicts must not change."""
    from storage.workspace import sha256_file

    data = ct.read_bytes()
    files = [ct, _testfile("693_J2KI.dcm", tmp_path), _testfile("image_dfl.dcm", tmp_path)]
    for frac in (0.05, 0.5):
        p = tmp_path / f"cut{frac}.dcm"
        p.write_bytes(data[: int(len(data) * frac)])
        files.append(p)
    p = tmp_path / "flip.dcm"
    p.write_bytes(_with_transfer_syntax(data, ExplicitVRBigEndian))
    files.append(p)
    p = tmp_path / "px4gb.dcm"
    p.write_bytes(_set_length(data, b"\xe0\x7f\x10\x00", 0xFFFFFFF0))
    files.append(p)
    files.append(_modify(ct, tmp_path / "huge.dcm", Rows=65535, Columns=65535, NumberOfFrames=1000))
    files.append(_with_nesting(ct, tmp_path / "deep.dcm", 400))
    plain = guard_files(files, limits=LIMITS)
    known = guard_files(files, limits=LIMITS, sha256s={f: sha256_file(f) for f in files})
    assert {f: r and (r.reason, r.sha256) for f, r in plain.items()} == \
        {f: r and (r.reason, r.sha256) for f, r in known.items()}
    assert [plain[f] is None for f in files[:3]] == [True, True, True]
    assert all(plain[f] is not None for f in files[3:])


def test_multi_valued_rows_is_invalid(ct, tmp_path):
    data = ct.read_bytes()
    i = data.index(b"\x28\x00\x10\x00\x02\x00\x00\x00", _body_offset(data))  # Rows, US, 2 bytes
    p = tmp_path / "rows_vm2.dcm"
    p.write_bytes(data[:i] + b"\x28\x00\x10\x00\x04\x00\x00\x00" + data[i + 8:i + 10] * 2 + data[i + 10:])
    rej = guard_file(p, limits=LIMITS)
    assert rej is not None and rej.reason == "invalid_attribute" and "Rows" in rej.detail


@pytest.mark.parametrize("sig, reason", [(9, "memory_limit"), (11, "decode_failed")])
def test_worker_killed_mid_task_is_reported_and_replaced(tmp_path, sig, reason):
    """A worker that dies (OOM killer: SIGKILL; decoder crash: SIGSEGV) costs its file only."""
    import os
    import threading

    fifo = tmp_path / "blocks.dcm"
    os.mkfifo(fifo)  # opening it blocks the worker until we kill it
    good = _testfile("693_J2KI.dcm", tmp_path)
    ts = str(pydicom.dcmread(good, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    payload = {"transfer_syntax": ts, "frames": [0], "shape": (512, 512),
               "frame_bytes": 512 * 512 * 2}
    tasks = [("hang", dict(payload, path=str(fifo))), ("ok", dict(payload, path=str(good)))]
    killed: list[int] = []

    def killer():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not killed:
            import multiprocessing

            kids = [c for c in multiprocessing.active_children() if c.name == "medflow-guard-worker"]
            if kids:
                # let it finish start-up and block on the FIFO (the hanging task): a worker killed during
                # start-up is a start-up failure, a different case (tests/test_fault_injection.py)
                pid, t_wait = kids[0].pid, time.monotonic() + 10
                while time.monotonic() < t_wait:
                    try:
                        wchan = pathlib.Path(f"/proc/{pid}/wchan").read_text()
                    except OSError:
                        wchan = ""
                    if "fifo" in wchan or "partner" in wchan:
                        break
                    time.sleep(0.05)
                time.sleep(0.3)
                os.kill(pid, sig)  # the worker this test started, by its id
                killed.append(pid)
                return
            time.sleep(0.02)

    t = threading.Thread(target=killer)
    t.start()
    res = guard_mod._run_bounded(tasks, limits=GuardLimits(decode_timeout_s=30), workers=1)
    t.join()
    assert killed
    assert res["hang"] is not None and res["hang"]["reason"] == reason
    assert res["ok"] is None  # a fresh worker took the next file


def test_walk_from_an_open_file_equals_the_walk_from_bytes(ct, tmp_path):
    """A large file's guard reads from the open file (mapped), not from bytes: same verdict and facts."""
    import dataclasses
    import hashlib

    data = ct.read_bytes()
    variants = {"intact": data, "cut": data[: len(data) // 2], "long element": _set_length(data, b"\x28\x00\x10\x00",
                                                                                           0x7FFF)}
    for name, content in variants.items():
        p = tmp_path / f"{name}.dcm"
        p.write_bytes(content)
        digest = hashlib.sha256(content).hexdigest()
        from_file = inspect_file(p, limits=LIMITS, sha256=digest)  # streamed from the open file
        from_bytes = inspect_file(p, limits=LIMITS, sha256=digest, data=content)
        assert dataclasses.asdict(from_file) == dataclasses.asdict(from_bytes), name
    assert inspect_file(tmp_path / "intact.dcm", limits=LIMITS, sha256=hashlib.sha256(data).hexdigest()).rejection \
        is None
    assert inspect_file(tmp_path / "cut.dcm", limits=LIMITS,
                        sha256=hashlib.sha256(variants["cut"]).hexdigest()).rejection.reason == "truncated"
