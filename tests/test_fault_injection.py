"""Bugs are not data (issue #12): a fault in medflow's own code fails the run, it is never quarantined.

Faults are injected into the conversion code and into the decode workers' start-up; the
collection (and ``medflow run``) must fail with a one-line message naming the stage and a
pseudonymous input handle, with no PHI, and nothing may be quarantined for it. Real data
defects keep their reason codes (tests/test_malformed_batch.py, tests/test_guard.py).
"""

import multiprocessing
import os
import pathlib
import shutil
import subprocess
import sys

import pydicom
import pytest
from phi_canary import plant_canary, scan_for_canary
from pydicom.data import get_testdata_file

import storage.dicom.convert.planes as planes
import storage.dicom.guard.workers as guard_workers
from medflow.config import CollectionConfig
from storage.collect import collect_into
from storage.dicom import collect_folder
from storage.dicom.bugs import IngestBugError, is_bug
from storage.dicom.guard import GuardLimits, guard_files
from storage.pseudonym import PseudonymKeys
from storage.quarantine import QuarantineStore

KEYS = PseudonymKeys("fault-injection-secret-0123456789")
CANARY = "CNRYfault9Zq"


def _broken(*args, **kwargs):
    raise TypeError("injected fault")


def _ct_copy(sample_dicom: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    files = sorted((sample_dicom / "STS_008" / "CT").rglob("*.dcm"))
    assert files
    dst.mkdir(parents=True)
    for i, f in enumerate(files):
        shutil.copyfile(f, dst / f"{i:03d}.dcm")
    return dst


# --------------------------------------------------------------------------- classification


def test_classification_bug_types_from_medflow_frames_only():
    def medflow_like():
        return {}["missing"]

    with pytest.raises(KeyError) as info:
        medflow_like()
    assert is_bug(info.value)  # raised in this (non-data-library) frame
    with pytest.raises(ValueError) as info2:
        int("x")
    assert not is_bug(info2.value)  # ValueError: an invalid value is data
    # a TypeError raised inside pydicom on a file's bytes is a data defect
    from pydicom.valuerep import IS

    with pytest.raises((TypeError, ValueError)) as info3:
        IS(object())
    assert not is_bug(info3.value)


def test_classification_looks_through_standard_library_frames():
    """pydicom handing a bad value to the standard library is data; medflow doing so is a bug.

    The soak found a PhotometricInterpretation stored with VR AT: pydicom's decoder looks the
    MultiValue up in an ``enum`` and ``enum.__getitem__`` raises ``TypeError: unhashable type``
    (innermost frame in ``enum``): the file must be quarantined, not fail the run.
    """
    import enum
    import json

    import pydicom

    from storage.dicom import pixels

    ds = pydicom.Dataset()
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 2, 2, 16, 16, 15
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.add_new(0x00280004, "AT", [0x00100010, 0x00100020])  # PhotometricInterpretation as tags
    ds.PixelData = b"\0" * 8
    ds.ensure_file_meta()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    with pytest.raises(pixels.PixelDataError) as info:  # quarantined as decode_failed, not an IngestBugError
        pixels.decode_frames(ds)
    assert info.value.reason == "decode_failed"

    class Colour(enum.Enum):
        RED = "R"

    with pytest.raises(TypeError) as info4:
        Colour[["R"]]  # medflow code handing the stdlib an unhashable key
    assert is_bug(info4.value)
    with pytest.raises(TypeError) as info5:
        json.dumps({"x": object()})
    assert is_bug(info5.value)


# --------------------------------------------------------------------------- conversion fault


def test_conversion_fault_fails_the_collection_instead_of_quarantining(sample_dicom, tmp_path, monkeypatch):
    src = _ct_copy(sample_dicom, tmp_path / "in")
    clean = collect_folder(src, guard_limits=GuardLimits(), guard_workers=1)
    assert len(clean.volumes) == 1 and not clean.rejections  # the data are fine

    monkeypatch.setattr(planes, "_volume_from_slices", _broken)
    with pytest.raises(IngestBugError) as info:
        collect_folder(src, guard_limits=GuardLimits(), guard_workers=1)
    err = info.value
    assert err.stage == "conversion" and err.exception_type == "TypeError"
    assert err.input_key.startswith("series sha256:")
    assert "injected fault" not in str(err)  # the original message is never quoted
    assert "\n" not in str(err) and str(src) not in str(err)

    ws = tmp_path / "ws"
    ws.mkdir()
    with pytest.raises(IngestBugError):
        collect_into(src, tmp_path / "stage", config=CollectionConfig(), keys=KEYS, workspace=ws, workers=1)
    assert QuarantineStore(ws).list() == []  # nothing was filed as a data defect


# --------------------------------------------------------------------------- decode-worker start-up


class _NoProcessContext:
    """A multiprocessing context whose processes cannot start (like fork failing with EAGAIN)."""

    def __init__(self):
        self._real = multiprocessing.get_context("fork")

    def Pipe(self, *a, **k):  # noqa: N802 - multiprocessing API name
        return self._real.Pipe(*a, **k)

    def Process(self, *a, **k):  # noqa: N802
        proc = self._real.Process(*a, **k)

        def start():
            raise OSError(11, "Resource temporarily unavailable")

        proc.start = start
        return proc


def _compressed(tmp_path: pathlib.Path) -> list[pathlib.Path]:
    out = []
    for name in ("693_J2KI.dcm", "MR_small_RLE.dcm"):
        dst = tmp_path / "in" / name
        dst.parent.mkdir(exist_ok=True)
        shutil.copyfile(get_testdata_file(name), dst)
        out.append(dst)
    return out


def test_decode_workers_that_cannot_start_fail_the_run(tmp_path, monkeypatch):
    files = _compressed(tmp_path)
    assert all(r is None for r in guard_files(files, limits=GuardLimits(), workers=1).values())  # valid files

    monkeypatch.setattr(guard_workers, "_mp_context", _NoProcessContext)
    with pytest.raises(IngestBugError) as info:
        guard_files(files, limits=GuardLimits(), workers=1)
    assert info.value.stage == "guard decode workers" and info.value.exception_type == "BlockingIOError"

    ws = tmp_path / "ws"
    ws.mkdir()
    with pytest.raises(IngestBugError):
        collect_into(tmp_path / "in", tmp_path / "stage", config=CollectionConfig(), keys=KEYS, workspace=ws,
                     workers=1)
    assert not [r for r in QuarantineStore(ws).list() if r["reason"] == "decode_failed"]
    assert QuarantineStore(ws).list() == []


def _exit_at_once(conn, allowance):
    os._exit(3)


def test_decode_worker_dying_during_start_up_fails_the_run(tmp_path, monkeypatch):
    files = _compressed(tmp_path)
    monkeypatch.setattr(guard_workers, "_mp_context", lambda: multiprocessing.get_context("fork"))
    monkeypatch.setattr(guard_workers, "_worker_main", _exit_at_once)
    with pytest.raises(IngestBugError) as info:
        guard_files(files, limits=GuardLimits(), workers=1)
    assert info.value.stage == "guard decode workers" and "exit code 3" in str(info.value)


# --------------------------------------------------------------------------- the CLI


@pytest.mark.slow
def test_medflow_run_fails_with_one_phi_free_line(sample_dicom, tmp_path):
    src = tmp_path / "incoming"
    planted = None
    for i, path in enumerate(sorted((sample_dicom / "STS_008").rglob("*.dcm"))):
        ds = pydicom.dcmread(path)
        p = plant_canary(ds, CANARY)
        planted = p if planted is None else planted.merge(p)
        (src / f"d{i // 20}").mkdir(parents=True, exist_ok=True)
        ds.save_as(src / f"d{i // 20}" / f"{i:03d}.dcm")
    # the fault is injected at interpreter start-up, so it is live in the CLI and in its worker processes
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import storage.dicom.convert.planes as _p\n"
        "def _broken(*a, **k):\n"
        "    raise TypeError('injected fault')\n"
        "_p._volume_from_slices = _broken\n")
    ws, home = tmp_path / "ws", tmp_path / "prefect-home"
    env = {**os.environ, "PREFECT_HOME": str(home), "MEDFLOW_SECRET_KEY": "fault-cli-secret-0123456789",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180", "COLUMNS": "400",
           "PYTHONPATH": os.pathsep.join([str(hook), str(pathlib.Path(__file__).resolve().parents[1])])}
    medflow = pathlib.Path(sys.executable).with_name("medflow")
    proc = subprocess.run([str(medflow), "run", str(src), "--workspace", str(ws)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    lines = [ln for ln in out.splitlines() if "pipeline failed" in ln]
    assert len(lines) == 1, out[-3000:]  # one line (COLUMNS is wide: the console does not wrap it)
    line = lines[0]
    assert "IngestBugError: ingest bug in stage 'conversion' on input series sha256:" in line, line
    assert "injected fault" not in out and str(src) not in line
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "stdout.txt").write_text(proc.stdout)
    (logs / "stderr.txt").write_text(proc.stderr)
    for root in (logs, ws):
        if root.exists():
            hits = scan_for_canary(root, planted.variants)
            assert not hits, f"PHI canary found under {root.name}: {hits[:10]}"
    if (ws / "quarantine").exists():
        assert QuarantineStore(ws).list() == []


def test_ingest_bug_error_crosses_process_boundaries_intact():
    import pickle

    err = IngestBugError("conversion", "series sha256:0123456789ab (3 files)", "TypeError", "storage.x:f:1")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is IngestBugError and str(back) == str(err)
    assert (back.stage, back.input_key, back.exception_type, back.location) == \
        ("conversion", "series sha256:0123456789ab (3 files)", "TypeError", "storage.x:f:1")
