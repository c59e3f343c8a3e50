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
import pandas as pd
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# the ephemeral Prefect API of the flow test can take over a minute to start on a loaded 2-core machine
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
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


def test_dimse_pull_equals_folder_ingest(orthanc, shared_data, keys, tmp_path, caplog):
    """C-FIND + C-MOVE to our SCP by patient: the staged study collects to the same voxels as the folder."""
    import logging

    from storage.pacs.catalog import transfers
    from storage.pacs.pull import pull

    caplog.set_level(logging.DEBUG)

    ws = tmp_path / "ws"
    report = pull(orthanc.dimse_uri("patient=STS_001"), ws, keys=keys, retries=1, backoff_s=0.1, timeout_s=30)
    n_files = len(_files(shared_data, "STS_001"))
    assert (report.n_complete, report.n_incomplete, report.stored) == (1, 0, n_files)
    assert report.studies[0].n_expected == n_files
    staged = ws / report.staging
    assert sum(1 for p in staged.rglob("*.dcm")) == n_files
    assert (os.stat(ws / "incoming").st_mode & 0o077) == 0
    # nothing of the query (the patient ID) or any original UID appears in a staged path
    assert "STS_001" not in "".join(str(p) for p in (ws / "incoming").rglob("*"))
    rows = transfers(ws, pull_key=report.pull_key)
    assert [(r["complete"], r["n_missing"]) for r in rows] == [(True, 0)]
    assert "STS_001" not in caplog.text  # the query (a patient ID) never reaches a log record

    folder = tmp_path / "folder"
    shutil.copytree(shared_data / "sts_cohort" / "dicom" / "STS_001", folder)
    assert _volume_digests(staged, tmp_path / "w1", keys) == _volume_digests(folder, tmp_path / "w2", keys)

    again = pull(orthanc.dimse_uri("patient=STS_001"), ws, keys=keys, retries=1, backoff_s=0.1, timeout_s=30)
    assert (again.stored, again.attempts, again.n_complete) == (0, 0, 1)  # held already: nothing retrieved


def test_dicomweb_pull_equals_folder_ingest(orthanc, shared_data, keys, tmp_path, dicomweb_env):
    """QIDO-RS by relative-free date range + modality, WADO-RS by series: same voxels as the folder ingest."""
    from storage.pacs.pull import pull

    ws = tmp_path / "ws"
    uri = orthanc.dicomweb_uri("study_date=2005-04-14..2005-04-16&modality=PT")  # STS_003's study
    report = pull(uri, ws, keys=keys, retries=1, backoff_s=0.1, timeout_s=30)
    n_files = len(_files(shared_data, "STS_003"))
    assert (report.n_complete, report.n_incomplete, report.stored) == (1, 0, n_files)
    folder = tmp_path / "folder"
    shutil.copytree(shared_data / "sts_cohort" / "dicom" / "STS_003", folder)
    assert _volume_digests(ws / report.staging, tmp_path / "w1", keys) == _volume_digests(folder, tmp_path / "w2",
                                                                                           keys)


def test_dicomweb_credentials_only_from_environment(orthanc, keys, tmp_path, monkeypatch):
    from storage.pacs.model import PacsError
    from storage.pacs.pull import pull
    from storage.pacs.uri import PacsUriError

    with pytest.raises(PacsUriError, match="environment"):
        pull(orthanc.dicomweb_uri("patient=STS_001").replace("http://", f"http://{USER}:{PASSWORD}@"), tmp_path,
             keys=keys)
    monkeypatch.delenv("MEDFLOW_DICOMWEB_USER", raising=False)
    monkeypatch.delenv("MEDFLOW_DICOMWEB_PASSWORD", raising=False)
    with pytest.raises(PacsError, match="HTTP 401"):
        pull(orthanc.dicomweb_uri("patient=STS_001"), tmp_path, keys=keys, retries=0)


