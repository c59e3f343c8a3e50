"""PACS pulls and write-back against a real Orthanc (Debian package + DicomWeb plugin) on loopback.

``scripts/orthanc-local.sh`` installs Orthanc when missing (root, as in CI) and starts a throwaway
server for this module (its own storage folder and free ports); two patients of ``sts_cohort``
(CT + PET + MR with RTSTRUCTs, one study each) are uploaded through Orthanc's REST API.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "orthanc-local.sh"
PATIENTS = ("STS_001", "STS_003")
USER, PASSWORD = "medflow-test", "orthanc-test-password"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    def __init__(self, folder: pathlib.Path):
        self.folder = folder
        self.dicom_port, self.http_port, self.scp_port = _free_port(), _free_port(), _free_port()
        while len({self.dicom_port, self.http_port, self.scp_port}) < 3:
            self.scp_port = _free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        subprocess.run(["bash", str(SCRIPT), "start", str(self.folder), str(self.dicom_port), str(self.http_port),
                        "MEDFLOW", str(self.scp_port), USER, PASSWORD], check=True, capture_output=True, timeout=300)

    def stop(self) -> None:
        subprocess.run(["bash", str(SCRIPT), "stop", str(self.folder)], check=False, capture_output=True, timeout=60)

    def session(self):
        import requests

        s = requests.Session()
        s.auth = (USER, PASSWORD)
        return s

    def upload(self, files: list[pathlib.Path]) -> list[str]:
        s = self.session()
        ids = []
        for f in files:
            r = s.post(f"{self.url}/instances", data=f.read_bytes(), timeout=60)
            r.raise_for_status()
            ids.append(r.json()["ID"])
        return ids

    def find_instance(self, sop_uid: str) -> str:
        r = self.session().post(f"{self.url}/tools/lookup", data=sop_uid, timeout=30)
        r.raise_for_status()
        return next(x["ID"] for x in r.json() if x["Type"] == "Instance")

    def delete_instance(self, orthanc_id: str) -> None:
        self.session().delete(f"{self.url}/instances/{orthanc_id}", timeout=30).raise_for_status()

    def dimse_uri(self, query: str, *, retrieve: str = "move") -> str:
        return (f"dimse://ORTHANC@127.0.0.1:{self.dicom_port}?{query}&aet=MEDFLOW&port={self.scp_port}"
                f"&retrieve={retrieve}")

    def dicomweb_uri(self, query: str) -> str:
        return f"dicomweb+http://127.0.0.1:{self.http_port}/dicom-web?{query}"


def _files(shared: pathlib.Path, patient: str) -> list[pathlib.Path]:
    return sorted(p for p in (shared / "sts_cohort" / "dicom" / patient).rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def orthanc(shared_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("orthanc")
    server = Orthanc(folder)
    server.start()
    try:
        files = [f for p in PATIENTS for f in _files(shared_data, p)]
        t0 = time.perf_counter()
        server.upload(files)
        server.store_rate = len(files) / (time.perf_counter() - t0)
        yield server
    finally:
        server.stop()


@pytest.fixture()
def dicomweb_env(monkeypatch):
    monkeypatch.setenv("MEDFLOW_DICOMWEB_USER", USER)
    monkeypatch.setenv("MEDFLOW_DICOMWEB_PASSWORD", PASSWORD)


@pytest.fixture(scope="module")
def keys():
    from storage.pseudonym import PseudonymKeys

    return PseudonymKeys.from_env()


def _volume_digests(source: pathlib.Path, workspace: pathlib.Path, keys) -> dict[tuple, str]:
    """(series_key, volume_index) -> sha256 of the voxel bytes + shape + spacing, from the folder collection."""
    from medflow.config import CollectionConfig
    from storage.collect import collect_into
    from storage.volumes import read_numpy

    out_folder = workspace / "coll"
    summary = collect_into(source, out_folder, config=CollectionConfig(), keys=keys, workspace=workspace)
    out = {}
    for v in summary.volumes:
        arr, attrs = read_numpy(out_folder / v.rel)
        h = hashlib.sha256(np.ascontiguousarray(arr).tobytes())
        h.update(repr((arr.shape, str(arr.dtype), v.meta["spacing"])).encode())
        out[(v.meta["series_key"], v.meta["volume_index"])] = h.hexdigest()
    for m in summary.masks:
        arr, _ = read_numpy(out_folder / m.rel)
        out[("mask", m.meta["volume_key"], m.meta["roi_name"])] = hashlib.sha256(arr.tobytes()).hexdigest()
    assert not summary.rejections, summary.rejections
    return out
