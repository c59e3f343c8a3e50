"""A folder of damaged variants of real files beside valid series: the batch path never crashes,
converts the valid series, quarantines every bad file with a reason, and leaves inputs untouched.

Also the unit tests of :mod:`storage.quarantine`.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import struct
import zlib

import numpy as np
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian

import storage.dicom
from storage.dicom.guard import REASON_CODES, GuardLimits, guard_files
from storage.dicom.model import Rejection
from storage.quarantine import QuarantineStore, locate
from storage.workspace import sha256_file

LIMITS = GuardLimits(max_inflated_bytes=16 << 20)


# --------------------------------------------------------------------------- damaged variants


def _body_offset(data: bytes) -> int:
    assert data[128:132] == b"DICM" and data[132:138] == b"\x02\x00\x00\x00UL"
    return 144 + struct.unpack("<L", data[140:144])[0]


def _meta_bytes(file_meta: pydicom.Dataset) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_file_meta_info(buf, file_meta, enforce_standard=True)
    return buf.getvalue()


def _set_implicit_length(data: bytes, tag_bytes: bytes, length: int) -> bytes:
    i = data.index(tag_bytes, _body_offset(data))
    return data[: i + 4] + struct.pack("<L", length) + data[i + 8:]


def _explicit_le(src: pathlib.Path) -> bytes:
    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _make_variants(ct_files: list[pathlib.Path], mr_file: pathlib.Path, bad: pathlib.Path) -> dict[str, set[str]]:
    """Write damaged variants into ``bad``; return file name -> acceptable reason codes.

    The scan (another module) may reject some files before the guard sees them; its codes
    for those cases are listed too.
    """
    bad.mkdir()
    expect: dict[str, set[str]] = {}
    data = ct_files[0].read_bytes()

    for frac in (0.05, 0.5, 0.9):
        name = f"cut_{int(frac * 100)}.dcm"
        (bad / name).write_bytes(ct_files[1].read_bytes()[: int(len(data) * frac)])
        expect[name] = {"truncated"} if frac > 0.05 else {"truncated", "not_dicom", "unreadable_header"}

    meta = pydicom.dcmread(ct_files[2], stop_before_pixels=True).file_meta
    meta.TransferSyntaxUID = ExplicitVRBigEndian
    d2 = ct_files[2].read_bytes()
    (bad / "big_endian_header.dcm").write_bytes(d2[:128] + b"DICM" + _meta_bytes(meta) + d2[_body_offset(d2):])
    expect["big_endian_header.dcm"] = {"transfer_syntax_mismatch"}

    (bad / "len_past_eof.dcm").write_bytes(_set_implicit_length(ct_files[3].read_bytes(), b"\x20\x00\x32\x00",
                                                                0x00F00000))
    expect["len_past_eof.dcm"] = {"truncated"}
    (bad / "px_4gb.dcm").write_bytes(_set_implicit_length(ct_files[4].read_bytes(), b"\xe0\x7f\x10\x00",
                                                          0xFFFFFFF0))
    expect["px_4gb.dcm"] = {"truncated"}

    ds = pydicom.dcmread(ct_files[5])
    ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 65535, 1000
    ds.save_as(bad / "huge_dims.dcm", enforce_file_format=True)
    expect["huge_dims.dcm"] = {"absurd_dimensions"}

    plain = _explicit_le(ct_files[6])
    body = plain[_body_offset(plain):]
    body = body[: body.index(b"\xe0\x7f\x10\x00OW")] + b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<L", 64 << 20)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [comp.compress(body)] + [comp.compress(bytes(1 << 20)) for _ in range(64)] + [comp.flush()]
    meta = pydicom.dcmread(ct_files[6], stop_before_pixels=True).file_meta
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    (bad / "deflate_bomb.dcm").write_bytes(plain[:128] + b"DICM" + _meta_bytes(meta) + b"".join(parts))
    expect["deflate_bomb.dcm"] = {"decompression_bomb"}

    plain = _explicit_le(ct_files[7])
    i = plain.index(b"\xe0\x7f\x10\x00OW")
    open_ = b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\xff\xff\xff\xff"
    close = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    (bad / "nested_400.dcm").write_bytes(plain[:i] + open_ * 400 + close * 400 + plain[i:])
    expect["nested_400.dcm"] = {"nesting_too_deep", "unreadable_header"}

    d8 = bytearray(ct_files[8].read_bytes())
    d8[128:132] = b"DICX"
    (bad / "bad_preamble.dcm").write_bytes(bytes(d8))
    expect["bad_preamble.dcm"] = {"bad_preamble", "not_dicom"}

    shutil.copyfile(mr_file, bad / "mr_a.dcm")
    d9 = bytearray(mr_file.read_bytes())
    d9[-50] ^= 0x01  # same SOP Instance UID, one pixel differs
    (bad / "mr_b.dcm").write_bytes(bytes(d9))
    expect["mr_a.dcm"] = expect["mr_b.dcm"] = {"duplicate_instance_conflict"}

    (bad / "readme.dcm").write_text("This folder holds damaged test files.\n" * 10)
    expect["readme.dcm"] = {"not_dicom"}
    (bad / "empty.dcm").write_bytes(b"")
    expect["empty.dcm"] = {"not_dicom"}
    return expect


def _snapshot(root: pathlib.Path) -> dict[str, tuple[str, int, int]]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[p.relative_to(root).as_posix()] = (sha256_file(p), st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def sts(shared_data: pathlib.Path) -> pathlib.Path:
    d = shared_data / "ibsi_sts_ct_pet_mr_rtstruct" / "dicom" / "STS_008"
    if not (d / "CT" / "image").is_dir():
        pytest.skip("STS_008 not present")
    return d


@pytest.fixture(scope="module")
def source(sts: pathlib.Path, tmp_path_factory) -> tuple[pathlib.Path, dict[str, set[str]]]:
    src = tmp_path_factory.mktemp("batch") / "src"
    shutil.copytree(sts / "CT" / "image", src / "ct")
    shutil.copytree(sts / "PET" / "image", src / "pet")
    ct_files = sorted((src / "ct").glob("*.dcm"))
    expect = _make_variants(ct_files, sorted((sts / "MR_T1" / "image").glob("*.dcm"))[5], src / "bad")
    shutil.copyfile(ct_files[20], src / "bad" / "ct_copy.dcm")  # an identical duplicate of a valid slice
    return src, expect


# --------------------------------------------------------------------------- the batch


def test_guard_batch_reasons(source):
    src, expect = source
    files = sorted(p for p in src.rglob("*") if p.is_file())
    before = _snapshot(src)
    verdicts = guard_files(files, limits=LIMITS, workers=2)
    assert set(verdicts) == set(files)
    for name, reasons in expect.items():
        rej = verdicts[src / "bad" / name]
        assert rej is not None, name
        assert rej.reason in reasons and rej.reason in REASON_CODES, (name, rej)
        assert name not in rej.detail and len(rej.sha256) == 64
    # exactly one of the two identical copies is kept
    copy = src / "bad" / "ct_copy.dcm"
    twin = next(p for p in (src / "ct").glob("*.dcm") if sha256_file(p) == sha256_file(copy))
    assert {verdicts[copy] is None, verdicts[twin] is None} == {True, False}
    dup = verdicts[copy] or verdicts[twin]
    assert dup.reason == "duplicate_instance"
    # every other valid file passes
    valid = [p for p in files if p.parent.name in ("ct", "pet") and p != twin]
    assert all(verdicts[p] is None for p in valid)
    assert _snapshot(src) == before


def test_collect_batch_end_to_end(source, tmp_path):
    src, expect = source
    before = _snapshot(src)
    if not hasattr(storage.dicom, "collect_folder"):
        pytest.skip("TODO(lead): storage.dicom.collect_folder is missing; the end-to-end variant needs it")
    result = storage.dicom.collect_folder(src, guard_limits=LIMITS, guard_workers=2)  # must not raise

    # the valid series are converted, and correctly (voxel values at the positions the affine gives)
    by_modality = {v.meta.get("modality"): v for v in result.volumes}
    assert {"CT", "PT"} <= set(by_modality), [v.meta.get("modality") for v in result.volumes]
    for modality, folder in (("CT", "ct"), ("PT", "pet")):
        vol = by_modality[modality]
        dss = [pydicom.dcmread(p) for p in sorted((src / folder).glob("*.dcm"))]
        assert vol.volume.shape[0] == len(dss) == 51
        by_pos = {tuple(np.round(np.asarray(d.ImagePositionPatient, float), 2)): d for d in dss}
        for k in (0, 25, 50):
            pos = tuple(np.round((vol.affine @ np.array([k, 0, 0, 1.0]))[:3], 2))
            d = by_pos[pos]
            want = d.pixel_array * float(d.get("RescaleSlope", 1)) + float(d.get("RescaleIntercept", 0))
            if modality == "CT":
                np.testing.assert_allclose(vol.volume[k], want, rtol=1e-6, atol=1e-3)
            else:  # PET may be scaled to other units; the pattern must match
                got = np.asarray(vol.volume[k], float)
                assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.999

    # each bad file has a quarantine record with a reason code
    ws = tmp_path / "ws"
    store = QuarantineStore(ws)
    for rej in result.rejections:
        store.add(rej, run_id="run-1")
    records = {r["sha256"]: r for r in store.list() if r["sha256"]}
    for name, reasons in expect.items():
        sha = sha256_file(src / "bad" / name)
        assert sha in records, name
        assert records[sha]["reason"] in reasons, (name, records[sha]["reason"])
    assert sha256_file(src / "bad" / "ct_copy.dcm") in records  # the dropped identical copy

    # records are named by hash and carry no file names
    names = {p.name for p in src.rglob("*") if p.is_file()}
    for p in (ws / "quarantine").glob("*.json"):
        text = p.read_text()
        assert not any(n in text for n in names if len(n) > 6), p.name

    # inputs never modified or moved
    assert _snapshot(src) == before

    # re-running the same run is idempotent; a new run counts once more
    first = {r["sha256"]: r["count"] for r in store.list()}
    for rej in result.rejections:
        store.add(rej, run_id="run-1")
    assert {r["sha256"]: r["count"] for r in store.list()} == first
    for rej in result.rejections:
        store.add(rej, run_id="run-2")
    assert all(r["count"] == first[r["sha256"]] + 1 for r in store.list())

    # locate maps the records back to the user's files (console only)
    located = locate(src, store.list())
    rels = {rel for rel, _rec in located}
    assert {f"bad/{n}" for n in expect} <= rels


# --------------------------------------------------------------------------- quarantine store


def _rej(sha: str = "a" * 64, reason: str = "truncated", **kw) -> Rejection:
    return Rejection(sha256=sha, reason=reason, detail="pixel data declares 100 bytes but only 10 remain", **kw)


def test_store_add_is_atomic_named_by_hash_and_idempotent(tmp_path):
    store = QuarantineStore(tmp_path)
    p = store.add(_rej(size=1234, series_key="s-1"), run_id=None)
    assert p == tmp_path.resolve() / "quarantine" / ("a" * 64 + ".json")
    rec = json.loads(p.read_text())
    assert set(rec) >= {"sha256", "reason", "detail", "exception_type", "series_key", "first_seen", "count"}
    assert rec["count"] == 1 and rec["size"] == 1234 and rec["series_key"] == "s-1"
    store.add(_rej(), run_id=None)  # re-run without a run id: nothing counted again
    rec2 = store.get("a" * 64)
    assert rec2["count"] == 1 and rec2["first_seen"] == rec["first_seen"] and rec2["series_key"] == "s-1"
    store.add(_rej(), run_id="r1")
    store.add(_rej(), run_id="r1")
    assert store.get("a" * 64)["count"] == 2
    assert not [q for q in (tmp_path / "quarantine").iterdir() if ".tmp-" in q.name]


def test_store_list_and_other_stage_codes(tmp_path):
    store = QuarantineStore(tmp_path)
    assert store.list() == []
    store.add(_rej("b" * 64, "rtstruct_no_contours"), run_id="r")
    store.add(_rej("", "io_error"), run_id="r")  # no hash: recorded, not locatable
    store.add(_rej("c" * 64, "bad reason with spaces"), run_id="r")
    recs = store.list()
    assert len(recs) == 3
    assert {r["reason"] for r in recs} == {"rtstruct_no_contours", "io_error", "invalid_reason"}
    assert any(r["sha256"] is None for r in recs)
    with pytest.raises(TypeError):
        store.add({"sha256": "a" * 64}, run_id=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sha256"):
        store.path_for("../../etc/passwd")


def test_locate(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "one.dcm").write_bytes(b"one")
    (src / "two.dcm").write_bytes(b"two!")
    (src / "same_as_two.dcm").write_bytes(b"two!")
    import hashlib

    recs = [{"sha256": hashlib.sha256(b"two!").hexdigest(), "reason": "not_dicom", "size": 4},
            {"sha256": hashlib.sha256(b"zzz").hexdigest(), "reason": "not_dicom", "size": None}]
    before = _snapshot(src)
    out = locate(src, recs)
    assert [rel for rel, _ in out] == ["same_as_two.dcm", "two.dcm"]
    assert _snapshot(src) == before
    assert not (src / "quarantine").exists() and sorted(os.listdir(src)) == ["a", "same_as_two.dcm", "two.dcm"]
    with pytest.raises(NotADirectoryError):
        locate(src / "two.dcm", recs)
