"""Export workspace volumes to research formats (NIfTI), with an index table."""

from __future__ import annotations

import csv
import io
import pathlib
from typing import Any

import numpy as np

from storage.catalog import Catalog
from storage.images import write_nifti
from storage.volumes import read_numpy
from storage.workspace import Workspace, write_text_atomic

INDEX_COLUMNS = ["volume_key", "patient_key", "series_number", "modality", "kind", "shape", "spacing", "path"]


def to_nifti_layout(volume: np.ndarray, kind: str) -> np.ndarray:
    """medflow storage layout -> ``[k, j, i(, t)]`` expected by :func:`storage.images.write_nifti`.

    3d ``[slice,row,col]`` as is; 4d ``[t,slice,row,col]`` -> ``[slice,row,col,t]``; 2d ``[row,col]`` ->
    ``[1,row,col]``; 2d+t ``[t,row,col]`` -> ``[1,row,col,t]``.
    """
    if kind == "4d":
        return np.moveaxis(volume, 0, -1)
    if kind == "2d":
        return volume[np.newaxis]
    if kind == "2d+t":
        return np.moveaxis(volume, 0, -1)[np.newaxis]
    return volume


def export_nifti(workspace: str | pathlib.Path, out: str | pathlib.Path, *, catalog_url: str | None = None
                 ) -> list[dict[str, Any]]:
    """Write one ``<volume_key>.nii.gz`` per converted volume and ``index.csv`` into ``out``."""
    ws = Workspace(workspace)
    if not (ws.root / "artifacts").is_dir():
        raise FileNotFoundError(f"not a medflow workspace (no artifacts folder): {ws.root}")
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with Catalog.for_workspace(ws.root, catalog_url) as cat:
        stored = cat.volumes()
    for v in stored:
        arr, attrs = read_numpy(ws.root / v.uri)
        kind = v.kind
        data = to_nifti_layout(arr, kind)
        path = out / f"{v.volume_key}.nii.gz"
        write_nifti(path, data, np.asarray(attrs["affine"]))
        rows.append({"volume_key": v.volume_key, "patient_key": attrs.get("medflow", {}).get("patient_key"),
                     "series_number": (v.meta or {}).get("series_number"), "modality": (v.meta or {}).get("modality"),
                     "kind": kind, "shape": "x".join(map(str, arr.shape)),
                     "spacing": "x".join(f"{s:.6g}" for s in v.spacing), "path": path.name})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=INDEX_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "index.csv", buf.getvalue())
    return rows

