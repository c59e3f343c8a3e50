"""Collection stage task: DICOM folder -> pseudonymised Zarr volumes + masks (one keyed artifact folder)."""

from __future__ import annotations

import pathlib

from pydantic import BaseModel

from medflow.config import CollectionConfig
from storage.workspace import ArtifactRef, atomic_folder, canonical_json, sha256_bytes, sha256_file
from tasks.common import Step, stage_task, write_json


class CollectionOutput(BaseModel):
    """What collection hands downstream: references and pseudonymous keys only."""

    summary: ArtifactRef
    volumes: list[ArtifactRef]
    masks: list[ArtifactRef]
    n_files: int
    n_rejected: int
    n_routed: int


def source_fingerprint(source: str | pathlib.Path) -> ArtifactRef:
    """Content digest of a source folder: the sorted content digests of its files, names ignored.

    Renaming, moving or re-nesting files leaves it unchanged; changing any byte changes it.
    The reference's ``uri`` is empty on purpose: the source's location never enters a key.
    """
    root = pathlib.Path(source)
    if not root.is_dir():
        raise FileNotFoundError(f"source folder does not exist: {root}")
    digests = sorted(sha256_file(p) for p in root.rglob("*") if p.is_file())
    digest = "sha256:" + sha256_bytes(canonical_json(digests).encode())
    return ArtifactRef(kind="dicom-source", uri="", digest=digest, meta={"n_files": len(digests)})


@stage_task("collection", "collect")
def collect(workspace: str, source: str, content: ArtifactRef, params: CollectionConfig,
            key_id: str) -> CollectionOutput:
    """Scan, guard, group, convert and pseudonymise every DICOM object under ``source``.

    ``content`` is the source's content fingerprint (the cache key uses it, never the
    path); ``key_id`` identifies the pseudonymisation secret (a different secret means
    different pseudonyms, so a different key).
    """
    from storage.collect import collect_into
    from storage.pseudonym import PseudonymKeys

    step = Step("collection", "collect", workspace, content=content, params=params, key_id=key_id)
    keys = PseudonymKeys.from_env()
    if keys.key_id() != key_id:
        raise RuntimeError("the pseudonymisation secret changed while the run was being set up")
    with atomic_folder(step.folder) as stage:
        summary = collect_into(source, stage, config=params, keys=keys, workspace=step.ws.root)
        write_json(stage / "collection.json", {
            "provenance": step.provenance(),
            "n_files": summary.n_files,
            "volumes": [v.meta for v in summary.volumes],
            "masks": [m.meta for m in summary.masks],
            "rejections": summary.rejections,
            "routed": summary.routed,
            "qc": summary.qc,
        })
    return CollectionOutput(
        summary=step.ref("collection-summary", "collection.json"),
        volumes=[step.ref("volume", v.rel, meta=v.meta) for v in summary.volumes],
        masks=[step.ref("mask", m.rel, meta=m.meta) for m in summary.masks],
        n_files=summary.n_files,
        n_rejected=len(summary.rejections),
        n_routed=len(summary.routed),
    )
