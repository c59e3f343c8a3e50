#!/usr/bin/env python
"""Seeded DICOM fuzzing of medflow's collection (issue #12 item 1).

``scripts/fuzz.py --n 1000 --seed 7 --out DIR`` builds ``n`` seeded mutations of real files
from ``../shared/data`` (bit flips in header and pixel data, truncation at structural
boundaries, wrong VRs and lengths, unclosed undefined-length sequences, deep nesting, absurd
dimensions, deflate bombs, transfer-syntax lies, duplicated and conflicting instances, valid
re-encodings), puts them in one folder beside untouched valid series, and ingests the folder
as ONE batch with the pipeline's collection (:func:`storage.collect.collect_into`, in a child
process whose process tree is RSS-sampled). A clean run of the valid series alone is the
reference. It checks:

* the run completes (child exit 0, no timeout);
* every valid series converts identically (volume and mask digests) to the clean run;
* every damaged file is either converted correctly (each slice of each volume equals the
  pydicom decode, after rescale, of a batch file of that series at that position) or has a
  quarantine/routing record with a documented reason code; no medflow exception disguised
  as a data defect (``*_failed`` codes carrying an exception type);
* per-file inspection time <= 25 s (every damaged file is also inspected alone, timed) and
  peak RSS of the whole process tree (guard workers included) <= 2.5 GiB;
* inputs byte-identical afterwards (sha256 of every file before/after).

It prints a JSON summary (crashes, hangs, wrong conversions, lost files, quarantined by
reason) and exits non-zero when a check fails. ``tests/test_fuzz.py`` runs a CI-sized subset;
``scripts/soak.py`` reuses :func:`mutate` and :func:`build_batch`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import os
import pathlib
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
SHARED = pathlib.Path(os.environ.get("MEDFLOW_SHARED_DATA", str(REPO.parent / "shared" / "data")))
STS_IBSI = SHARED / "ibsi_sts_ct_pet_mr_rtstruct" / "dicom"
COHORT = SHARED / "sts_cohort" / "dicom"
FUZZ_SECRET = "medflow-fuzz-secret-not-for-real-data"

#: pass criteria (issue #12)
FILE_TIME_LIMIT_S = 25.0
MEMORY_LIMIT_BYTES = int(2.5 * 1024**3)
#: reason codes that mean "medflow's own code raised" rather than "the data is defective"
BUG_LIKE_CODES = {"conversion_failed", "series_split_failed", "rtstruct_failed", "seg_failed"}

KINDS = {  # mutation kind -> weight
    "bitflip_header": 14, "bitflip_pixels": 8, "truncate": 18, "wrong_vr": 8, "wrong_length": 10,
    "unclosed_sequence": 5, "deep_nesting": 5, "absurd_dimensions": 8, "deflate_bomb": 2, "ts_lie": 9,
    "duplicate": 4, "conflict": 4, "reencode_valid": 5,
}


# ----------------------------------------------------------------------------- DICOM structure


@dataclasses.dataclass(frozen=True)
class Element:
    start: int  # offset of the tag
    tag: int
    vr: str | None  # None in implicit VR
    length: int  # 0xFFFFFFFF = undefined
    value_start: int
    end: int  # offset after the element (after the delimiter for undefined length)


_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def body_offset(data: bytes) -> int:
    """Offset of the data set after the File Meta Information (PS3.10 7.1)."""
    if data[128:132] != b"DICM" or data[132:134] != b"\x02\x00":
        raise ValueError("not a PS3.10 file with group length first")
    return 144 + struct.unpack("<L", data[140:144])[0]


def transfer_syntax(data: bytes) -> str:
    i = data.index(b"\x02\x00\x10\x00", 132)
    n = struct.unpack("<H", data[i + 6:i + 8])[0]
    return data[i + 8:i + 8 + n].rstrip(b"\x00 ").decode()


def _read_element(data: bytes, pos: int, implicit: bool) -> tuple[int, str | None, int, int]:
    g, e = struct.unpack("<HH", data[pos:pos + 4])
    tag = (g << 16) | e
    if g == 0xFFFE:  # item / delimiters: always implicit form
        return tag, None, struct.unpack("<L", data[pos + 4:pos + 8])[0], pos + 8
    if implicit:
        return tag, None, struct.unpack("<L", data[pos + 4:pos + 8])[0], pos + 8
    vr = data[pos + 4:pos + 6]
    if vr in _LONG_VRS:
        return tag, vr.decode(), struct.unpack("<L", data[pos + 8:pos + 12])[0], pos + 12
    return tag, vr.decode("latin-1"), struct.unpack("<H", data[pos + 6:pos + 8])[0], pos + 8


def _skip_undefined(data: bytes, pos: int, implicit: bool) -> int:
    """From the first item of an undefined-length sequence, return the offset after its delimiter."""
    while pos < len(data):
        tag, _vr, length, vstart = _read_element(data, pos, implicit)
        if tag == 0xFFFEE0DD:
            return vstart
        if tag == 0xFFFEE000:
            if length == 0xFFFFFFFF:
                pos = vstart
                while True:  # elements of the item until the item delimiter
                    t2, _v2, l2, vs2 = _read_element(data, pos, implicit)
                    if t2 == 0xFFFEE00D:
                        pos = vs2
                        break
                    pos = _skip_undefined(data, vs2, implicit) if l2 == 0xFFFFFFFF else vs2 + l2
            else:
                pos = vstart + length
        else:
            raise ValueError(f"unexpected tag {tag:08x} in a sequence")
    raise ValueError("sequence never closed")


def elements(data: bytes) -> list[Element]:
    """Top-level data elements of a clean Little Endian file (Implicit or Explicit VR)."""
    implicit = transfer_syntax(data) == "1.2.840.10008.1.2"
    pos, out = body_offset(data), []
    while pos + 8 <= len(data):
        tag, vr, length, vstart = _read_element(data, pos, implicit)
        end = _skip_undefined(data, vstart, implicit) if length == 0xFFFFFFFF else vstart + length
        out.append(Element(pos, tag, vr, length, vstart, end))
        pos = end
    return out


def explicit_le(data: bytes) -> bytes:
    """The same object re-encoded as Explicit VR Little Endian (a valid file)."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _with_meta(data: bytes, **changes: Any) -> bytes:
    """``data`` with its File Meta Information rewritten (body unchanged)."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    for k, v in changes.items():
        setattr(meta, k, v)
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_file_meta_info(buf, meta, enforce_standard=True)
    return data[:128] + b"DICM" + buf.getvalue() + data[body_offset(data):]


def _pixel_element(els: list[Element]) -> Element:
    return next(e for e in els if e.tag == 0x7FE00010)


# ----------------------------------------------------------------------------- mutators


def mutate(kind: str, data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One seeded mutation of a clean file; returns (bytes, short description)."""
    els = elements(data)
    px = _pixel_element(els)
    if kind == "bitflip_header":
        out = bytearray(data)
        n = rng.choice((1, 1, 2, 4, 8))
        for _ in range(n):
            i = rng.randrange(0, px.value_start)
            out[i] ^= 1 << rng.randrange(8)
        return bytes(out), f"{n} bit(s) flipped before the pixel data"
    if kind == "bitflip_pixels":
        out = bytearray(data)
        n = rng.choice((1, 3, 16))
        for _ in range(n):
            i = rng.randrange(px.value_start, px.end)
            out[i] ^= 1 << rng.randrange(8)
        return bytes(out), f"{n} bit(s) flipped in the pixel data"
    if kind == "truncate":
        meta_end = body_offset(data)
        e = rng.choice(els)
        points = {"preamble": rng.randrange(1, 128), "magic": 130, "meta_group": 140,
                  "meta_end": meta_end, "meta_inside": rng.randrange(132, meta_end),
                  "element_start": e.start, "element_value": e.value_start + max(0, e.end - e.value_start) // 2, "pixel_tag": px.start, "pixel_value": px.value_start,
                  "pixel_middle": (px.value_start + px.end) // 2, "last_byte": len(data) - 1}
        where = rng.choice(sorted(points))
        return data[:points[where]], f"truncated at {where}"
    if kind == "wrong_vr":
        data = explicit_le(data) if transfer_syntax(data) == "1.2.840.10008.1.2" else data
        els = [e for e in elements(data) if e.tag != 0x7FE00010 and (e.tag >> 16) != 0x0002]
        e = rng.choice(els)
        vr = rng.choice([b"SQ", b"OB", b"UN", b"US", b"FD", b"XX", b"UI", b"AT", b"DA"])
        return data[:e.start + 4] + vr + data[e.start + 6:], f"VR of a top-level element replaced by {vr.decode()}"
    if kind == "wrong_length":
        implicit = transfer_syntax(data) == "1.2.840.10008.1.2"
        e = rng.choice([x for x in els if x.length != 0xFFFFFFFF])
        long_form = implicit or (e.vr or "").encode() in _LONG_VRS
        choice = rng.choice(("zero", "plus1", "minus1", "odd", "huge", "undefined", "past_eof"))
        if long_form:
            new = {"zero": 0, "plus1": e.length + 1, "minus1": max(e.length - 1, 0), "odd": e.length | 1,
                   "huge": 0xFFFFFFF0, "undefined": 0xFFFFFFFF, "past_eof": len(data)}[choice]
            off = e.value_start - 4
            return data[:off] + struct.pack("<L", new) + data[off + 4:], f"length set to {choice}"
        new = {"zero": 0, "plus1": e.length + 1, "minus1": max(e.length - 1, 0), "odd": e.length | 1,
               "huge": 0xFFFF, "undefined": 0xFFFF, "past_eof": 0xFFFE}[choice]
        off = e.value_start - 2
        return data[:off] + struct.pack("<H", new) + data[off + 2:], f"short length set to {choice}"
    if kind == "unclosed_sequence":
        implicit = transfer_syntax(data) == "1.2.840.10008.1.2"
        head = b"\x40\x00\x30\xa7" + (b"" if implicit else b"SQ\x00\x00") + b"\xff\xff\xff\xff"
        item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
        depth = rng.choice((1, 3))
        return data[:px.start] + (head + item) * depth + data[px.start:], f"{depth} undefined-length sequence(s) never closed"
    if kind == "deep_nesting":
        implicit = transfer_syntax(data) == "1.2.840.10008.1.2"
        depth = rng.choice((64, 400, 2000))
        open_ = b"\x40\x00\x30\xa7" + (b"" if implicit else b"SQ\x00\x00") + b"\xff\xff\xff\xff" \
            + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
        close = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00\xfe\xff\xdd\xe0\x00\x00\x00\x00"
        return data[:px.start] + open_ * depth + close * depth + data[px.start:], f"sequences nested {depth} deep"
    if kind == "absurd_dimensions":
        import pydicom

        ds = pydicom.dcmread(io.BytesIO(data))
        attr, value = rng.choice([("Rows", 65535), ("Rows", 0), ("Columns", 65535), ("Columns", 1),
                                  ("NumberOfFrames", 1000000), ("NumberOfFrames", 0), ("BitsAllocated", 64),
                                  ("BitsAllocated", 13), ("BitsAllocated", 0), ("SamplesPerPixel", 255),
                                  ("SamplesPerPixel", 0), ("BitsStored", 40), ("HighBit", 90)])
        if attr == "NumberOfFrames":
            ds.NumberOfFrames = value
        else:
            setattr(ds, attr, value)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue(), f"{attr} set to {value}"
    if kind == "deflate_bomb":
        plain = explicit_le(data)
        body = plain[body_offset(plain):]
        inflated_mib = rng.choice((600, 1100))
        body = body[: body.index(b"\xe0\x7f\x10\x00OW")] + b"\xe0\x7f\x10\x00OW\x00\x00" \
            + struct.pack("<L", inflated_mib << 20)
        comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        zero = bytes(1 << 20)
        parts = [comp.compress(body)] + [comp.compress(zero) for _ in range(inflated_mib)] + [comp.flush()]
        meta = _with_meta(plain, TransferSyntaxUID="1.2.840.10008.1.2.1.99")
        return (meta[:body_offset(meta)] + b"".join(parts),
            f"deflated body inflating to {inflated_mib} MiB")
    if kind == "ts_lie":
        ts = rng.choice(["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
                         "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90",
                         "1.2.840.10008.1.2.4.201", "1.2.3.4.5.6.7"])
        if ts == transfer_syntax(data):
            ts = "1.2.840.10008.1.2.2"
        return _with_meta(data, TransferSyntaxUID=ts), f"transfer syntax relabelled {ts}"
    if kind == "reencode_valid":
        return explicit_le(data), "re-encoded as Explicit VR Little Endian (valid)"
    raise ValueError(f"unknown mutation kind {kind!r}")


def conflict_copy(data: bytes, rng: random.Random) -> bytes:
    """Same SOP Instance UID, one pixel byte different."""
    px = _pixel_element(elements(data))
    out = bytearray(data)
    out[rng.randrange(px.value_start, px.end)] ^= 0x10
    return bytes(out)


# ----------------------------------------------------------------------------- batch layout


def donor_series(exclude_patients: set[str]) -> list[pathlib.Path]:
    """Image series folders of the cohort usable as mutation donors (sorted)."""
    return sorted(p for p in COHORT.glob("STS_*/*/image") if p.parent.parent.name not in exclude_patients)


def valid_series(full: bool) -> list[tuple[str, pathlib.Path]]:
    """(relative folder, source folder) of the untouched valid series (STS_008; CT+RTSTRUCT, or all)."""
    base = STS_IBSI / "STS_008"
    mods = ("CT", "PET", "MR_T1") if full else ("CT",)
    out = []
    for m in mods:
        out.append((f"valid/{m}/image", base / m / "image"))
        out.append((f"valid/{m}/mask", base / m / "mask"))
    return out


def build_batch(out: pathlib.Path, *, n: int, seed: int, full: bool, per_series: int = 40,
                kinds: dict[str, int] | None = None) -> dict[str, Any]:
    """Write ``out/clean`` (valid series) and ``out/batch`` (valid + damaged series); return the plan."""
    rng = random.Random(seed)
    kinds = kinds or KINDS
    clean, batch = out / "clean", out / "batch"
    for root in (clean, batch):
        if root.exists():
            shutil.rmtree(root)
    for rel, src in valid_series(full):
        shutil.copytree(src, clean / rel)
        shutil.copytree(src, batch / rel)
    donors = donor_series({"STS_008"})
    rng.shuffle(donors)
    plan: list[dict[str, Any]] = []
    names = list(kinds)
    weights = [kinds[k] for k in names]
    made, d = 0, 0
    while made < n:
        series = donors[d % len(donors)]
        d += 1
        files = sorted(series.glob("*.dcm"))
        dest = batch / f"series{d:03d}"
        dest.mkdir(parents=True)
        if d % 3 == 1:  # an "edge" series: damage only the first and last slice, so the rest still converts
            targets = {0, len(files) - 1} if n - made >= 2 else {0}
        else:  # a "dense" series: many damaged slices (a gap makes QC reject the series: qc_failed)
            take = min(n - made, per_series, max(1, int(len(files) * 0.6)))
            targets = set(rng.sample(range(len(files)), take))
        for i, f in enumerate(files):
            data = f.read_bytes()
            if i not in targets:
                shutil.copyfile(f, dest / f"{i:04d}.dcm")
                continue
            kind = rng.choices(names, weights)[0]
            entry = {"file": f"series{d:03d}/{i:04d}.dcm", "kind": kind, "donor": str(f.relative_to(SHARED))}
            if kind in ("duplicate", "conflict"):
                shutil.copyfile(f, dest / f"{i:04d}.dcm")
                copy = data if kind == "duplicate" else conflict_copy(data, rng)
                (dest / f"{i:04d}b.dcm").write_bytes(copy)
                entry.update(file=f"series{d:03d}/{i:04d}b.dcm", twin=f"series{d:03d}/{i:04d}.dcm",
                             what="identical copy" if kind == "duplicate" else "same UID, one pixel byte differs")
            else:
                mutated, what = mutate(kind, data, rng)
                (dest / f"{i:04d}.dcm").write_bytes(mutated)
                entry["what"] = what
            plan.append(entry)
            made += 1
    return {"seed": seed, "n": n, "full": full, "mutations": plan}


# ----------------------------------------------------------------------------- the ingest (child)


def snapshot(root: pathlib.Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def collection_config(**overrides: Any):
    from medflow.config import CollectionConfig

    return CollectionConfig(file_timeout_s=FILE_TIME_LIMIT_S, file_memory_bytes=MEMORY_LIMIT_BYTES,
                            pet_units="as_stored", **overrides)


def _digest(arr, affine) -> str:
    """Digest of a volume's voxels (values and dtype) and its affine (rounded to 1e-6 mm)."""
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(arr).tobytes() + str(arr.dtype).encode()
                          + np.asarray(affine, float).round(6).tobytes()).hexdigest()


def ingest_child(source: pathlib.Path, workspace: pathlib.Path, report: pathlib.Path,
                 probe: list[str]) -> None:
    """Run the pipeline's collection on ``source`` into ``workspace``; write a JSON report."""
    import numpy as np

    from storage.collect import collect_into, guard_limits
    from storage.dicom.guard import inspect_file
    from storage.pseudonym import PseudonymKeys
    from storage.volumes import geometry, read_numpy
    from storage.workspace import Workspace

    cfg = collection_config()
    keys = PseudonymKeys(FUZZ_SECRET)
    ws = Workspace(workspace).ensure()
    limits = guard_limits(cfg)
    probe_times = {}
    for rel in probe:  # every damaged file inspected alone, timed (the in-process part of the guard)
        t0 = time.perf_counter()
        inspect_file(source / rel, limits=limits)
        probe_times[rel] = time.perf_counter() - t0
    folder = ws.root / "collection"
    # instrumentation: keep every converted volume (before QC) for the pixel oracle, outside the workspace
    import storage.collect as collect_module

    converted_dir = report.parent / f"{workspace.name}.converted"
    converted_dir.mkdir(exist_ok=True)
    name = next(n for n in ("collect_files", "collect_folder") if hasattr(collect_module, n))
    real_collect = getattr(collect_module, name)

    counter = iter(range(10**9))  # one number per converted volume across all units (calls)

    def recording_collect(*args: Any, **kwargs: Any):
        res = real_collect(*args, **kwargs)
        for v in res.volumes:
            np.savez(converted_dir / f"{next(counter):05d}.npz", volume=v.volume, affine=np.asarray(v.affine, float),
                     series_uid=np.array(str(v.series_uid)), volume_index=np.array(int(v.volume_index)))
        return res

    setattr(collect_module, name, recording_collect)
    t0 = time.perf_counter()
    # one process converts (workers=1) so that the recording above sees every converted volume
    import inspect

    extra = {"workers": 1} if "workers" in inspect.signature(collect_into).parameters else {}
    remembered = None
    try:  # as the flows do: the source fingerprint first, whose digests the partition then reuses
        from storage.dicom.scan import iter_files, known_digest
        from tasks.collection import source_fingerprint

        source_fingerprint(source)
        files = list(iter_files(source))
        remembered = [sum(known_digest(f, f.stat()) is not None for f in files), len(files)]
    except ImportError:  # an older checkout
        pass
    summary = collect_into(source, folder, config=cfg, keys=keys, workspace=ws.root, run_id="fuzz", **extra)
    seconds = time.perf_counter() - t0
    vols = []
    for v in summary.volumes:
        arr, attrs = read_numpy(folder / v.rel)
        affine, spacing = geometry(attrs)
        vols.append({"series_key": v.meta["series_key"], "volume_index": v.meta["volume_index"],
                     "volume_key": v.meta["volume_key"], "rel": v.rel, "shape": list(arr.shape),
                     "digest": _digest(arr, affine),
                     "affine": np.asarray(affine, float).tolist()})
    masks = []
    for m in summary.masks:
        arr, _attrs = read_numpy(folder / m.rel)
        masks.append({"volume_key": m.meta["volume_key"], "roi_name": m.meta["roi_name"],
                      "digest": hashlib.sha256(np.packbits(arr).tobytes() + str(arr.shape).encode()).hexdigest()})
    report.write_text(json.dumps({"volumes": vols, "masks": masks, "rejections": summary.rejections,
                                  "routed": summary.routed, "n_files": summary.n_files, "seconds": seconds,
                                  "probe_seconds": probe_times, "remembered_digests": remembered}))


def run_child(source: pathlib.Path, workspace: pathlib.Path, *, probe: list[str], timeout_s: float,
              sample_s: float = 0.05) -> dict[str, Any]:
    """Run :func:`ingest_child` in a subprocess; sample the RSS of its process tree."""
    import psutil

    report = workspace.parent / f"{workspace.name}.report.json"
    probe_file = workspace.parent / f"{workspace.name}.probe.json"
    probe_file.write_text(json.dumps(probe))
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--child", str(source), str(workspace),
           str(report), str(probe_file)]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    t0 = time.monotonic()
    log = workspace.parent / f"{workspace.name}.stderr.txt"
    with open(log, "wb") as errfh:  # a file, not a pipe: a chatty child must never block on a full pipe
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errfh, env=env, cwd=str(REPO))
    peak, hung = 0, False
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            total = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, total)
        except psutil.Error:
            pass
        if time.monotonic() - t0 > timeout_s:
            hung = True
            for c in ps.children(recursive=True):
                c.kill()
            proc.kill()
            break
        time.sleep(sample_s)
    proc.wait()
    result: dict[str, Any] = {"exit_code": proc.returncode, "hung": hung, "peak_rss_bytes": peak,
                              "wall_seconds": time.monotonic() - t0,
                              "stderr_tail": log.read_bytes()[-3000:].decode(errors="replace")}
    if proc.returncode == 0 and report.is_file():
        result.update(json.loads(report.read_text()))
    return result


