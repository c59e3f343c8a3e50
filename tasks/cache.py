"""Content-addressed caching for medflow's Prefect tasks.

A task's cache key is a digest of:

* the task's name and its stage's explicit code version (:mod:`tasks.versions`),
* the library versions,
* the content digests of its input artifacts (every :class:`ArtifactRef` in the
  arguments contributes its ``digest``, never its ``uri``),
* its parameters (pydantic models / plain values as canonical JSON).

Arguments named in ``ignore`` (by default ``workspace``, ``source``) do not enter
the key: they are *locations*. Never the flow-run id. So rerunning unchanged work
hits the cache, moving the workspace recomputes nothing, and changing one
parameter reruns exactly the tasks that depend on it.

The same :func:`stage_key` is called by the task body to name its artifact
folder (``artifacts/<stage>/<key[:2]>/<key>``): one place per key, so a cache
record and its data go together. Before Prefect trusts a hit, the policy checks
that the artifact folder still matches its manifest; if not, the stale record is
removed and the task recomputes (FIELD-NOTES: a record can outlive its artifact).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from dataclasses import dataclass, field
from typing import Any

from prefect.cache_policies import CachePolicy
from pydantic import BaseModel

from storage.workspace import (
    MANIFEST,
    ArtifactRef,
    Workspace,
    canonical_json,
    manifest_digest,
    verify_artifact,
)
from tasks.versions import STAGE_VERSIONS, library_versions

DEFAULT_IGNORE = ("workspace", "source")


def _fingerprint(value: Any) -> Any:
    """Replace artifact references by their digests, recursively; models become plain data."""
    if isinstance(value, ArtifactRef):
        return {"artifact": value.kind, "digest": value.digest}
    if isinstance(value, BaseModel):
        return _fingerprint(value.model_dump(mode="json"))
    if isinstance(value, dict):
        if set(value) >= {"kind", "uri", "digest"}:  # an ArtifactRef after JSON round trip
            return {"artifact": value["kind"], "digest": value["digest"]}
        return {str(k): _fingerprint(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_fingerprint(v) for v in value]
    if isinstance(value, pathlib.PurePath):
        raise TypeError("a path cannot enter a cache key: pass an ArtifactRef (content digest) instead")
    return value


def stage_key(stage: str, task_name: str, inputs: dict[str, Any], *,
              ignore: tuple[str, ...] = DEFAULT_IGNORE) -> str:
    """The content-addressed key of one task call (hex sha256)."""
    if stage not in STAGE_VERSIONS:
        raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(STAGE_VERSIONS)}")
    payload = {
        "task": task_name,
        "stage": stage,
        "code_version": STAGE_VERSIONS[stage],
        "libraries": library_versions(),
        "inputs": {k: _fingerprint(v) for k, v in sorted(inputs.items()) if k not in ignore},
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


@dataclass
class ContentCachePolicy(CachePolicy):
    """Prefect cache policy computing :func:`stage_key` and verifying the keyed artifact folder."""

    stage: str = ""
    ignore: tuple[str, ...] = field(default=DEFAULT_IGNORE)
    verify: bool = True

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        key = stage_key(self.stage, task_ctx.task.name, inputs, ignore=self.ignore)
        workspace = inputs.get("workspace")
        if self.verify and workspace is not None:
            _drop_stale_record(Workspace(workspace), self.stage, key)
        return key


def _drop_stale_record(ws: Workspace, stage: str, key: str) -> None:
    record = ws.results / key
    if not record.exists():
        return
    folder = ws.artifact_dir(stage, key)
    manifest_ok = False
    if folder.is_dir():
        try:
            digest = manifest_digest(json.loads((folder / MANIFEST).read_text()))
            manifest_ok = verify_artifact(folder, digest)
        except (OSError, ValueError):
            manifest_ok = False
    if not manifest_ok:
        record.unlink(missing_ok=True)
