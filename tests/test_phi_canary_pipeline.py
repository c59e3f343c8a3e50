"""PHI canary, end to end: planted identifiers never reach the workspace, Prefect's database, logs or results.

Every PN, LO, SH, ST, LT, UT, UC, AE, DA, DT, TM, instance UID and private element of a real
study (CT, PET, MR + RTSTRUCT of STS_008) carries a unique canary; ``medflow run -v`` processes
it in a subprocess with its own PREFECT_HOME; then every byte under the workspace, the Prefect
home (SQLite database, result files) and the captured stdout/stderr is searched for the canary,
its derived dates/times/UIDs, and their base64 / UTF-16 / compressed forms.
"""

import os
import pathlib
import subprocess
import sys

import pydicom
import pytest
from phi_canary import plant_canary, scan_for_canary

CANARY = "CNRYpipe7Q2x"


@pytest.mark.slow
def test_no_phi_leaves_the_boundary(sample_dicom, tmp_path):
    src = tmp_path / "incoming"
    planted = None
    for i, path in enumerate(sorted((sample_dicom / "STS_008").rglob("*.dcm"))):
        ds = pydicom.dcmread(path)
        p = plant_canary(ds, CANARY)
        planted = p if planted is None else planted.merge(p)
        # the canary is in the data, not in the file names (names are the user's business)
        (src / f"d{i // 20}").mkdir(parents=True, exist_ok=True)
        ds.save_as(src / f"d{i // 20}" / f"{i:03d}.dcm")
    assert planted.counts.get("PN", 0) > 0 and planted.counts.get("private", 0) > 0 and planted.uids

    ws, home, logs = tmp_path / "ws", tmp_path / "prefect-home", tmp_path / "logs"
    logs.mkdir()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_LOGGING_LEVEL": "DEBUG",
           "MEDFLOW_SECRET_KEY": "canary-pipeline-secret-0123456789"}
    medflow = pathlib.Path(sys.executable).with_name("medflow")
    proc = subprocess.run([str(medflow), "run", str(src), "--workspace", str(ws), "-v"], env=env,
                          capture_output=True, text=True, timeout=600)
    (logs / "stdout.txt").write_text(proc.stdout)
    (logs / "stderr.txt").write_text(proc.stderr)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "volumes: 3" in proc.stdout

    # the run really produced data (so an empty workspace cannot pass)
    assert list((ws / "artifacts").rglob("features.parquet"))
    assert (home / "prefect.db").is_file()
    for root in (ws, home, logs):
        hits = scan_for_canary(root, planted.variants)
        assert not hits, f"PHI canary found under {root.name}: {hits[:10]}"