# ----------------------------------------------------------------------------- checks


@contextlib.contextmanager
def _quiet():
    """pydicom warns (and logs) at length about damaged values: silence it while reading mutants."""
    import logging
    import warnings

    log = logging.getLogger("pydicom")
    level, log.level = log.level, logging.CRITICAL
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _series_and_position(path: pathlib.Path):
    """(SeriesInstanceUID, rounded IPP) read by pydicom, or None when unreadable."""
    import pydicom

    try:
        with _quiet():
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        return str(ds.SeriesInstanceUID), tuple(round(float(x), 2) for x in ds.ImagePositionPatient)
    except (Exception, RecursionError):  # noqa: BLE001 - damaged input: no oracle
        return None


def _states_plane(path: pathlib.Path) -> bool:
    """The file holds ImagePositionPatient or ImageOrientationPatient (readable or not)."""
    import pydicom

    try:
        with _quiet():
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        return 0x00200032 in ds or 0x00200037 in ds
    except (Exception, RecursionError):  # noqa: BLE001
        return False


def _series_only(path: pathlib.Path) -> str | None:
    import pydicom

    try:
        with _quiet():
            return str(pydicom.dcmread(path, stop_before_pixels=True, force=True).SeriesInstanceUID)
    except (Exception, RecursionError):  # noqa: BLE001
        return None


