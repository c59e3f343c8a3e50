"""PACS tasks: pull a ``dimse://`` / ``dicomweb+http(s)://`` source into a complete staging folder; write results back.

Both do network IO, so they retry on transient failures (inside :mod:`storage.pacs`, with the
configured backoff) and are never cached (what the PACS holds changes). What they return and
log is PHI-free: counts, pseudonymous study keys, workspace-relative paths; the query itself
(which may name a patient) is never logged.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from medflow.config import PacsConfig
from storage.workspace import ArtifactRef


class PullOutput(BaseModel):
    """A pull, as the flow sees it."""

    staging: str  # workspace-relative folder of the complete studies (the collection source)
    pull_key: str
    n_studies: int
    n_complete: int
    n_incomplete: int
    stored: int
    skipped: int
    attempts: int
    seconds: float


class PacsSourceIncomplete(RuntimeError):
    """No study of the query could be pulled completely (details in the catalog table ``pacs_transfer``)."""


def _keys(key_id: str):
    from storage.pseudonym import PseudonymKeys

    keys = PseudonymKeys.from_env()
    if keys.key_id() != key_id:
        raise RuntimeError("the pseudonymisation secret changed while the run was being set up")
    return keys


@task(name="pacs-pull", cache_policy=NO_CACHE, tags=["io:pacs"])
def pull(workspace: str, source: str, params: PacsConfig, key_id: str, catalog_url: str | None = None) -> PullOutput:
    """Query the PACS, retrieve what is not held yet, check completeness, stage the complete studies.

    Raises :class:`PacsSourceIncomplete` when the query matched studies but none is complete,
    and a ``ValueError`` when it matched none (both name counts only).
    """
    from storage.pacs.pull import pull as pull_into

    logger = get_run_logger()
    report = pull_into(source, workspace, keys=_keys(key_id), retries=params.retries, backoff_s=params.backoff_s,
                       timeout_s=params.timeout_s, scp_bind_address=params.scp_bind_address, catalog_url=catalog_url)
    for st in report.studies:
        logger.info("pacs study %s: %s (%d of %d instances)", st.study_key,
                    "complete" if st.complete else "INCOMPLETE", st.n_held, st.n_expected)
    logger.info("pacs pull %s (%s): %d studies, %d complete, %d incomplete; %d instances retrieved, %d already "
                "held, %d attempts, %.1f s", report.pull_key, report.protocol, len(report.studies), report.n_complete,
                report.n_incomplete, report.stored, report.skipped, report.attempts, report.seconds)
    if not report.studies:
        raise ValueError("the PACS query matched no study (source query keys: see the config's source)")
    if not report.n_complete:
        raise PacsSourceIncomplete(f"none of the {len(report.studies)} studies the PACS query matched arrived "
                                   f"complete after {report.attempts} attempts; missing instances are listed "
                                   "(pseudonymised) in the catalog table pacs_transfer")
    return PullOutput(staging=report.staging, pull_key=report.pull_key, n_studies=len(report.studies),
                      n_complete=report.n_complete, n_incomplete=report.n_incomplete, stored=report.stored,
                      skipped=report.skipped, attempts=report.attempts, seconds=report.seconds)


@task(name="pacs-write-back", cache_policy=NO_CACHE, tags=["io:pacs"])
def write_back(workspace: str, source: str, staging: str, volumes: list[ArtifactRef], masks: list[ArtifactRef],
               features: list[ArtifactRef], params: PacsConfig, key_id: str) -> list[dict[str, Any]]:
    """Store each collected volume's masks (DICOM SEG) and feature values (TID 1500 SR) in the PACS.

    ``volumes``/``masks`` are the collection's (on the source grid; masks on another grid, e.g.
    after resampling, are left out); ``features`` are the analysis tables (``roi_name`` column).
    The target is ``params.write_back_target`` or the source PACS. Returns one PHI-free dict per volume.
    """
    import pandas as pd

    from storage.pacs.uri import parse_source
    from storage.pacs.writeback import MaskInput, write_back_volume
    from storage.volumes import read_numpy
    from storage.workspace import Workspace

    logger = get_run_logger()
    keys = _keys(key_id)
    ws = Workspace(workspace)
    target = parse_source(params.write_back_target or source, require_query=False)
    tables = {f.meta.get("volume_key"): ws.resolve(f) for f in features}
    out = []
    for vol in volumes:
        vkey = vol.meta.get("volume_key")
        if vol.meta.get("kind") != "3d" or vkey not in tables:
            continue
        image, attrs = read_numpy(ws.resolve(vol))
        rois = []
        for m in masks:
            if m.meta.get("volume_key") != vkey:
                continue
            arr, _ = read_numpy(ws.resolve(m))
            if arr.shape != image.shape or not arr.any():
                continue
            rois.append(MaskInput(roi_name=str(m.meta.get("roi_name")), mask=arr.astype(bool),
                                  source=str(m.meta.get("source", "reference"))))
        if not rois:
            continue
        table = pd.read_parquet(tables[vkey])
        if "image" in table:
            table = table[table["image"] == "original"]
        result, _ = write_back_volume(target, staging=ws.root / staging, volume_key=vkey,
                                      series_key=vol.meta["series_key"], affine=attrs["affine"], masks=rois,
                                      features=table, keys=keys, identified=params.write_back_identified,
                                      timeout_s=params.timeout_s)
        logger.info("write-back %s: SEG with %d segments, SR with %d values", vkey, result.n_segments,
                    result.n_values)
        out.append({"volume_key": vkey, "n_segments": result.n_segments, "n_values": result.n_values,
                    "n_source_instances": result.n_source})
    return out
