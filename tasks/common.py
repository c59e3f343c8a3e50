"""Shared plumbing of the stage tasks: task factory, keyed artifact folders, provenance, compute context."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

from prefect import task

from medflow.config import ComputeConfig
from storage.workspace import MANIFEST, ArtifactRef, Workspace, canonical_json, manifest_digest
from tasks.cache import ContentCachePolicy, _fingerprint, stage_key
from tasks.versions import STAGE_VERSIONS, library_versions

#: Arguments that describe *where* things are or run, never *what* is computed.
LOCATION_ARGS = ("workspace", "source", "compute")


def stage_task(stage: str, name: str, **options: Any) -> Callable:
    """A Prefect task with medflow's content cache policy and JSON result records.

    No retries by default: stage work is deterministic computation (retries are
    for transient IO only, configured on the tasks that do PACS/network IO).
    """
    policy = ContentCachePolicy(stage=stage, ignore=LOCATION_ARGS)
    return task(name=name, cache_policy=policy, persist_result=True, result_serializer="json",
                tags=[f"stage:{stage}"], **options)


class Step:
    """What a running stage task knows about itself: its key, its artifact folder, its provenance."""

    def __init__(self, stage: str, name: str, workspace: str | os.PathLike, **inputs: Any):
        self.stage = stage
        self.name = name
        self.ws = Workspace(workspace)
        self.inputs = {k: v for k, v in inputs.items() if k not in LOCATION_ARGS}
        self.key = stage_key(stage, name, self.inputs, ignore=LOCATION_ARGS)
        self.folder = self.ws.artifact_dir(stage, self.key)

    def provenance(self, **extra: Any) -> dict[str, Any]:
        """Input digests, parameters, code version and library versions of this output.

        Deliberately no timestamp or host: recomputing the same inputs must give byte-identical
        artifacts (same digest), so that everything downstream stays a cache hit.
        """
        return {
            "stage": self.stage,
            "task": self.name,
            "cache_key": self.key,
            "code_version": STAGE_VERSIONS[self.stage],
            "inputs": _fingerprint(self.inputs),
            "libraries": library_versions(),
            **extra,
        }

    def ref(self, kind: str, rel: str = "", *, meta: dict[str, Any] | None = None) -> ArtifactRef:
        """Reference to the step folder (``rel=""``) or a sub-folder/file of it, after it was written."""
        return sub_ref(self.ws, self.folder, kind, rel, meta=meta)


def sub_ref(ws: Workspace, folder: os.PathLike, kind: str, rel: str = "", *,
            meta: dict[str, Any] | None = None) -> ArtifactRef:
    """Reference to a written artifact folder or to a part of it, with a digest from its manifest."""
    from pathlib import Path

    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    if rel:
        prefix = rel.rstrip("/") + "/"
        part = {k[len(prefix):]: v for k, v in manifest.items() if k.startswith(prefix)}
        if not part and rel in manifest:  # a single file
            digest = "sha256:" + manifest[rel][1]
        else:
            digest = manifest_digest(part)
        return ArtifactRef(kind=kind, uri=ws.relative(folder / rel), digest=digest, meta=meta or {})
    return ArtifactRef(kind=kind, uri=ws.relative(folder), digest=manifest_digest(manifest), meta=meta or {})


def write_json(path: os.PathLike, value: Any) -> None:
    with open(path, "w") as fh:
        fh.write(canonical_json(value))


@contextlib.contextmanager
def dask_context(compute: ComputeConfig | None) -> Iterator[None]:
    """Run dask work on the configured scheduler.

    Default: the local threaded scheduler (FIELD-NOTES: fastest inside one task on
    one machine). With ``dask_scheduler_address``, a ``dask.distributed`` client.
    """
    import dask

    compute = compute or ComputeConfig()
    if compute.dask_scheduler_address:
        from distributed import Client

        # scoped to this block: set_as_default would leave the process pointing at a closed client
        with Client(compute.dask_scheduler_address, set_as_default=False) as client, \
                dask.config.set(scheduler=client):
            yield
        return
    with dask.config.set(scheduler="threads", num_workers=compute.dask_threads or os.cpu_count() or 1):
        yield
