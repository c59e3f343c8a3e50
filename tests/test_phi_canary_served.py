"""PHI canary through the served path: drop folder -> watcher -> medflow.study.arrived -> on-new-study deployment.

A real study (STS_008, CT + PET + MR with RTSTRUCTs) carries a unique canary in every PN, LO, SH,
date, time, UID and private element; the sender's folder name and every file name carry it too.
It is dropped into the folder watched by ``medflow serve`` (debug logging). After the
triggered run completed, the server's API is queried for flow runs (names, parameters), task
runs, events, artifacts, logs and deployments, and every byte of the Prefect home (database),
the serve logs, the watcher's state, the workspace and the API answers is searched for the
canary and its derived forms. The staged copy of the input (``STATE/staging``) is input data
and is not searched.
"""

import json
import pathlib

import pydicom
import pytest
from phi_canary import plant_canary, scan_for_canary
from served import Served

CANARY = "CNRYsrv4K8pz"
pytestmark = pytest.mark.slow


def test_no_phi_through_the_served_deployment(sample_dicom, tmp_path):
    drop, ws, state = tmp_path / "drop", tmp_path / "ws", tmp_path / "state"
    drop.mkdir()
    planted = None
    staging_in = tmp_path / "prepare" / f"{CANARY} study"  # the sender's folder name is identifying
    for i, path in enumerate(sorted((sample_dicom / "STS_008").rglob("*.dcm"))):
        ds = pydicom.dcmread(path)
        p = plant_canary(ds, CANARY)
        planted = p if planted is None else planted.merge(p)
        dst = staging_in / f"{CANARY}-{i // 25}" / f"{CANARY}_{i:03d}.dcm"
        dst.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(dst)
    assert planted.counts.get("PN", 0) > 0 and planted.uids

    served = Served(state, watch=drop, workspace=ws, quiet_s=2.0, log_level="DEBUG",
                    extra_env={"MEDFLOW_SECRET_KEY": "canary-served-secret-0123456789"})
    try:
        served.wait_ready()
        staging_in.rename(drop / staging_in.name)  # the study arrives whole (one rename)
        runs = served.wait_runs("on-new-study", 1, timeout_s=900)
        assert len(runs) == 1 and runs[0]["state"]["type"] == "COMPLETED", served.text()[-5000:]
        assert list(ws.rglob("features.parquet")) and (ws / "reports" / "cohort.html").is_file()

        dump = tmp_path / "api"
        dump.mkdir()
        queries = {
            "flow_runs": ("/flow_runs/filter", {}),
            "task_runs": ("/task_runs/filter", {}),
            "deployments": ("/deployments/filter", {}),
            "artifacts": ("/artifacts/filter", {}),
            "automations": ("/automations/filter", {}),
        }
        for name, (path, body) in queries.items():
            status, answer = served.request("POST", path, body)
            assert status == 200, (name, answer)
            (dump / f"{name}.json").write_text(json.dumps(answer))
        logs, offset = [], 0
        while True:  # every log line, page by page
            status, page = served.request("POST", "/logs/filter", {"limit": 200, "offset": offset})
            assert status == 200, page
            logs += page
            offset += 200
            if len(page) < 200:
                break
        (dump / "logs.json").write_text(json.dumps(logs))
        status, answer = served.request("POST", "/events/filter", {"limit": 50})
        events = list(answer["events"])
        while answer.get("next_page"):  # every event, page by page
            status, answer = served.request("GET", answer["next_page"])
            assert status == 200, answer
            events += answer["events"]
        (dump / "events.json").write_text(json.dumps({"events": events}))
        # the API answers are real: the arrival event, the run's logs and its artifacts are there
        events = json.loads((dump / "events.json").read_text())["events"]
        assert any(e["event"] == "medflow.study.arrived" for e in events)
        assert json.loads((dump / "logs.json").read_text()), "no logs recorded at DEBUG level"
        assert json.loads((dump / "artifacts.json").read_text()), "no artifacts recorded"
    finally:
        served.stop()

    assert (state / "prefect" / "prefect.db").is_file()
    for root in (state / "prefect", state / "logs", state / "watch", ws, tmp_path / "api", served.out):
        hits = scan_for_canary(root, planted.variants)
        assert not hits, f"PHI canary found under {pathlib.Path(root).name}: {hits[:10]}"