@pytest.mark.parametrize("protocol", ["dimse-get", "dicomweb"])
def test_instance_deleted_between_query_and_retrieve(orthanc, shared_data, keys, tmp_path, dicomweb_env, protocol):
    """The study is reported incomplete (catalog: counts + pseudonymised UID), not staged; a later pull completes it."""
    import pydicom

    from storage.pacs.catalog import transfers
    from storage.pacs.pull import Holding, execute, query
    from storage.pacs.uri import parse_source

    uri = (orthanc.dimse_uri("patient=STS_003", retrieve="get") if protocol == "dimse-get"
           else orthanc.dicomweb_uri("patient=STS_003"))
    source = parse_source(uri)
    plan = query(source, timeout_s=30)
    n_expected = plan.n_instances
    victim = next(f for f in _files(shared_data, "STS_003") if "/CT/image/" in f.as_posix())
    sop = str(pydicom.dcmread(victim, stop_before_pixels=True).SOPInstanceUID)
    orthanc.delete_instance(orthanc.find_instance(sop))
    try:
        ws = tmp_path / "ws"
        report = execute(source, plan, ws, keys=keys, retries=2, backoff_s=0.05, timeout_s=30)
        assert (report.n_complete, report.n_incomplete) == (0, 1)
        assert report.attempts == 3  # first pass + 2 retries for the missing instance
        st = report.studies[0]
        assert (st.n_expected, st.n_held, st.n_missing) == (n_expected, n_expected - 1, 1)
        assert not any((ws / report.staging).iterdir())  # an incomplete study never reaches the pipeline
        rows = transfers(ws, pull_key=report.pull_key)
        assert [(r["complete"], r["n_missing"]) for r in rows] == [(False, 1)]
        assert rows[0]["missing"][0]["sop_uid"] == keys.new_uid(sop) != sop  # pseudonymised
        assert sop not in repr(report.as_dict())
    finally:
        orthanc.upload([victim])
    report = execute(source, plan, ws, keys=keys, retries=2, backoff_s=0.05, timeout_s=30)
    assert (report.n_complete, report.stored, report.attempts) == (1, 1, 1)  # only the missing one retrieved
    assert sum(1 for _ in (ws / report.staging).rglob("*.dcm")) == n_expected
    assert [(r["complete"], r["n_missing"]) for r in transfers(ws, pull_key=report.pull_key)] == [(True, 0)]
    # an instance that arrives again with the same content is skipped, not duplicated
    hdr = pydicom.dcmread(victim, stop_before_pixels=True)
    holding = Holding(ws, keys)
    held = holding.path(str(hdr.StudyInstanceUID), str(hdr.SeriesInstanceUID), sop)
    holding.receive(held.read_bytes())
    assert (holding.skipped, holding.stored, holding.replaced) == (1, 0, 0)
    assert sum(1 for _ in held.parent.iterdir()) == len(list(held.parent.glob("*.dcm")))


