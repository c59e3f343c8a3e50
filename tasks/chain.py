"""One Prefect task per volume: preprocess -> segment -> features as content-keyed steps.

Prefect charges every task run a fixed cost (state proposals, events, a result record);
a per-step task bought nothing but that cost (FIELD-NOTES, Cohorts: about 0.85 s before each
task body on a cohort). Here a volume's whole chain is one task run and each stage inside
it is a :func:`tasks.common.cached_step`: keyed exactly as the stage's Prefect task would be
(code version, library versions, input digests, parameters), with its own artifact folder
and its own cache check, so a parameter change still reruns exactly the steps that depend
on it, and a fully cached chain costs milliseconds.

Independent volumes are submitted together (:func:`flows.pipeline.pipeline`): locally on a
``ThreadPoolTaskRunner`` sized by :func:`local_plan`, on a cluster on ``prefect-dask``'s
``DaskTaskRunner``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from medflow.config import AnalysisConfig, ComputeConfig, PreprocessingConfig, ProcessingConfig
from storage.memory import release_memory
from storage.workspace import ArtifactRef
from tasks.analysis import AnalysisOutput
from tasks.analysis import features as features_task
from tasks.common import cached_step
from tasks.preprocessing import PreprocessOutput, preprocess
from tasks.processing import ProcessOutput, segment
from tasks.report import FigureOutput, figure, masks_of


class ChainOutput(BaseModel):
    """References produced for one volume, and how each step went (``Cached``/``Completed``, seconds)."""

    pre: PreprocessOutput
    proc: ProcessOutput | None
    feats: AnalysisOutput
    figure: FigureOutput
    steps: list[dict[str, Any]]
    started: float  # wall-clock seconds (epoch) when the chain started and finished: shows overlap, never cached
    finished: float


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def local_plan(compute: ComputeConfig, n_volumes: int) -> tuple[int, int]:
    """``(concurrent chains, dask threads per chain)`` on this machine, never more threads than cores.

    ``compute.concurrent_volumes`` and ``compute.dask_threads`` override. By default one chain per
    core, each on a 1-thread dask scheduler: most of a chain is single-threaded (feature extraction
    of one or two ROIs, IO, Python), so one chain with all cores leaves the others idle. Measured on
    the 5 first sts cohort patients (15 volumes, 2 cores, machine shared): 2 chains x 1 thread
    finished the chains in 252 s, 1 chain x 2 threads in 598 s and 674 s (two runs).
    """
    n = cores()
    chains = compute.concurrent_volumes or n
    chains = max(1, min(chains, n_volumes or 1))
    threads = compute.dask_threads or max(1, n // chains)
    return chains, threads


def _chain_name() -> str:
    from prefect.runtime import task_run

    volume = task_run.parameters.get("volume")
    key = volume.meta.get("volume_key") if isinstance(volume, ArtifactRef) else None
    return f"volume-chain-{key}" if key else "volume-chain"


@task(name="volume-chain", cache_policy=NO_CACHE, persist_result=False, task_run_name=_chain_name)
def volume_chain(workspace: str, volume: ArtifactRef, masks: list[ArtifactRef], preprocessing: PreprocessingConfig,
                 processing: ProcessingConfig, analysis: AnalysisConfig, compute: ComputeConfig) -> ChainOutput:
    """Preprocess, segment (when configured) and measure one 3-D volume.

    Parameters
    ----------
    workspace : str
        Workspace root (a location: never part of a key).
    volume : ArtifactRef
        The collected volume (pseudonymous ``meta`` only).
    masks : list of ArtifactRef
        Reference masks of that volume (possibly empty).
    preprocessing, processing, analysis : config sections
        Parameters of the three steps; each step is keyed on its own section only.
    compute : ComputeConfig
        Where per-voxel work runs (threads or a ``dask.distributed`` scheduler).

    Returns
    -------
    ChainOutput
        The three steps' outputs and a per-step tally.
    """
    out = run_chain(workspace, volume, masks, preprocessing, processing, analysis, compute)
    if out is None:  # pragma: no cover - compute_on_miss=True never stops early
        raise RuntimeError("volume chain stopped without outputs")
    return out


def cached_chain(workspace: str, volume: ArtifactRef, masks: list[ArtifactRef], preprocessing: PreprocessingConfig,
                 processing: ProcessingConfig, analysis: AnalysisConfig, compute: ComputeConfig) -> ChainOutput | None:
    """The chain's outputs when every step is a cache hit (no task run, nothing computed), else None.

    The flow asks this first: a fully cached volume costs a few milliseconds of record reads
    instead of a Prefect task run; any miss (a changed parameter, a damaged artifact) submits
    :func:`volume_chain`, which reruns exactly the steps whose keys changed.
    """
    return run_chain(workspace, volume, masks, preprocessing, processing, analysis, compute, compute_on_miss=False)


class _Miss(Exception):
    """Internal: a step of a probed chain is not cached (:func:`cached_chain` answers None)."""


def run_chain(workspace: str, volume: ArtifactRef, masks: list[ArtifactRef], preprocessing: PreprocessingConfig,
              processing: ProcessingConfig, analysis: AnalysisConfig, compute: ComputeConfig, *,
              compute_on_miss: bool = True) -> ChainOutput | None:
    """Body of :func:`volume_chain`; with ``compute_on_miss=False`` it stops (None) at the first miss."""
    started = time.time()
    steps: list[dict[str, Any]] = []

    def step(fn: Any, output: type, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out, state = cached_step(fn, workspace, output, compute_on_miss=compute_on_miss, **kwargs)
        if out is None:
            raise _Miss
        steps.append({"task": fn.name, "state": state, "seconds": round(time.perf_counter() - t0, 3)})
        return out  # the step's arrays are freed by reference counting here (no gc.collect: it cost seconds)

    try:
        pre = step(preprocess, PreprocessOutput, volume=volume, masks=masks, params=preprocessing, compute=compute)
        proc = None
        if not masks or processing.segment_when_reference_exists or processing.filters:
            proc = step(segment, ProcessOutput, volume=pre.volume, reference_masks=pre.masks, params=processing,
                        compute=compute)
        rois = list(pre.masks) + (list(proc.auto_masks) if proc and analysis.include_auto_masks else [])
        feats = step(features_task, AnalysisOutput, volume=pre.volume, masks=rois, params=analysis,
                     responses=list(proc.responses) if proc else [])
        # the report's figure: every mask of this volume, reference ones first
        fig = step(figure, FigureOutput, volume=pre.volume,
                   masks=masks_of(pre.volume, [*pre.masks, *(proc.auto_masks if proc else [])]))
    except _Miss:
        return None
    if any(s["state"] != "Cached" for s in steps):
        release_memory()
    return ChainOutput(pre=pre, proc=proc, feats=feats, figure=fig, steps=steps, started=started,
                       finished=time.time())
