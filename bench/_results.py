"""Shared helper for ``bench/results.json``: merge rows by (operation, tool), write atomically.

The file is one JSON object::

    {"runs": {"<benchmark>": {"machine": {...}, "argv": [...]}, ...},
     "rows": [{"operation": ..., "tool": ..., "benchmark": ..., ...}, ...]}

Every benchmark module calls :func:`merge_results` with its rows and its name. A row
is a dict with at least ``operation`` and ``tool`` (kernel rows also carry
``mvoxel_per_s`` and ``ratio``: medflow's throughput divided by that tool's). Rows
already in the file with the same ``(operation, tool)`` are replaced; all others are
kept, so several benchmark modules (each in its own process) share the file. Under
``runs`` each benchmark's latest run records the machine and the thread settings of
its process as they were (:func:`bench._common.machine_facts`). A file in the older
format (a bare list of rows) is read as rows without run facts.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
import threading
from collections.abc import Iterable, Mapping
from typing import Any


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return float(value)


RESULTS_PATH = pathlib.Path(__file__).resolve().parent / "results.json"
_REQUIRED = ("operation", "tool")
_LOCK = threading.Lock()


def _load(path: pathlib.Path) -> dict[str, Any]:
    if not path.exists():
        return {"runs": {}, "rows": []}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:  # a torn or hand-edited file: refuse to silently drop rows
        raise ValueError(f"{path} is not valid JSON ({exc}); fix or delete it") from exc
    if isinstance(data, list):  # older format: rows only
        return {"runs": {}, "rows": [dict(r) for r in data]}
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ValueError(f"{path} must hold a JSON object with a 'rows' list, got {type(data).__name__}")
    return {"runs": dict(data.get("runs") or {}), "rows": [dict(r) for r in data["rows"]]}


def load_results(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The results file as ``{"runs": {...}, "rows": [...]}`` (empty when absent)."""
    return _load(pathlib.Path(path) if path is not None else RESULTS_PATH)


def merge_results(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike[str] | None = None, *,
                  benchmark: str | None = None, run_facts: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Merge ``rows`` into the results file and return the full merged list of rows.

    Parameters
    ----------
    rows : iterable of mapping
        Each must contain ``operation`` and ``tool``.
    path : path-like, optional
        Defaults to ``bench/results.json``.
    benchmark : str, optional
        Name of the benchmark module; stamped on each row, and its run facts (machine,
        thread settings of this process, ``sys.argv``) are stored under ``runs``.
    run_facts : mapping, optional
        Extra facts of this run (e.g. the timing policy), stored with the machine facts.
    """
    target = pathlib.Path(path) if path is not None else RESULTS_PATH
    new = [dict(r) for r in rows]
    for r in new:
        missing = [k for k in _REQUIRED if k not in r]
        if missing:
            raise ValueError(f"result row is missing {missing}: {r!r}")
    if benchmark is not None:
        for r in new:
            r.setdefault("benchmark", benchmark)
    keys = {(r["operation"], r["tool"]) for r in new}
    with _LOCK:
        data = _load(target)
        merged = [r for r in data["rows"] if (r.get("operation"), r.get("tool")) not in keys] + new
        runs = data["runs"]
        if benchmark is not None:
            import sys

            from bench._common import machine_facts

            runs[benchmark] = {"machine": machine_facts(), "argv": list(sys.argv), **dict(run_facts or {})}
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".results.", suffix=".json.tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump({"runs": runs, "rows": merged}, fh, indent=2, default=_jsonable)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return merged