@pytest.mark.parametrize("store_by", ["dicomweb", "dimse"])
def test_seg_and_sr_round_trip(orthanc, keys, tmp_path, dicomweb_env, store_by):
    """medflow's masks -> DICOM SEG and features -> TID 1500 SR on the pseudonymised series, stored
    (STOW-RS or C-STORE), read back by WADO-RS: masks and values equal medflow's."""
    from dicomweb_client.api import DICOMwebClient
    from highdicom.seg import Segmentation

    from imaging.features import extract_features
    from medflow.config import AnalysisConfig, CollectionConfig
    from storage.collect import collect_into
    from storage.pacs.pull import pull
    from storage.pacs.uri import parse_source
    from storage.pacs.writeback import MaskInput, feature_code, sr_values, write_back_volume
    from storage.volumes import read_numpy
    from tasks.analysis import settings_for

    ws = tmp_path / "ws"
    report = pull(orthanc.dicomweb_uri("patient=STS_001"), ws, keys=keys, retries=1, backoff_s=0.1, timeout_s=30)
    staging = ws / report.staging
    summary = collect_into(staging, ws / "coll", config=CollectionConfig(), keys=keys, workspace=ws)
    vol = next(v for v in summary.volumes if v.meta["modality"] == "CT")
    image, attrs = read_numpy(ws / "coll" / vol.rel)
    masks = []
    for m in (m for m in summary.masks if m.meta["volume_key"] == vol.meta["volume_key"]):
        arr, _ = read_numpy(ws / "coll" / m.rel)
        masks.append(MaskInput(roi_name=m.meta["roi_name"], mask=arr.astype(bool), source=m.meta["source"]))
    # a second, automatic ROI (medflow-derived) so the SEG carries two segments of both kinds
    auto = masks[0].mask.copy()
    auto[: auto.shape[0] // 2] = False
    masks.append(MaskInput(roi_name="auto_lower_half", mask=auto, source="auto"))
    settings = settings_for("CT", AnalysisConfig()).model_copy(update={"families": ("morph", "stat", "ih")})
    spacing = tuple(float(s) for s in attrs["spacing"])
    table = pd.concat([extract_features(image, m.mask, spacing=spacing, settings=settings).assign(roi_name=m.roi_name)
                       for m in masks], ignore_index=True)
    affine = np.asarray(attrs["affine"], dtype=float)
    target = parse_source(orthanc.dicomweb_uri("patient=x") if store_by == "dicomweb"
                          else orthanc.dimse_uri("patient=x"))
    result, stored = write_back_volume(target, staging=staging, volume_key=vol.meta["volume_key"],
                                       series_key=vol.meta["series_key"], affine=affine, masks=masks, features=table,
                                       keys=keys, timeout_s=30)
    seg_ds, sr_ds = stored[-2], stored[-1]
    # the references point at the pseudonymised copy of the series, which is stored too
    assert result.source_series_uid == keys.new_uid(vol_series_uid(staging, vol.meta["series_key"]))
    assert all(str(d.PatientID) == vol.meta["patient_key"] for d in stored[:-2])

    client = DICOMwebClient(url=orthanc.url + "/dicom-web", session=orthanc.session())
    back_seg = Segmentation.from_dataset(client.retrieve_instance(
        str(seg_ds.StudyInstanceUID), str(seg_ds.SeriesInstanceUID), str(seg_ds.SOPInstanceUID)))
    back_sr = client.retrieve_instance(str(sr_ds.StudyInstanceUID), str(sr_ds.SeriesInstanceUID),
                                       str(sr_ds.SOPInstanceUID))
    assert str(back_seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == result.source_series_uid
    sources = stored[:-2]
    from storage.pacs.writeback import slice_order

    order = slice_order(sources, affine, image.shape[0])
    pixels = back_seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[str(d.SOPInstanceUID) for d in sources],
        segment_numbers=list(range(1, len(masks) + 1)), assert_missing_frames_are_empty=True)
    for j, m in enumerate(masks):
        restored = np.zeros_like(m.mask)
        restored[order] = pixels[:, :, :, j].astype(bool)
        assert np.array_equal(restored, m.mask), m.roi_name
        assert m.mask.any()
    values = sr_values(back_sr)
    assert set(values) == {f"ROI {m.roi_name}" for m in masks}
    n = 0
    for m in masks:
        rows = table[table["roi_name"] == m.roi_name]
        expected = {feature_code(r.family, r.feature, r.aggregation): float(r.value)
                    for r in rows.itertuples(index=False) if np.isfinite(r.value)}
        assert values[f"ROI {m.roi_name}"].keys() == expected.keys()
        for code, v in expected.items():
            assert values[f"ROI {m.roi_name}"][code] == pytest.approx(v, rel=1e-12, abs=1e-12)
        n += len(expected)
    assert n == result.n_values > 20


def vol_series_uid(staging: pathlib.Path, series_key: str) -> str:
    import pydicom

    f = next(staging.glob(f"*/{series_key}/*.dcm"))
    return str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID)


