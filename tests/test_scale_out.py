"""Scale-out by configuration only: the catalog on PostgreSQL, per-voxel work on a dask.distributed scheduler."""

import pathlib
import shutil
import socket
import subprocess

import numpy as np
import pytest

from medflow.config import ComputeConfig, PipelineConfig, PreprocessingConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url(tmp_path_factory):
    data = pathlib.Path("/tmp") / f"medflow-pg-{_free_port()}"  # short path: the socket lives in it
    script = ROOT / "scripts" / "postgres-local.sh"
    url = subprocess.run(["bash", str(script), "start", str(data), str(_free_port())], check=True,
                         capture_output=True, text=True, timeout=180).stdout.strip().splitlines()[-1]
    try:
        yield url
    finally:
        subprocess.run(["bash", str(script), "stop", str(data)], timeout=60, capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.slow
def test_catalog_on_postgresql(postgres_url, sample_dicom, tmp_path):
    from flows.pipeline import ingest
    from storage.catalog import Catalog, Mask, Volume

    src = tmp_path / "in"
    shutil.copytree(sample_dicom / "STS_008" / "CT", src)
    ingest(PipelineConfig(source=str(src), workspace=str(tmp_path / "ws"), catalog_url=postgres_url))
    cat = Catalog(postgres_url)
    assert cat.engine.dialect.name == "postgresql"
    assert cat.count(Volume) == 1 and cat.count(Mask) == 1
    assert not (tmp_path / "ws" / "catalog.sqlite").exists()
    # idempotent: registering the same (cached) run again adds nothing
    ingest(PipelineConfig(source=str(src), workspace=str(tmp_path / "ws"), catalog_url=postgres_url))
    assert cat.count(Volume) == 1


def test_preprocessing_on_a_distributed_scheduler_equals_the_threaded_result(sample_dicom, tmp_path):
    from distributed import LocalCluster

    from storage.volumes import read_numpy
    from tasks.collection import collect, source_fingerprint
    from tasks.preprocessing import preprocess

    ws = str(tmp_path / "ws")
    from medflow.config import CollectionConfig
    from storage.pseudonym import PseudonymKeys
    from storage.workspace import Workspace

    Workspace(ws).ensure()
    keys = PseudonymKeys.from_env()
    src = sample_dicom / "STS_008" / "CT"
    coll = collect.fn(ws, str(src), source_fingerprint(src), CollectionConfig(), keys.key_id())
    params = PreprocessingConfig(denoise="gaussian", gaussian_sigma_mm=1.5)
    local = preprocess.fn(ws, coll.volumes[0], coll.masks, params, ComputeConfig())
    shutil.rmtree(pathlib.Path(ws) / local.volume.uri.rsplit("/", 1)[0])  # recompute, do not reuse
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster:
        remote = preprocess.fn(ws, coll.volumes[0], coll.masks, params,
                               ComputeConfig(dask_scheduler_address=cluster.scheduler_address))
    assert remote.volume.digest == local.volume.digest  # byte-identical artifact
    a, _ = read_numpy(pathlib.Path(ws) / remote.volume.uri)
    assert a.dtype == np.float32 and a.shape == tuple(coll.volumes[0].meta["shape"])
