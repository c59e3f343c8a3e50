"""Cohort tasks: the workspace's whole case base, read from the catalog, for cohort-level discovery and report."""

from __future__ import annotations

from typing import Any

from prefect import task

from storage.workspace import ArtifactRef, atomic_folder
from tasks.common import Step, stage_task, write_json


@task(name="case_base")
def case_base(workspace: str, catalog_url: str | None = None) -> dict[str, Any]:
    """Every case of the workspace: collected volumes and masks, the newest feature table per volume, QC, quarantine.

    Parameters
    ----------
    workspace : str
        Workspace root.
    catalog_url : str, optional
        Catalog URL if not the workspace's SQLite.

    Returns
    -------
    dict
        ``volumes``, ``masks``, ``features`` (lists of :class:`ArtifactRef`, sorted by key), ``qc`` and
        ``rejections`` (lists of dicts). Pseudonymous keys only. When a volume was analysed under several
        configurations, its most recently written feature table is the one in the case base.
    """
    from storage.catalog import Catalog
    from storage.workspace import Workspace

    ws = Workspace(workspace)
    with Catalog.for_workspace(ws.root, catalog_url) as cat:
        rows = cat.case_base_rows()
    volumes = [ArtifactRef(kind="volume", uri=r["uri"], digest=r["digest"], meta=r["meta"]) for r in rows["volumes"]]
    masks = [ArtifactRef(kind="mask", uri=r["uri"], digest=r["digest"], meta=r["meta"]) for r in rows["masks"]]
    newest: dict[str, tuple[int, ArtifactRef]] = {}
    for r in rows["features"]:
        path = ws.root / r["uri"]
        if not path.is_file():
            continue
        ref = ArtifactRef(kind=r["kind"], uri=r["uri"], digest=r["digest"], meta=r["meta"])
        vk = str(r["meta"].get("volume_key"))
        mtime = path.stat().st_mtime_ns
        if vk not in newest or (mtime, ref.uri) > (newest[vk][0], newest[vk][1].uri):
            newest[vk] = (mtime, ref)
    features = [newest[k][1] for k in sorted(newest)]
    return {"volumes": volumes, "masks": masks, "features": features, "qc": rows["qc"], "rejections": rows["rejections"]}


@stage_task("report", "cohort_summary")
def cohort_summary(workspace: str, qc: list[dict[str, Any]], rejections: list[dict[str, Any]]) -> ArtifactRef:
    """The collection summary of the whole cohort (QC findings and quarantine records) as one JSON artifact."""
    step = Step("report", "cohort_summary", workspace, qc=qc, rejections=rejections)
    with atomic_folder(step.folder) as stage:
        write_json(stage / "summary.json", {"qc": qc, "rejections": rejections, "provenance": step.provenance()})
    return step.ref("collection-summary", "summary.json")