@pytest.mark.slow
def test_ingest_flow_from_pacs_then_write_back_task(orthanc, keys, tmp_path, dicomweb_env, monkeypatch):
    """The ingest flow takes a dimse:// source: pulled, complete, collected; the write-back task stores the
    collected masks and a feature table as SEG + SR, found again in the PACS by QIDO-RS."""
    from dicomweb_client.api import DICOMwebClient
    from prefect import flow

    from flows.pipeline import ingest
    from imaging.features import extract_features
    from medflow.config import AnalysisConfig, PacsConfig, PipelineConfig
    from storage.catalog import Catalog
    from storage.pacs.catalog import transfers
    from storage.volumes import read_numpy
    from storage.workspace import ArtifactRef
    from tasks.analysis import settings_for
    from tasks.pacs import write_back

    ws = tmp_path / "ws"
    pacs = PacsConfig(retries=1, backoff_s=0.1, timeout_s=30, scp_bind_address="127.0.0.1", write_back=True)
    cfg = PipelineConfig(source=orthanc.dimse_uri("study_date=2000-09-07"), workspace=str(ws), pacs=pacs)
    summary = ingest(cfg)
    assert (summary["volumes"], summary["masks"], summary["quarantined"]) == (3, 3, 0)  # CT, PET, MR + RTSTRUCTs
    assert [r["complete"] for r in transfers(ws)] == [True]
    staging = next(p for p in (ws / "incoming").iterdir() if p.name.startswith("q"))

    cat = Catalog.for_workspace(ws)
    vol = next(v for v in cat.volumes() if v.meta.get("modality") == "CT")
    vref = ArtifactRef(kind="volume", uri=vol.uri, digest=vol.digest,
                       meta={**vol.meta, "kind": vol.kind, "series_key": vol.series_key, "volume_key": vol.volume_key})
    mrefs = [ArtifactRef(kind="mask", uri=m.uri, digest=m.digest,
                         meta={"volume_key": m.volume_key, "roi_name": m.roi_name, "source": m.source})
             for m in cat.masks() if m.volume_key == vol.volume_key]
    image, attrs = read_numpy(ws / vol.uri)
    mask, _ = read_numpy(ws / mrefs[0].uri)
    settings = settings_for("CT", AnalysisConfig()).model_copy(update={"families": ("stat",)})
    table = extract_features(image, mask.astype(bool), spacing=tuple(attrs["spacing"]), settings=settings).assign(
        roi_name=mrefs[0].meta["roi_name"], image="original")
    (ws / "feat").mkdir()
    table.to_parquet(ws / "feat" / "features.parquet", index=False)
    fref = ArtifactRef(kind="features", uri="feat/features.parquet", digest="sha256:test",
                       meta={"volume_key": vol.volume_key})

    @flow
    def write_back_only():
        return write_back(str(ws), orthanc.dicomweb_uri("patient=x"), staging.relative_to(ws).as_posix(), [vref],
                          mrefs, [fref], pacs, keys.key_id())

    [result] = write_back_only()
    assert (result["n_segments"], result["n_values"]) == (len(mrefs), int(np.isfinite(table["value"]).sum()))
    client = DICOMwebClient(url=orthanc.url + "/dicom-web", session=orthanc.session())
    import pydicom

    original = pydicom.dcmread(next(staging.glob(f"*/{vol.series_key}/*.dcm")), stop_before_pixels=True)
    study = keys.new_uid(str(original.StudyInstanceUID))  # the pseudonymised study
    found = client.search_for_series(study_instance_uid=study, fields=["Modality"])
    modalities = {item["00080060"]["Value"][0] for item in found}
    assert {"CT", "SEG", "SR"} <= modalities  # the pseudonymised CT series and medflow's two objects
    assert str(original.StudyInstanceUID) != study
