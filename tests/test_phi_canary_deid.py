"""The de-identifier removes every planted PHI canary from the files it writes (and the workspace)."""

from __future__ import annotations

import base64
import gzip
import shutil

import pydicom
import pytest
from phi_canary import plant_canary, scan_bytes, scan_for_canary
from pydicom.data import get_testdata_file

from storage.deid import DeidOptions, deidentify_folder
from storage.pseudonym import PseudonymKeys

KEYS = PseudonymKeys("canary-test-secret-key-0123456789")
CANARY = "CNRYq7Zx31Lm"
STS = "ibsi_sts_ct_pet_mr_rtstruct/dicom/STS_008"
REAL_FILES = [f"{STS}/CT/image/000000.dcm", f"{STS}/CT/image/000001.dcm", f"{STS}/CT/mask/RS.dcm",
              f"{STS}/PET/image/000000.dcm", f"{STS}/MR_T1/image/000000.dcm", f"{STS}/MR_T1/mask/RS.dcm"]
TESTDATA = ["CT_small.dcm", "rtplan.dcm", "liver.dcm", "JPEG2000.dcm", "US1_UNCR.dcm", "waveform_ecg.dcm"]


@pytest.fixture(scope="module")
def planted_input(shared_data, tmp_path_factory):
    src = tmp_path_factory.mktemp("canary-in")
    planted = None
    sources = [shared_data / f for f in REAL_FILES] + [get_testdata_file(n) for n in TESTDATA]
    for i, path in enumerate(sources):
        ds = pydicom.dcmread(path)
        p = plant_canary(ds, CANARY)
        planted = p if planted is None else planted.merge(p)
        ds.save_as(src / f"{i:02d}.dcm")
    return src, planted


def test_scanner_finds_planted_canaries(planted_input, tmp_path):
    src, planted = planted_input
    # every kind of slot was planted somewhere
    assert {"PN", "LO", "SH", "DA", "TM", "UI", "private"} <= set(planted.counts)
    assert sum(planted.counts.values()) > 500 and len(planted.uids) > 50
    hits = scan_for_canary(src, planted.variants)
    found = {h.variant for h in hits}
    assert planted.canary in found and planted.date in found and planted.time in found
    assert set(planted.uids.values()) <= found
    # base64 in all three alignments, gzip, and a UTF-16 copy are found
    for k in range(3):
        blob = base64.b64encode(b"xyz"[:k] + f"prefix {CANARY} suffix".encode())
        assert scan_bytes(blob, [CANARY]), k
    (tmp_path / "r.pickle.gz").write_bytes(gzip.compress(f"..{CANARY}..".encode()))
    (tmp_path / "w.txt").write_bytes(f"..{CANARY}..".encode("utf-16-le"))
    encs = {h.encoding for h in scan_for_canary(tmp_path, [CANARY])}
    assert {"gzip:utf-8", "utf-16-le"} <= encs
    assert not scan_for_canary(tmp_path, ["CNRYnotplanted"])


@pytest.mark.parametrize("options", [
    DeidOptions(allow_burned_in=True),
    DeidOptions(allow_burned_in=True, clean_descriptors=True, retain_patient_characteristics=True,
                retain_safe_private=True),
    DeidOptions(allow_burned_in=True, retain_longitudinal_modified_dates=True),
], ids=["basic", "clean-descriptors+characteristics+safe-private", "modified-dates"])
def test_deidentified_files_hold_no_canary(planted_input, tmp_path, options):
    src, planted = planted_input
    out, ws = tmp_path / "out", tmp_path / "ws"
    report = deidentify_folder(src, out, options=options, keys=KEYS, workspace=ws)
    assert report.n_written == len(REAL_FILES) + len(TESTDATA) and report.n_rejected == 0
    variants = planted.variants
    if options.retain_longitudinal_modified_dates:
        # times of day are retained by design under this option (whole-day shift; PS3.15 E.3.6)
        variants = [v for v in variants if v != planted.time]
    hits = scan_for_canary(tmp_path, variants)
    if options.retain_patient_characteristics:
        # the option keeps (K) the patient characteristics, Ethnic Group (SH) included (PS3.15 E.3.7):
        # a canary planted there is retained by definition; it must be the only place it survives
        assert all(_keywords_holding(tmp_path / h.path, h.variant) == {"EthnicGroup"} for h in hits), hits
        hits = []
    assert not hits, hits[:20]
    assert len(list(out.rglob("*.dcm"))) == report.n_written


def _keywords_holding(path, variant: str) -> set[str]:
    ds = pydicom.dcmread(path)
    return {e.keyword or str(e.tag) for e in ds.iterall() if e.VR != "SQ" and variant in str(e.value)}


def test_times_are_the_only_retained_canary_under_modified_dates(planted_input, tmp_path):
    src, planted = planted_input
    deidentify_folder(src, tmp_path / "out", options=DeidOptions(allow_burned_in=True,
                                                                  retain_longitudinal_modified_dates=True),
                      keys=KEYS)
    found = {h.variant for h in scan_for_canary(tmp_path, planted.variants)}
    assert found <= {planted.time}


def test_burned_in_rejection_leaves_no_copy(planted_input, tmp_path):
    src, planted = planted_input
    one = tmp_path / "in"
    one.mkdir()
    shutil.copy(src / f"{len(REAL_FILES) + TESTDATA.index('US1_UNCR.dcm'):02d}.dcm", one / "us.dcm")
    report = deidentify_folder(one, tmp_path / "out", keys=KEYS, workspace=tmp_path / "ws")
    assert report.n_rejected == 1
    assert not scan_for_canary(tmp_path / "ws", planted.variants)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*"))