def _declare_read_encoding(ds) -> None:
    """A data set read without a Transfer Syntax UID (no or damaged File Meta): declare the encoding pydicom
    detected and read it with, so ``pixel_array`` can decode native pixel data (pydicom refuses otherwise)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is not None and little is not None:
        meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                  ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


@functools.lru_cache(maxsize=4096)
def _decoded(path: pathlib.Path):
    import numpy as np
    import pydicom

    try:
        with _quiet():
            ds = pydicom.dcmread(path, force=True)
            _declare_read_encoding(ds)
            arr = ds.pixel_array.astype(np.float64)
        return arr * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
    except (Exception, RecursionError):  # noqa: BLE001
        return None


def check(plan: dict[str, Any], clean: dict[str, Any], fuzz: dict[str, Any], batch: pathlib.Path,
          before: dict[str, str]) -> dict[str, Any]:
    """Compare the fuzzed run with the clean run; return the summary (``ok`` True when all criteria hold)."""
    import numpy as np

    from storage.dicom.guard import REASON_CODES
    from storage.pseudonym import PseudonymKeys

    keys = PseudonymKeys(FUZZ_SECRET)
    s: dict[str, Any] = {"mutations": len(plan["mutations"]), "files_in_batch": fuzz.get("n_files"),
                         "crashes": 0, "hangs": 0, "wrong_conversions": [], "lost_files": [],
                         "bug_like_quarantine": [], "undocumented_reasons": [], "valid_series_mismatch": [],
                         "inputs_unchanged": snapshot(batch) == before,
                         "peak_rss_gib": round(fuzz.get("peak_rss_bytes", 0) / 1024**3, 3),
                         "batch_seconds": round(fuzz.get("seconds", float("nan")), 1)}
    if fuzz["hung"]:
        s["hangs"] = 1
    elif fuzz["exit_code"] != 0:
        s["crashes"] = 1
        s["crash_stderr_tail"] = fuzz["stderr_tail"]
    probe = fuzz.get("probe_seconds", {})
    s["max_file_inspect_seconds"] = round(max(probe.values(), default=0.0), 3)
    s["partition_remembered_digests"] = fuzz.get("remembered_digests")  # [reused by the partition, files]
    s["slow_files"] = sorted(k for k, v in probe.items() if v > FILE_TIME_LIMIT_S)
    if s["crashes"] or s["hangs"]:
        s["ok"] = False
        return s
    # 1. valid series identical to the clean run
    def by_series(run):
        return {(v["series_key"], v["volume_index"]): v["digest"] for v in run["volumes"]}
    clean_vols, fuzz_vols = by_series(clean), by_series(fuzz)
    for key, digest in clean_vols.items():
        if fuzz_vols.get(key) != digest:
            s["valid_series_mismatch"].append(f"volume {key[0][:12]}#{key[1]}")
    clean_masks = sorted((m["volume_key"], m["roi_name"], m["digest"]) for m in clean["masks"])
    fuzz_masks = sorted((m["volume_key"], m["roi_name"], m["digest"]) for m in fuzz["masks"]
                        if m["volume_key"] in {v["volume_key"] for v in clean["volumes"]})
    if clean_masks != fuzz_masks:
        s["valid_series_mismatch"].append("masks differ")
    # 2. reason codes: documented, and no exception disguised as a data defect
    records = list(fuzz["rejections"]) + list(fuzz["routed"])
    reasons = collections.Counter(r["reason"] for r in records)
    s["quarantined_by_reason"] = dict(sorted(reasons.items()))
    documented = set(REASON_CODES) | _documented_codes()
    for r in records:
        code = r["reason"]
        if code in BUG_LIKE_CODES and r.get("exception_type"):
            s["bug_like_quarantine"].append(f"{code} ({r['exception_type']})")
        if code not in documented and not code.startswith("non_image_object:"):
            s["undocumented_reasons"].append(code)
    s["undocumented_reasons"] = sorted(set(s["undocumented_reasons"]))
    rejected = {r["sha256"] for r in records if r.get("sha256")}
    # series-level records (QC failed after conversion) name the series, not the files
    rejected_series = {r["series_key"] for r in records if r.get("series_key") and r["reason"] == "qc_failed"}
    # 3. every slice of every non-reference volume equals the decode of a batch file at that position
    valid_prefix = "valid/"
    index: dict[tuple[str, tuple], list[str]] = collections.defaultdict(list)
    series_of: dict[str, str] = {}
    series_files: dict[str, list[str]] = collections.defaultdict(list)
    for rel in before:
        if rel.startswith(valid_prefix) or "mask" in rel:
            continue
        kind = next((m["kind"] for m in plan["mutations"] if m["file"] == rel), None)
        if kind == "deflate_bomb":
            continue
        sp = _series_and_position(batch / rel)
        uid = _series_only(batch / rel)
        if uid is not None:
            series_files[keys.series_key(uid)].append(rel)
        if sp is not None:
            index[(keys.series_key(sp[0]), sp[1])].append(rel)
            series_of[rel] = keys.series_key(sp[0])
    converted: set[str] = set()
    s["slices_matched_by_content"] = 0  # checked by pixels only: their position matched no file's
    clean_keys = set(clean_vols)
    written = {(v["series_key"], v["volume_index"]): v["digest"] for v in fuzz["volumes"]}
    matched: set[tuple[str, int]] = set()
    for npz in sorted(pathlib.Path(fuzz["_converted"]).glob("*.npz")):
        with np.load(npz) as z:
            series_key = keys.series_key(str(z["series_uid"]))
            if (series_key, int(z["volume_index"])) in clean_keys:
                continue
            arr, affine, index_ = z["volume"], z["affine"], int(z["volume_index"])
        key = (series_key, index_)
        # Several units can convert parts of one series (instances disagreeing on PatientID), each numbering its
        # volumes from v0, so one volume key can name several converted arrays of which at most one is written
        # (the others: series_patient_conflict, per file). What the workspace holds must be exactly one of the
        # converted arrays of its key (checked after the loop); an array that is not it was never written.
        if key not in written or written[key] != _digest(arr, affine):
            continue  # not written: QC (qc_failed, per series) or another part kept (series_patient_conflict)
        matched.add(key)
        slices = [arr] if arr.ndim == 2 else list(arr)
        for k, plane in enumerate(slices):
            origin = affine[:3, 3] if arr.ndim == 2 else (affine @ np.array([k, 0, 0, 1.0]))[:3]
            pos = tuple(round(float(x), 2) for x in origin)
            ok = False
            for rel in index.get((series_key, pos), []):
                want = _decoded(batch / rel)
                if want is not None and want.shape == plane.shape and np.allclose(plane, want, rtol=1e-6, atol=1e-3):
                    converted.add(rel)
                    ok = True
            if not ok:  # no usable position (e.g. a damaged ImagePositionPatient): match by content in the series
                for rel in series_files.get(series_key, []):
                    want = _decoded(batch / rel)
                    if want is not None and want.shape == plane.shape and np.allclose(plane, want, rtol=1e-6,
                                                                                       atol=1e-3):
                        converted.add(rel)
                        ok = True
                        s["slices_matched_by_content"] += 1
                        if arr.ndim == 2 and _states_plane(batch / rel):
                            # a 2-D image takes its position from its one file: not there although the file states
                            # a plane = a position/orientation invented for an unreadable one (fuzz seed 7: an
                            # ImagePositionPatient of "-798.3t..." or with VR US/AT became a 2-D image at the origin)
                            s["wrong_conversions"].append(f"converted volume {npz.stem} (series {series_key[:12]}): "
                                                          "a 2-D image not at the plane its file states")
                        break
            if not ok:
                s["wrong_conversions"].append(f"converted volume {npz.stem} (series {series_key[:12]}) slice {k}")
    s["wrong_conversions"] += [f"workspace volume {k[0][:12]}#{k[1]} differs from every converted array of its key"
                               for k in written if k not in clean_keys and k not in matched]
    # 4. every damaged-series file converted or quarantined/routed
    for rel, sha in before.items():
        if rel.startswith(valid_prefix):
            continue
        if rel not in converted and sha not in rejected and series_of.get(rel) not in rejected_series:
            kind = next((m["kind"] for m in plan["mutations"] if m["file"] == rel), "unmutated")
            s["lost_files"].append(f"{rel} ({kind})")
    # outcome of each mutation kind (converted with correct pixels, or quarantined/routed)
    outcomes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for m in plan["mutations"]:
        rel = m["file"]
        state = "converted" if rel in converted else ("quarantined" if before[rel] in rejected
                                                      or series_of.get(rel) in rejected_series else "lost")
        outcomes[m["kind"]][state] += 1
    s["outcome_by_kind"] = {k: dict(v) for k, v in sorted(outcomes.items())}
    s["damaged_series_files_converted"] = len(converted)
    # valid series files must not be quarantined
    for rel, sha in before.items():
        if rel.startswith(valid_prefix) and sha in rejected:
            s["valid_series_mismatch"].append(f"valid file quarantined: {rel}")
    s["ok"] = bool(s["inputs_unchanged"] and not s["wrong_conversions"] and not s["lost_files"]
                   and not s["bug_like_quarantine"] and not s["undocumented_reasons"]
                   and not s["valid_series_mismatch"] and not s["slow_files"]
                   and fuzz.get("peak_rss_bytes", 0) <= MEMORY_LIMIT_BYTES)
    return s


def _documented_codes() -> set[str]:
    """Reason codes of the stages after the guard (scan, grouping, conversion, RTSTRUCT/SEG)."""
    return {"unreadable_header", "missing_geometry", "missing_slices", "seg_missing_geometry", "decode_failed",
            "duplicate_slice_positions", "uneven_spacing_mm", "inconsistent_geometry", "incomplete_time_point",
            "seg_reference_not_found", "seg_bad_pixels", "rtstruct_reference_not_found", "rtstruct_no_contours",
            "rtstruct_bad_contour", "mask_reference_missing", "qc_failed", "mosaic_without_slice_count",
            "ambiguous_frame_of_reference", "burned_in_annotation", "encapsulated_document"}


def run_fuzz(*, n: int, seed: int, out: pathlib.Path, full: bool = True, per_series: int = 40,
             timeout_s: float | None = None) -> dict[str, Any]:
    """Build the batch, run clean and fuzzed ingests, check; returns the summary dict."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    plan = build_batch(out, n=n, seed=seed, full=full, per_series=per_series)
    (out / "plan.json").write_text(json.dumps(plan, indent=1))
    batch = out / "batch"
    before = snapshot(batch)
    for ws in (out / "ws-clean", out / "ws-fuzz", out / "ws-clean.converted", out / "ws-fuzz.converted"):
        if ws.exists():
            shutil.rmtree(ws)
    limit = timeout_s or (300.0 + FILE_TIME_LIMIT_S * 4 + 2.0 * len(before))
    clean = run_child(out / "clean", out / "ws-clean", probe=[], timeout_s=limit)
    if clean["exit_code"] != 0:
        raise RuntimeError(f"the clean reference run failed: {clean['stderr_tail']}")
    damaged = [m["file"] for m in plan["mutations"]]
    fuzz = run_child(batch, out / "ws-fuzz", probe=damaged, timeout_s=limit + FILE_TIME_LIMIT_S * len(damaged))
    fuzz["_workspace"] = str(out / "ws-fuzz")
    fuzz["_converted"] = str(out / "ws-fuzz.converted")
    (out / "runs.json").write_text(json.dumps({"clean": clean, "fuzz": fuzz, "before": before}))
    return finish(out, plan, seed, t0)


