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

    No tags: in Prefect 3 a task run with tags asks the API for tag concurrency slots
    before it starts (one more round trip per task: 13 ms on an idle 2-core machine,
    over 100 ms under load, against 7 ms for a whole untagged task run), and a stage tag
    limits nothing worth limiting. The task name says the stage; tags stay where a tag
    concurrency limit means something (``io:pacs`` on the PACS tasks).
    """
    policy = ContentCachePolicy(stage=stage, ignore=LOCATION_ARGS)
    return task(name=name, cache_policy=policy, persist_result=True, result_serializer="json", **options)


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


# ---------------------------------------------------------------------------------------------
# Content-keyed steps inside one Prefect task (one task per volume chain)
# ---------------------------------------------------------------------------------------------

#: Suffix of a step's output record, stored beside its artifact folder: ``artifacts/<stage>/<k2>/<key>.output.json``.
RECORD_SUFFIX = ".output.json"


def iter_refs(value: Any) -> Iterator[ArtifactRef]:
    """Every :class:`ArtifactRef` inside a (nested) pydantic model, list or dict."""
    from pydantic import BaseModel

    if isinstance(value, ArtifactRef):
        yield value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from iter_refs(getattr(value, name))
    elif isinstance(value, dict):
        for v in value.values():
            yield from iter_refs(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from iter_refs(v)


def ref_intact(ws: Workspace, ref: ArtifactRef) -> bool:
    """Cheap check that ``ref`` still points at the content it names.

    The artifact folder (``artifacts/<stage>/<k2>/<key>``) holding ``ref`` must carry its
    manifest, the manifest must give ``ref.digest`` for the referenced part, and every file
    of that part must exist with its recorded size. No content is re-hashed (the manifest
    was written when the folder was staged; FIELD-NOTES: verify before trusting a hit).
    """
    from pathlib import PurePosixPath

    parts = PurePosixPath(ref.uri).parts
    if len(parts) < 4 or parts[0] != "artifacts":
        return ws.resolve(ref).exists()
    folder = ws.root.joinpath(*parts[:4])
    rel = "/".join(parts[4:])
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if rel:
        prefix = rel.rstrip("/") + "/"
        part = {k: v for k, v in manifest.items() if k.startswith(prefix)}
        if part:
            digest = manifest_digest({k[len(prefix):]: v for k, v in part.items()})
        elif rel in manifest:
            part = {rel: manifest[rel]}
            digest = "sha256:" + manifest[rel][1]
        else:
            return False
    else:
        part, digest = manifest, manifest_digest(manifest)
    if digest != ref.digest:
        return False
    for name, (size, _sha) in part.items():
        try:
            if (folder / name).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def record_path(ws: Workspace, stage: str, key: str):
    folder = ws.artifact_dir(stage, key)
    return folder.with_name(folder.name + RECORD_SUFFIX)


def cached_step(stage_fn: Any, workspace: str, output: type, *, compute_on_miss: bool = True,
                **kwargs: Any) -> tuple[Any, str]:
    """Run one stage function as a content-keyed step, without a Prefect task run of its own.

    ``stage_fn`` is a task made by :func:`stage_task` returning an ``output`` model; its key is the same
    :func:`tasks.cache.stage_key` Prefect would compute (code version, library versions,
    input digests, parameters). A hit needs the step's output record (small JSON beside the
    artifact folder) and every artifact it references intact (:func:`ref_intact`): then the
    recorded output is returned without touching any array (milliseconds). Otherwise the
    function body runs and its output record is written atomically.

    ``compute_on_miss=False`` only looks: a miss returns ``(None, "Miss")`` without running anything.

    Returns
    -------
    (output, state)
        The stage's output model and ``"Cached"`` or ``"Completed"`` (or ``(None, "Miss")``).
    """
    from storage.workspace import write_text_atomic

    policy = stage_fn.cache_policy
    if not isinstance(policy, ContentCachePolicy):
        raise TypeError(f"{stage_fn.name} is not a medflow stage task (no content cache policy)")
    ws = Workspace(workspace)
    key = stage_key(policy.stage, stage_fn.name, kwargs, ignore=policy.ignore)
    record = record_path(ws, policy.stage, key)
    if record.is_file():
        try:
            out = output.model_validate(json.loads(record.read_text())["output"])
        except (OSError, ValueError, KeyError):
            out = None
        if out is not None and all(ref_intact(ws, r) for r in iter_refs(out)):
            return out, "Cached"
    if not compute_on_miss:
        return None, "Miss"
    out = stage_fn.fn(workspace, **kwargs)
    write_text_atomic(record, canonical_json({"stage": policy.stage, "task": stage_fn.name, "cache_key": key,
                                              "output": out.model_dump(mode="json")}))
    return out, "Completed"
