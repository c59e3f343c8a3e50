"""CI-sized seeded fuzzing of the pipeline's collection (``scripts/fuzz.py``; the full run is 1,000 mutations).

80 seeded mutations of real cohort files (every mutation kind) in donor series, beside the untouched
STS_008 CT series and its RTSTRUCT, ingested as one batch by :func:`storage.collect.collect_into`
in a child process. Pass: the run completes, the valid series and mask are identical to a clean
run, every slice of every other volume equals the pydicom decode of a batch file at that
position, every damaged file is converted that way or quarantined with a documented reason, no
exception is disguised as a data defect, per-file inspection <= 25 s, process-tree RSS <= 2.5 GiB,
inputs byte-identical.
"""

from __future__ import annotations

import hashlib
import importlib.util
import pathlib
import random
import shutil
import sys

import pytest

pytestmark = pytest.mark.slow

_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "fuzz.py"


def _fuzz_module():
    spec = importlib.util.spec_from_file_location("medflow_fuzz_script", _SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def fuzz(shared_data):
    return _fuzz_module()


def test_mutators_are_seeded_and_structural(fuzz, shared_data):
    f = sorted((shared_data / "sts_cohort" / "dicom" / "STS_003" / "CT" / "image").glob("*.dcm"))[0]
    data = f.read_bytes()
    els = fuzz.elements(data)
    assert els[-1].tag == 0x7FE00010 and els[-1].end == len(data)  # the walker reaches the pixel data end
    for kind in fuzz.KINDS:
        if kind in ("duplicate", "conflict", "deflate_bomb"):
            continue
        a = fuzz.mutate(kind, data, random.Random(5))
        b = fuzz.mutate(kind, data, random.Random(5))
        assert a == b, kind  # same seed, same bytes
        if kind != "reencode_valid":
            assert a[0] != data, kind


def test_fuzz_batch_seed_set(fuzz, tmp_path, capsys):
    summary = fuzz.run_fuzz(n=80, seed=20261203, out=tmp_path, full=False, per_series=40)
    with capsys.disabled():
        print(f"\nfuzz (80 mutations, seed 20261203): crashes {summary['crashes']}, hangs {summary['hangs']}, "
              f"wrong {len(summary['wrong_conversions'])}, lost {len(summary['lost_files'])}, "
              f"quarantined by reason {summary.get('quarantined_by_reason')}, "
              f"outcome by kind {summary.get('outcome_by_kind')}, peak RSS {summary['peak_rss_gib']} GiB, "
              f"max inspect {summary['max_file_inspect_seconds']} s")
    assert summary["crashes"] == 0, summary.get("crash_stderr_tail")
    assert summary["hangs"] == 0
    assert summary["wrong_conversions"] == []
    assert summary["lost_files"] == []
    assert summary["bug_like_quarantine"] == [] and summary["undocumented_reasons"] == []
    assert summary["valid_series_mismatch"] == []
    assert summary["inputs_unchanged"]
    assert summary["slow_files"] == [] and summary["peak_rss_gib"] <= 2.5
    assert set(summary["kinds"]) == set(fuzz.KINDS)  # every kind of damage is in the seed set
    # the oracle is not vacuous: damaged series were converted (and checked slice by slice) and
    # damaged files were quarantined
    assert summary["damaged_series_files_converted"] > 20
    assert sum(summary["quarantined_by_reason"].values()) >= 20
    assert summary["ok"]


# --------------------------------------------------------------------------- regressions found by fuzzing


@pytest.mark.parametrize("keyword", ["Modality", "PixelSpacing", "ImageType"])
def test_regression_top_level_wrong_vr(fuzz, shared_data, tmp_path, keyword):
    """Found by ``scripts/fuzz.py --n 300 --seed 2``: a top-level element whose VR was replaced by FD
    (Modality) made pydicom raise inside the collection policy and the whole batch crashed; on
    PixelSpacing/ImageType one such slice made its whole series ``series_split_failed``. Now the file
    is rejected at read time (every top-level value must decode under its VR) and the rest converts."""
    from pydicom.datadict import tag_for_keyword

    from storage.collect import collect_into
    from storage.pseudonym import PseudonymKeys

    files = sorted((shared_data / "sts_cohort" / "dicom" / "STS_003" / "CT" / "image").glob("*.dcm"))
    src = tmp_path / "src"
    src.mkdir()
    for f in files[:-1]:
        (src / f.name).write_bytes(f.read_bytes())
    data = fuzz.explicit_le(files[-1].read_bytes())
    el = next(e for e in fuzz.elements(data) if e.tag == tag_for_keyword(keyword))
    (src / files[-1].name).write_bytes(data[:el.start + 4] + b"FD" + data[el.start + 6:])  # the last slice: no gap
    summary = collect_into(src, tmp_path / "out", config=fuzz.collection_config(), keys=PseudonymKeys("r" * 32),
                           workspace=tmp_path / "ws", run_id="regression")
    assert [v.meta["shape"][0] for v in summary.volumes] == [len(files) - 1]
    assert [r["reason"] for r in summary.rejections] == ["unreadable_header"]


def test_regression_patient_of_never_raises(fuzz, shared_data):
    """Found by ``scripts/fuzz.py --n 300 --seed 2`` (and the CI seed set): a file cut inside the File
    Meta group length (at byte 140) made ``storage.dicom.units.patient_of`` raise ``struct.error`` and
    the whole collection crashed. Every prefix and 300 seeded mutations of a real file must give a
    PatientID or None."""
    from storage.dicom.units import patient_of

    data = sorted((shared_data / "sts_cohort" / "dicom" / "STS_003" / "CT" / "image").glob("*.dcm"))[0].read_bytes()
    body = fuzz.body_offset(data)
    for n in [*range(0, body + 64), len(data) // 2, len(data) - 1]:
        assert patient_of(data[:n]) in (None, "", "STS_003"), n
    rng = random.Random(2)
    kinds = [k for k in fuzz.KINDS if k not in ("duplicate", "conflict", "deflate_bomb")]
    for _ in range(300):
        mutated, _what = fuzz.mutate(rng.choice(kinds), data, rng)
        assert patient_of(mutated) is None or isinstance(patient_of(mutated), str)


# seed 7 (``scripts/fuzz.py --n 1000 --seed 7``): the exact damaged files, rebuilt from their donors by the bits the
# run flipped (byte offset -> XOR mask, read off the run's batch against the donor)
_SEED7_0024 = ("STS_026/CT/image/000024.dcm", {1199: 0x20, 2022: 0x40})  # series015/0024.dcm: IPP z "-798.3t0..."
_SEED7_0038 = ("STS_026/MR_T1/image/000038.dcm",  # series035/0038.dcm: File Meta tag, IOP, SeriesUID, SliceThickness
               {44: 0x20, 132: 0x02, 715: 0x10, 1002: 0x04, 1401: 0x02, 1687: 0x40, 1891: 0x04, 2094: 0x04})


def _cohort(shared_data):
    return shared_data / "sts_cohort" / "dicom"


def _flipped(path, flips: dict[int, int]) -> bytes:
    data = bytearray(path.read_bytes())
    for i, mask in flips.items():
        data[i] ^= mask
    return bytes(data)


def _collect(fuzz, src, tmp_path, **kw):
    from storage.collect import collect_into
    from storage.pseudonym import PseudonymKeys

    return collect_into(src, tmp_path / "out", config=fuzz.collection_config(), keys=PseudonymKeys("r" * 32),
                        workspace=tmp_path / "ws", run_id="regression", **kw)


def test_regression_damaged_position_is_quarantined_not_made_2d(fuzz, shared_data, tmp_path):
    """Seed 7, series015/0024.dcm: two header bits flipped, one turning ImagePositionPatient's z into
    "-798.3t000000000". pydicom keeps an unparseable DS as a string, medflow's number reader took it for an
    absent position, and the CT slice was converted as a separate 2-D image placed at the origin (0, 0, 0)
    (wrong geometry, reported as a wrong conversion and a lost file). Now a top-level DS value that is not a
    number rejects the file as ``invalid_attribute`` and the rest of the series converts."""
    rel, flips = _SEED7_0024
    donor = _cohort(shared_data) / rel
    files = sorted(donor.parent.glob("*.dcm"))
    keep = files[:files.index(donor)]  # the slices before it: the damaged one is the last slice, no gap
    src = tmp_path / "src"
    src.mkdir()
    for f in keep:
        (src / f.name).write_bytes(f.read_bytes())
    (src / donor.name).write_bytes(_flipped(donor, flips))
    summary = _collect(fuzz, src, tmp_path)
    assert [(v.meta["kind"], v.meta["shape"][0]) for v in summary.volumes] == [("3d", len(keep))]
    assert [r["reason"] for r in summary.rejections] == ["invalid_attribute"]
    assert "ImagePositionPatient" in summary.rejections[0]["detail"]
    assert summary.rejections[0]["sha256"] == hashlib.sha256((src / donor.name).read_bytes()).hexdigest()


def test_regression_damaged_slice_thickness_is_quarantined_not_defaulted(fuzz, shared_data, tmp_path):
    """Seed 7, series035/0038.dcm: eight bits flipped; the SeriesInstanceUID changed (a series of its own)
    and SliceThickness became "3.26994y99999999". The single slice was converted with a slice spacing of
    1 mm (the default for an absent SliceThickness) instead of 3.27 mm. Now quarantined (invalid_attribute)."""
    rel, flips = _SEED7_0038
    src = tmp_path / "src"
    src.mkdir()
    (src / "0038.dcm").write_bytes(_flipped(_cohort(shared_data) / rel, flips))
    summary = _collect(fuzz, src, tmp_path)
    assert summary.volumes == []
    assert [r["reason"] for r in summary.rejections] == ["invalid_attribute"]
    assert "SliceThickness" in summary.rejections[0]["detail"]


def test_regression_oracle_decodes_a_file_without_transfer_syntax(fuzz, shared_data, tmp_path):
    """Seed 7, series035/0038.dcm also had its first File Meta tag damaged (0002,0000 -> 0000,0000): pydicom
    then reads the data set with no Transfer Syntax UID (it detects the encoding) and its ``pixel_array``
    refuses to decode, so the harness's oracle had no reference and called medflow's correct pixels a wrong
    conversion. The oracle now declares the encoding pydicom read the data set with. That one flip alone:
    medflow converts the slice, and the oracle's decode equals it and the donor's pixels."""
    import numpy as np
    import pydicom

    rel, _flips = _SEED7_0038
    donor = _cohort(shared_data) / rel
    src = tmp_path / "src"
    src.mkdir()
    path = src / "0038.dcm"
    path.write_bytes(_flipped(donor, {132: 0x02}))
    want = fuzz._decoded(path)
    assert want is not None
    ref = pydicom.dcmread(donor)
    assert "RescaleSlope" not in ref and np.array_equal(want, ref.pixel_array)
    summary = _collect(fuzz, src, tmp_path)
    assert summary.rejections == []
    (vol,) = summary.volumes
    from storage.volumes import read_numpy

    arr, _attrs = read_numpy(tmp_path / "out" / vol.rel)
    assert np.array_equal(arr[0], want)


def _split_series_source(donor_dir, dest, *, n: int, gap: bool, other_patient: str) -> tuple[str, list[str]]:
    """``n`` slices of a donor series (the middle one left out when ``gap``), the last with another PatientID.
    Returns the relative name of that file and of the others."""
    import pydicom

    files = sorted(donor_dir.glob("*.dcm"))[:n]
    dest.mkdir(parents=True)
    names = []
    for i, f in enumerate(files[:-1]):
        if gap and i == len(files) // 2:
            continue
        (dest / f.name).write_bytes(f.read_bytes())
        names.append(f.name)
    ds = pydicom.dcmread(files[-1])
    ds.PatientID = other_patient
    ds.save_as(dest / files[-1].name)
    return files[-1].name, names


def test_regression_split_series_owner_counts_qc_rejected_part(fuzz, shared_data, tmp_path):
    """Seed 7, series015: a series split over two units by a damaged PatientID. The larger part failed QC
    (missing slices) and so was absent from the converted volumes; the owner of each volume key was chosen
    among *converted* volumes only and by ``shape[0]`` (the rows, for a 2-D image), so a lone slice of the
    other part (or a 2-D image) was kept as the series' volume. Now the owner is the unit holding most of the
    series' files, QC-rejected volumes included: nothing of the series is written and the lone slice is
    quarantined as series_patient_conflict."""
    src = tmp_path / "src"
    other, _names = _split_series_source(_cohort(shared_data) / "STS_026" / "CT" / "image", src, n=12, gap=True,
                                         other_patient="STS_026X")
    summary = _collect(fuzz, src, tmp_path, workers=1)
    assert summary.volumes == []
    reasons = sorted(r["reason"] for r in summary.rejections)
    assert reasons == ["qc_failed", "series_patient_conflict"], reasons
    conflict = next(r for r in summary.rejections if r["reason"] == "series_patient_conflict")
    assert conflict["sha256"] == hashlib.sha256((src / other).read_bytes()).hexdigest()
    assert (tmp_path / "ws" / "quarantine" / f"{conflict['sha256']}.json").is_file()


def test_regression_oracle_matches_written_volume_not_first_of_its_key(fuzz, shared_data, tmp_path):
    """Seed 7, "workspace volume of 00016 differs from the converted array": two units converted parts of one
    series, both numbered v0; the oracle compared the workspace volume with the *first* converted array of
    that key (the dropped part, series_patient_conflict), called it a wrong conversion, then skipped the
    array that was written (so its files were "lost"). Here the dropped 1-slice part's unit is converted
    first (units go by their smallest file digest); the oracle must find the written 9-slice part."""
    from storage.dicom.units import partition

    donor = _cohort(shared_data) / "STS_026" / "CT" / "image"
    for k in range(200):  # a PatientID whose file digest puts the 1-slice unit first (deterministic search)
        batch = tmp_path / f"batch{k}"
        other, names = _split_series_source(donor, batch / "series001", n=10, gap=False, other_patient=f"X{k}")
        units, _ = partition(sorted(batch.rglob("*.dcm")))
        if [p.name for p, _sha in units[0]] == [other]:
            break
        shutil.rmtree(batch)
    else:
        pytest.fail("no PatientID puts the 1-slice unit first")
    before = fuzz.snapshot(batch)
    run = fuzz.run_child(batch, tmp_path / "ws-fuzz", probe=[], timeout_s=600)
    assert run["exit_code"] == 0, run["stderr_tail"]
    run["_converted"] = str(tmp_path / "ws-fuzz.converted")
    assert len(list((tmp_path / "ws-fuzz.converted").glob("*.npz"))) == 2  # both parts were converted
    plan = {"mutations": [{"file": f"series001/{other}", "kind": "bitflip_header"}]}
    s = fuzz.check(plan, {"volumes": [], "masks": []}, run, batch, before)
    assert s["wrong_conversions"] == [] and s["lost_files"] == []
    assert s["damaged_series_files_converted"] == len(names)  # the written part, checked slice by slice
    assert s["quarantined_by_reason"] == {"series_patient_conflict": 1}


@pytest.mark.parametrize(("rel", "keyword", "vr"), [
    ("STS_029/CT/image/000015.dcm", "ImagePositionPatient", b"US"),  # seed 7 series014/0015.dcm
    ("STS_001/MR_T1/image/000040.dcm", "ImagePositionPatient", b"AT"),  # seed 7 series020/0040.dcm
    ("STS_018/MR_T1/image/000024.dcm", "ImageOrientationPatient", b"AT"),  # seed 7 series023/0024.dcm
])
def test_regression_plane_with_wrong_vr_is_quarantined_not_made_2d(fuzz, shared_data, tmp_path, rel, keyword, vr):
    """Seed 7 (found once the oracle checked 2-D images, below): the VR of ImagePositionPatient or
    ImageOrientationPatient replaced by US or AT. The value still decodes (as 25 integers or tags), so the
    file passed the ingest, had no 3-number position / 6-number orientation, and was converted as a 2-D image
    placed at the origin. Now a plane attribute present but unreadable rejects the file (invalid_attribute)."""
    from pydicom.datadict import tag_for_keyword

    donor = _cohort(shared_data) / rel
    files = sorted(donor.parent.glob("*.dcm"))
    keep = files[files.index(donor) - 5:files.index(donor)]
    src = tmp_path / "src"
    src.mkdir()
    for f in keep:
        (src / f.name).write_bytes(f.read_bytes())
    data = fuzz.explicit_le(donor.read_bytes())  # what mutate("wrong_vr") does, on the element it chose
    el = next(e for e in fuzz.elements(data) if e.tag == tag_for_keyword(keyword))
    (src / donor.name).write_bytes(data[:el.start + 4] + vr + data[el.start + 6:])
    summary = _collect(fuzz, src, tmp_path)
    assert [(v.meta["kind"], v.meta["shape"][0]) for v in summary.volumes] == [("3d", len(keep))]
    assert [r["reason"] for r in summary.rejections] == ["invalid_attribute"]
    assert keyword in summary.rejections[0]["detail"]


def test_half_a_plane_is_missing_geometry_not_2d(fuzz, shared_data, tmp_path):
    """The same defect with the attribute gone (e.g. its tag damaged): a slice with ImagePositionPatient but no
    ImageOrientationPatient was a 2-D image with an invented orientation at the origin; now missing_geometry."""
    import pydicom

    files = sorted((_cohort(shared_data) / "STS_018" / "MR_T1" / "image").glob("*.dcm"))[:6]
    src = tmp_path / "src"
    src.mkdir()
    for f in files[:-1]:
        (src / f.name).write_bytes(f.read_bytes())
    ds = pydicom.dcmread(files[-1])
    del ds.ImageOrientationPatient
    ds.save_as(src / files[-1].name)
    summary = _collect(fuzz, src, tmp_path)
    assert [(v.meta["kind"], v.meta["shape"][0]) for v in summary.volumes] == [("3d", len(files) - 1)]
    assert [r["reason"] for r in summary.rejections] == ["missing_geometry"]


@pytest.mark.parametrize("at_its_plane", [True, False])
def test_oracle_checks_where_a_2d_image_is(fuzz, shared_data, tmp_path, at_its_plane):
    """The oracle matched a slice it could not place by pixels alone, so a CT slice converted as a 2-D image at
    an invented position (the origin) passed as correct (seed 7: 9 such volumes before these fixes, 3 after the
    DS check). A 2-D volume must now sit at the plane its file states, when it states one."""
    import numpy as np
    import pydicom

    from storage.pseudonym import PseudonymKeys

    donor = _cohort(shared_data) / "STS_026" / "CT" / "image" / "000024.dcm"
    batch = tmp_path / "batch"
    (batch / "series001").mkdir(parents=True)
    shutil.copyfile(donor, batch / "series001" / "0000.dcm")
    ds = pydicom.dcmread(donor)
    plane = fuzz._decoded(batch / "series001" / "0000.dcm")
    affine = np.eye(4)
    affine[:3, :3] = np.diag([1.0, float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])])[[2, 1, 0]]
    affine[:3, 3] = [float(x) for x in ds.ImagePositionPatient] if at_its_plane else 0.0
    converted = tmp_path / "ws-fuzz.converted"
    converted.mkdir()
    np.savez(converted / "00000.npz", volume=plane, affine=affine, series_uid=np.array(str(ds.SeriesInstanceUID)),
             volume_index=np.array(0))
    series_key = PseudonymKeys(fuzz.FUZZ_SECRET).series_key(str(ds.SeriesInstanceUID))
    run = {"hung": False, "exit_code": 0, "peak_rss_bytes": 0, "seconds": 0.0, "probe_seconds": {}, "n_files": 1,
           "volumes": [{"series_key": series_key, "volume_index": 0, "digest": fuzz._digest(plane, affine)}],
           "masks": [], "rejections": [], "routed": [], "_converted": str(converted)}
    plan = {"mutations": [{"file": "series001/0000.dcm", "kind": "bitflip_header"}]}
    s = fuzz.check(plan, {"volumes": [], "masks": []}, run, batch, fuzz.snapshot(batch))
    assert s["lost_files"] == [] and s["damaged_series_files_converted"] == 1
    if at_its_plane:
        assert s["wrong_conversions"] == [] and s["slices_matched_by_content"] == 0
    else:
        assert s["wrong_conversions"] == ["converted volume 00000 (series " + series_key[:12] + "): "
                                          "a 2-D image not at the plane its file states"]
