"""Collection stage task: DICOM folder -> pseudonymised Zarr volumes + masks.

The task's own artifact folder holds ``collection.json``; volumes and masks live in one
content-keyed folder per unit (patient) under ``artifacts/collection-unit/`` (see
:func:`storage.collect.collect_into`), so adding patients to a source converts only theirs.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from medflow.config import CollectionConfig
from storage.workers import start_worker_server
from storage.workspace import ArtifactRef, atomic_folder, canonical_json, sha256_bytes
from tasks.common import Step, stage_task, write_json

if TYPE_CHECKING:
    from storage.pseudonym import PseudonymKeys


class CollectionOutput(BaseModel):
    """What collection hands downstream: references and pseudonymous keys only."""

    summary: ArtifactRef
    volumes: list[ArtifactRef]
    masks: list[ArtifactRef]
    n_files: int
    n_rejected: int
    n_routed: int
    units_converted: int = 0
    units_cached: int = 0


def unit_salt(params: CollectionConfig, key_id: str) -> str:
    """Everything but the files that determines a collection unit's output (its cache key's salt)."""
    from tasks.versions import STAGE_VERSIONS, library_versions

    return sha256_bytes(canonical_json({"params": params.model_dump(mode="json"), "key_id": key_id,
                                        "code_version": STAGE_VERSIONS["collection"],
                                        "libraries": library_versions()}).encode())


def source_fingerprint(source: str | pathlib.Path, *, workspace: str | pathlib.Path | None = None,
                       keys: PseudonymKeys | None = None) -> ArtifactRef:
    """Content digest of a source folder: the sorted content digests of its files, names ignored.

    Renaming, moving or re-nesting files leaves it unchanged; changing any byte changes it.
    The reference's ``uri`` is empty on purpose: the source's location never enters a key.

    With ``workspace``, files whose digest the workspace remembers (:class:`storage.digest_memo.DigestMemo`:
    same device, inode, size and times as when they were hashed) are not read; the others are read,
    hashed and remembered. A cached rerun of a cohort then reads no file, and adding patients reads theirs.
    With ``keys`` too, each file's patient is remembered as a keyed token
    (:meth:`~storage.pseudonym.PseudonymKeys.partition_token`), so that the collection's partition into
    patients needs no read of a remembered file either.

    A file that cannot be read enters as :data:`storage.dicom.scan.UNREADABLE` (the run goes on; the
    collection quarantines it as ``unreadable_file``): once it can be read, the fingerprint changes.
    """
    from storage.dicom.scan import file_digests, forget_digests, iter_files
    from storage.dicom.units import peek_patient
    from storage.digest_memo import DigestMemo
    from storage.workers import default_workers

    root = pathlib.Path(source)
    if not root.is_dir():
        raise FileNotFoundError(f"source folder does not exist: {root}")
    # the files collection reads (symbolic links to folders are not followed); the digests are remembered
    # by this process, so the collection's partition does not hash the same files again
    forget_digests()  # only this source's digests are kept (memory bounded by one source)
    # hashed by the collection's worker processes (threads measured slower on 2 cores: the GIL); the PatientID
    # peeked from the same read spares the partition a read
    memo = DigestMemo(workspace, key_id=keys.key_id() if keys is not None else None) if workspace is not None else None
    token = None if keys is None else _token_per_patient(keys)
    digests = sorted(file_digests(list(iter_files(root)), note=peek_patient, workers=default_workers(), memo=memo,
                                  token=token))
    digest = "sha256:" + sha256_bytes(canonical_json(digests).encode())
    return ArtifactRef(kind="dicom-source", uri="", digest=digest, meta={"n_files": len(digests)})


def _token_per_patient(keys: PseudonymKeys) -> Callable[[Any], str | None]:
    """``keys.partition_token`` of a peeked PatientID (None for a file without one), one HMAC per patient.

    A cohort's files name a few patients each many times (4,477 files, 26 patients): the tokens of the
    IDs met so far are kept in this closure, which lives as long as one fingerprint.
    """
    tokens: dict[str, str] = {}

    def token(pid: Any) -> str | None:
        if not isinstance(pid, str):
            return None
        hit = tokens.get(pid)
        if hit is None:
            hit = tokens[pid] = keys.partition_token(pid)
        return hit

    return token


@stage_task("collection", "collect")
def collect(workspace: str, source: str, content: ArtifactRef, params: CollectionConfig,
            key_id: str) -> CollectionOutput:
    """Scan, guard, group, convert and pseudonymise every DICOM object under ``source``.

    ``content`` is the source's content fingerprint (the cache key uses it, never the
    path); ``key_id`` identifies the pseudonymisation secret (a different secret means
    different pseudonyms, so a different key).
    """
    start_worker_server()  # (running already when the flow started it) imports while this process partitions
    from storage.collect import collect_into
    from storage.pseudonym import PseudonymKeys
    from tasks.common import sub_ref

    step = Step("collection", "collect", workspace, content=content, params=params, key_id=key_id)
    keys = PseudonymKeys.from_env()
    if keys.key_id() != key_id:
        raise RuntimeError("the pseudonymisation secret changed while the run was being set up")
    with atomic_folder(step.folder) as stage:
        summary = collect_into(source, stage, config=params, keys=keys, workspace=step.ws.root,
                               unit_salt=unit_salt(params, key_id))
        write_json(stage / "collection.json", {
            "provenance": step.provenance(),
            "n_files": summary.n_files,
            "volumes": [v.meta for v in summary.volumes],
            "masks": [m.meta for m in summary.masks],
            "rejections": summary.rejections,
            "routed": summary.routed,
            "qc": summary.qc,
        })

    def ref(kind: str, item) -> ArtifactRef:
        if item.base is None:
            return step.ref(kind, item.rel, meta=item.meta)
        return sub_ref(step.ws, item.base, kind, item.rel, meta=item.meta)

    return CollectionOutput(
        summary=step.ref("collection-summary", "collection.json"),
        volumes=[ref("volume", v) for v in summary.volumes],
        masks=[ref("mask", m) for m in summary.masks],
        n_files=summary.n_files,
        n_rejected=len(summary.rejections),
        n_routed=len(summary.routed),
        units_converted=summary.units_converted,
        units_cached=summary.units_cached,
    )
