"""Explicit code versions per stage, and the library versions that enter every cache key.

Bump a stage's version whenever a change alters what that stage computes (its
pure functions, its task body or its storage format). Prefect's TASK_SOURCE
policy only hashes the task function's own text and misses helpers, so this is
what invalidates the cache after a science change (FIELD-NOTES, upstream #23062).
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform

STAGE_VERSIONS: dict[str, str] = {
    "collection": "5",
    "preprocessing": "3",
    "processing": "4",
    "analysis": "2",
    "discovery": "4",
    "report": "6",
}

#: Libraries whose results feed artifacts; their versions are part of every cache key.
_LIBRARIES = ("medflow", "numpy", "scipy", "dask", "dask-image", "zarr", "pydicom", "scikit-image",
              "scikit-learn", "pandas", "pyarrow", "numba", "PyWavelets", "xarray")


@functools.cache
def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out
