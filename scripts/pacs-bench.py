"""Instances per second: Orthanc's own store (REST POST /instances) vs medflow's DIMSE and DICOMweb pulls.

    .venv/bin/python scripts/pacs-bench.py [--patients STS_001,STS_003,STS_006] [--data ../shared/data]

Starts a throwaway Orthanc on loopback (scripts/orthanc-local.sh), uploads the patients' files of
``sts_cohort`` (timed: Orthanc's store rate), then pulls them with ``storage.pacs.pull.pull`` into fresh
workspaces by C-MOVE, C-GET and WADO-RS (each timed end to end: query, retrieve, completeness, staging).
Prints one JSON object. Timings are wall-clock on whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
USER, PASSWORD = "bench", "bench-password"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", default="STS_001,STS_003,STS_006")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    args = ap.parse_args()
    import requests

    os.environ.setdefault("MEDFLOW_SECRET_KEY", "medflow-bench-secret-not-for-real-data")
    os.environ["MEDFLOW_DICOMWEB_USER"], os.environ["MEDFLOW_DICOMWEB_PASSWORD"] = USER, PASSWORD
    from storage.pacs.pull import pull
    from storage.pseudonym import PseudonymKeys

    keys = PseudonymKeys.from_env()
    patients = [p.strip() for p in args.patients.split(",") if p.strip()]
    files = [f for p in patients for f in sorted((pathlib.Path(args.data) / "sts_cohort" / "dicom" / p).rglob("*"))
             if f.is_file()]
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="medflow-pacs-bench-"))
    dport, hport, sport = _port(), _port(), _port()
    script = REPO / "scripts" / "orthanc-local.sh"
    subprocess.run(["bash", str(script), "start", str(tmp / "orthanc"), str(dport), str(hport), "MEDFLOW", str(sport),
                    USER, PASSWORD], check=True, capture_output=True)
    out: dict = {"instances": len(files), "patients": patients,
                 "bytes": sum(f.stat().st_size for f in files)}
    try:
        s = requests.Session()
        s.auth = (USER, PASSWORD)
        payloads = [f.read_bytes() for f in files]
        t0 = time.perf_counter()
        for data in payloads:
            s.post(f"http://127.0.0.1:{hport}/instances", data=data, timeout=60).raise_for_status()
        out["orthanc_store_rest_per_s"] = round(len(files) / (time.perf_counter() - t0), 1)
        uris = {}
        for name, retrieve in (("dimse_move", "move"), ("dimse_get", "get")):
            uris[name] = [f"dimse://ORTHANC@127.0.0.1:{dport}?patient={p}&aet=MEDFLOW&port={sport}&retrieve={retrieve}"
                          for p in patients]
        uris["dicomweb_wado"] = [f"dicomweb+http://127.0.0.1:{hport}/dicom-web?patient={p}" for p in patients]
        for name, per_patient in uris.items():
            ws = tmp / f"ws-{name}"
            t0 = time.perf_counter()
            n = 0
            for uri in per_patient:
                report = pull(uri, ws, keys=keys, retries=1, backoff_s=0.5, timeout_s=60,
                              scp_bind_address="127.0.0.1")
                assert report.n_incomplete == 0, name
                n += report.stored
            out[f"{name}_per_s"] = round(n / (time.perf_counter() - t0), 1)
            assert n == len(files), (name, n)
    finally:
        subprocess.run(["bash", str(script), "stop", str(tmp / "orthanc")], check=False)
    out["load_average_1min"] = round(os.getloadavg()[0], 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
