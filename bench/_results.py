"""Shared helper for ``bench/results.json``: merge rows by (operation, tool), write atomically.

Every benchmark module calls :func:`merge_results` with its rows. A row is a dict
with at least ``operation``, ``tool``, ``mvoxel_per_s`` and ``ratio`` (medflow's
throughput divided by that tool's; 1.0 for medflow's own row). Rows already in the
file with the same ``(operation, tool)`` are replaced; all others are kept, so
several benchmark modules can share the file.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
import threading
from collections.abc import Iterable, Mapping
from typing import Any

RESULTS_PATH = pathlib.Path(__file__).resolve().parent / "results.json"
_REQUIRED = ("operation", "tool", "mvoxel_per_s", "ratio")
_LOCK = threading.Lock()


def _load(path: pathlib.Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:  # a torn or hand-edited file: refuse to silently drop rows
        raise ValueError(f"{path} is not valid JSON ({exc}); fix or delete it") from exc
    if not isinstance(data, list):
        raise ValueError(f"{path} must hold a JSON list, got {type(data).__name__}")
    return [dict(r) for r in data]


def merge_results(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Merge ``rows`` into the results file and return the full merged list.

    Parameters
    ----------
    rows : iterable of mapping
        Each must contain ``operation``, ``tool``, ``mvoxel_per_s`` and ``ratio``.
    path : path-like, optional
        Defaults to ``bench/results.json``.
    """
    target = pathlib.Path(path) if path is not None else RESULTS_PATH
    new = [dict(r) for r in rows]
    for r in new:
        missing = [k for k in _REQUIRED if k not in r]
        if missing:
            raise ValueError(f"result row is missing {missing}: {r!r}")
    keys = {(r["operation"], r["tool"]) for r in new}
    with _LOCK:
        merged = [r for r in _load(target) if (r.get("operation"), r.get("tool")) not in keys] + new
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".results.", suffix=".json.tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(merged, fh, indent=2, default=float)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return merged
