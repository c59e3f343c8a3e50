"""A real dask.distributed cluster (scheduler + 2 worker processes on loopback, scripts/dask-local.sh):
the pipeline flow runs its volume chains on it through prefect-dask's DaskTaskRunner and writes artifacts
byte-identical to the local run; two flows writing one PostgreSQL catalog at once lose and duplicate nothing."""

import hashlib
import pathlib
import shutil
import socket
import subprocess
import threading

import pytest

from medflow.config import ComputeConfig, PipelineConfig

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "dask-local.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    port = _free_port()
    out = subprocess.run(["bash", str(SCRIPT), "start", str(port)], check=True, capture_output=True, text=True,
                         timeout=240)
    address = out.stdout.strip().splitlines()[-1]
    try:
        yield address
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(port)], timeout=60, capture_output=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sample_dicom, cluster):
    """The 2-patient sample run locally and on the cluster (separate workspaces, same secret)."""
    from flows.pipeline import pipeline

    root = tmp_path_factory.mktemp("cluster")
    src = root / "in"
    shutil.copytree(sample_dicom, src)
    local = pipeline(PipelineConfig(source=str(src), workspace=str(root / "local")))
    remote = pipeline(PipelineConfig(source=str(src), workspace=str(root / "remote"),
                                     compute=ComputeConfig(dask_scheduler_address=cluster)))
    return {"root": root, "src": src, "local": local, "remote": remote}


def _artifact_digests(ws: pathlib.Path) -> dict[str, str]:
    art = ws / "artifacts"
    return {p.relative_to(art).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(art.rglob("*")) if p.is_file()}


def _executed_on_workers(address: str) -> dict[str, list[str]]:
    from distributed import Client

    def executed(dask_worker):
        return sorted({str(e[0]) for e in dask_worker.state.log if len(e) > 2 and e[2] == "executing"})

    with Client(address, timeout=30) as client:
        return client.run(executed)


def test_script_starts_a_scheduler_and_two_workers(cluster):
    from distributed import Client

    assert cluster.startswith("tcp://127.0.0.1:")
    with Client(cluster, timeout=30) as client:
        workers = client.scheduler_info()["workers"]
    assert len(workers) == 2 and all(w.startswith("tcp://127.0.0.1:") for w in workers)


def test_flow_on_the_cluster_gives_byte_identical_artifacts(runs, cluster):
    local, remote = runs["local"], runs["remote"]
    assert remote["volumes"] == local["volumes"] == 6
    # the volume chains ran on the workers (both of them), not in the flow's process
    chains = _executed_on_workers(cluster)  # only this module's flows use the cluster
    assert sum(len(v) for v in chains.values()) >= 6 and all(chains.values()), chains
    a, b = _artifact_digests(runs["root"] / "local"), _artifact_digests(runs["root"] / "remote")
    assert len(a) > 50
    assert a.keys() == b.keys()
    differ = sorted(k for k in a if a[k] != b[k])
    assert not differ, differ[:10]
    assert [t["task"] for t in remote["tasks"]["detail"]] == [t["task"] for t in local["tasks"]["detail"]]


def test_two_flows_writing_one_postgresql_catalog_at_once(sample_dicom, tmp_path):
    """Two flows (one patient each) upsert into the same PostgreSQL catalog concurrently; the catalog then holds
    exactly the rows of the same two flows run one after the other (into a SQLite catalog): none lost, none
    doubled."""
    from flows.pipeline import pipeline
    from storage.catalog import Catalog, Mask, Patient, Series, Study, Volume

    data = pathlib.Path("/tmp") / f"medflow-pg-{_free_port()}"  # short path: the socket lives in it
    pg = ROOT / "scripts" / "postgres-local.sh"
    url = subprocess.run(["bash", str(pg), "start", str(data), str(_free_port())], check=True, capture_output=True,
                         text=True, timeout=180).stdout.strip().splitlines()[-1]
    try:
        errors: list[BaseException] = []

        def one(patient: str, catalog_url: str = url) -> None:
            try:
                pipeline(PipelineConfig(source=str(sample_dicom / patient), workspace=str(tmp_path / patient),
                                        catalog_url=catalog_url))
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:  # the API up before two flows ask for it at once
            client.hello()
        threads = [threading.Thread(target=one, args=(p,)) for p in ("STS_008", "STS_025")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=900)
        assert not errors, errors
        sequential_url = f"sqlite:///{tmp_path / 'sequential.sqlite'}"
        for patient in ("STS_008", "STS_025"):  # the same flows one after the other (cache hits, same rows)
            one(patient, sequential_url)
        assert not errors, errors
        concurrent, sequential = Catalog(url), Catalog(sequential_url)
        for table, key in ((Patient, "patient_key"), (Study, "study_key"), (Series, "series_key"),
                           (Volume, "volume_key"), (Mask, "mask_key")):
            assert concurrent.count(table) == sequential.count(table) > 0, table.__tablename__
            assert _keys(concurrent, table, key) == _keys(sequential, table, key), table.__tablename__
    finally:
        subprocess.run(["bash", str(pg), "stop", str(data)], timeout=60, capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def _keys(catalog, table, column: str) -> list[str]:
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    with Session(catalog.engine) as session:
        return sorted(session.scalars(select(getattr(table, column))).all())
