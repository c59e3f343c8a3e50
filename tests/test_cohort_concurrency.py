"""Cohort runs: volume chains run concurrently without oversubscribing the cores, and adding patients
computes only the new volumes (plus the cohort-level discovery and report)."""

import shutil

import pytest

from medflow.config import ComputeConfig, PipelineConfig


@pytest.mark.parametrize("n_cores", [1, 2, 3, 4, 8])
def test_local_plan_never_oversubscribes(monkeypatch, n_cores):
    from tasks import chain

    monkeypatch.setattr(chain, "cores", lambda: n_cores)
    for n_volumes in (1, 2, 5, 100):
        chains, threads = chain.local_plan(ComputeConfig(), n_volumes)
        assert 1 <= chains <= max(1, n_volumes) and threads >= 1
        assert chains * threads <= n_cores, (n_cores, n_volumes, chains, threads)
    assert chain.local_plan(ComputeConfig(concurrent_volumes=2, dask_threads=1), 10) == (2, 1)
    assert chain.local_plan(ComputeConfig(concurrent_volumes=4), 3)[0] == 3  # never more chains than volumes


def _chain_steps(summary, where=("volume-chain", "flow (cached chain)")):
    return [t for t in summary["tasks"]["detail"] if t.get("inside") in where]


@pytest.mark.slow
def test_chains_overlap_and_added_patients_compute_only_their_volumes(sample_dicom, tmp_path):
    from flows.pipeline import pipeline

    src, ws = tmp_path / "in", tmp_path / "ws"
    shutil.copytree(sample_dicom / "STS_008", src / "STS_008")
    compute = ComputeConfig(concurrent_volumes=2, dask_threads=1)
    first = pipeline(PipelineConfig(source=str(src), workspace=str(ws), compute=compute))
    spans = sorted(first["tasks"]["chains"])
    assert len(spans) == 3
    # two chains were in flight at the same time: some chain started before the previous one finished
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False)), spans
    assert {t["state"] for t in _chain_steps(first)} == {"Completed"}

    shutil.copytree(sample_dicom / "STS_025", src / "STS_025")  # the cohort grows by one patient
    second = pipeline(PipelineConfig(source=str(src), workspace=str(ws), compute=compute))
    # the old patient's 3 chains are all cache hits, found by the flow without a task run; the new patient's
    # 3 chains run as tasks
    assert second["volumes"] == 6 and len(second["tasks"]["chains"]) == 3
    steps = _chain_steps(second)
    old = _chain_steps(second, ("flow (cached chain)",))
    assert len(old) == len(_chain_steps(first)) and {t["state"] for t in old} == {"Cached"}
    assert {t["state"] for t in _chain_steps(second, ("volume-chain",))} == {"Completed"}
    states = {t["task"]: t["state"] for t in second["tasks"]["detail"] if "inside" not in t}
    assert states["discover"] == "Completed" and states["report"] == "Completed"
    # the summary names the Prefect task runs apart from the cache units inside the chains
    assert second["tasks"]["prefect_tasks"] == second["tasks"]["tasks"] - len(steps) + 3


def test_volume_storage_keeps_dtype_and_shards_many_small_chunks(tmp_path):
    """Integers stay integers (zstd + bit-shuffle), and a 4-D series of small frames becomes a few shard files
    instead of one file per frame; both read back exactly."""
    import json

    import numpy as np

    from storage.volumes import read_numpy, write_array

    rng = np.random.default_rng(0)
    ct = rng.integers(-1024, 3000, size=(40, 64, 64), dtype=np.int16)
    write_array(tmp_path / "ct", ct, affine=np.eye(4), spacing=(1.0, 1.0, 1.0))
    back, _ = read_numpy(tmp_path / "ct")
    assert back.dtype == np.int16 and np.array_equal(back, ct)
    meta = json.loads((tmp_path / "ct" / "volume.zarr" / "data" / "zarr.json").read_text())
    blosc = next(c for c in meta["codecs"] if c["name"] == "blosc")["configuration"]
    assert blosc["cname"] == "zstd" and blosc["shuffle"] == "bitshuffle"

    series = rng.integers(0, 4000, size=(120, 20, 32, 32), dtype=np.uint16)  # 120 frames of 40 KiB
    write_array(tmp_path / "fmri", series, affine=np.eye(4), spacing=(1.0, 1.0, 1.0))
    back, _ = read_numpy(tmp_path / "fmri")
    assert np.array_equal(back, series)
    files = [p for p in (tmp_path / "fmri" / "volume.zarr" / "data").rglob("*") if p.is_file()]
    assert len(files) <= 3, len(files)  # zarr.json + one shard, not 120 chunk files