def finish(out: pathlib.Path, plan: dict[str, Any], seed: int, t0: float) -> dict[str, Any]:
    """Check the recorded runs of ``out`` (also ``--recheck OUT`` without re-running)."""
    runs = json.loads((out / "runs.json").read_text())
    clean, fuzz, before = runs["clean"], runs["fuzz"], runs["before"]
    batch = out / "batch"
    summary = check(plan, clean, fuzz, batch, before)
    summary["kinds"] = dict(sorted(collections.Counter(m["kind"] for m in plan["mutations"]).items()))
    summary["seed"], summary["total_seconds"] = seed, round(time.perf_counter() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        src, ws, report, probe = argv[1:5]
        ingest_child(pathlib.Path(src), pathlib.Path(ws), pathlib.Path(report), json.loads(pathlib.Path(probe).read_text()))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="number of mutations")
    ap.add_argument("--seed", type=int, default=1, help="random seed (the batch is a function of it)")
    ap.add_argument("--out", type=pathlib.Path, default=None, help="work folder (default: a new temporary one)")
    ap.add_argument("--small", action="store_true", help="valid set = STS_008 CT only (CI size)")
    ap.add_argument("--per-series", type=int, default=40, help="maximum mutations per donor series")
    ap.add_argument("--recheck", type=pathlib.Path, default=None, help="re-run only the checks on a work folder")
    args = ap.parse_args(argv)
    if args.recheck is not None:
        plan = json.loads((args.recheck / "plan.json").read_text())
        summary = finish(args.recheck, plan, plan["seed"], time.perf_counter())
        print(json.dumps(summary, indent=1))
        return 0 if summary["ok"] else 1
    if args.n < 1:
        ap.error(f"--n must be >= 1, got {args.n}")
    if not COHORT.is_dir():
        print(f"fuzz: reference data not found at {COHORT}", file=sys.stderr)
        return 2
    out = args.out or pathlib.Path(tempfile.mkdtemp(prefix="medflow-fuzz-"))
    summary = run_fuzz(n=args.n, seed=args.seed, out=out, full=not args.small, per_series=args.per_series)
    print(json.dumps(summary, indent=1))
    print(f"fuzz: {'PASS' if summary['ok'] else 'FAIL'}  mutations={summary['mutations']} crashes={summary['crashes']} "
          f"hangs={summary['hangs']} wrong_conversions={len(summary['wrong_conversions'])} "
          f"lost={len(summary['lost_files'])} peak_rss={summary['peak_rss_gib']} GiB  work folder: {out}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
