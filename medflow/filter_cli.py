"""Body of ``medflow filter IMAGE --filter FILTER.yaml --out OUT.nii.gz``: apply one IBSI-2 filter.

The YAML holds one :class:`imaging.filter_spec.FilterSpec` (schema and examples: ``docs/filters.md``;
one preset per IBSI-2 phase-1 test in ``medflow/filter_presets/``).
"""

from __future__ import annotations

import pathlib
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
from pydantic import ValidationError

from imaging.filter_spec import FilterSpec, apply_filter
from medflow.yamlio import read_yaml_mapping, validation_lines
from storage.images import read_image, write_nifti

#: Directory of the IBSI-2 phase-1 presets (``1.a.1.yaml`` ... ``2.c.yaml``).
PRESETS_DIR = pathlib.Path(__file__).resolve().parent / "filter_presets"

#: Volumes with more voxels than this are filtered as dask arrays in slabs along axis 0.
DASK_MIN_VOXELS = 128**3
#: Target voxels per dask chunk (float64 working copy: 32 MiB).
CHUNK_VOXELS = 4 * 1024 * 1024


class FilterSpecError(ValueError):
    """The filter YAML is unreadable or does not describe a valid filter."""


def load_filter_spec(path: str | Path) -> FilterSpec:
    """Read a filter YAML into a :class:`FilterSpec`; errors name the file and the offending field."""
    data = read_yaml_mapping(path, what="filter YAML", error=FilterSpecError,
                             example="filter_type: ..., ...")
    return parse_filter_spec(data, source=str(path))


def parse_filter_spec(data: dict[str, Any], *, source: str = "filter spec") -> FilterSpec:
    """Validate a mapping as a :class:`FilterSpec`, turning pydantic errors into one readable message."""
    try:
        return FilterSpec.model_validate(data)
    except ValidationError as exc:
        lines = validation_lines(exc)
        raise FilterSpecError(f"{source}: invalid filter specification:\n  " + "\n  ".join(lines)) from exc


def slab_chunks(shape: tuple[int, ...], chunk_voxels: int = CHUNK_VOXELS) -> tuple[int, ...]:
    """Chunks for a volume: slabs along axis 0 of about ``chunk_voxels`` voxels (at least one slice)."""
    plane = int(np.prod(shape[1:]))
    depth = max(1, min(shape[0], chunk_voxels // max(plane, 1)))
    return (depth,) + tuple(shape[1:])


def run_filter(
    image: Path,
    filter_yaml: Path,
    out: Path,
    *,
    chunks: tuple[int, ...] | None = None,
    num_workers: int | None = None,
) -> Path:
    """Filter ``image`` with the filter of ``filter_yaml`` and write the response map to ``out`` (NIfTI).

    Parameters
    ----------
    image : NIfTI (``.nii``/``.nii.gz``) or NRRD file.
    filter_yaml : YAML mapping of :class:`FilterSpec` fields.
    out : output ``.nii`` or ``.nii.gz``; written atomically with the affine of ``image``.
    chunks : dask chunk shape. None: volumes above ``DASK_MIN_VOXELS`` voxels are split into slabs along
        axis 0 (:func:`slab_chunks`), smaller ones are filtered in memory.
    num_workers : threads for the dask computation (None: dask's default).

    Returns
    -------
    out : the path written. The response map is float32, on the grid of ``image``.
    """
    spec = load_filter_spec(filter_yaml)
    out = Path(out)
    if not out.name.lower().endswith((".nii", ".nii.gz")):
        raise ValueError(f"out must end with .nii or .nii.gz, got {out.name!r}")
    img = read_image(image)
    volume = img.volume
    if volume.ndim != 3:
        raise ValueError(f"{image}: filters need a 3-D volume, got shape {volume.shape!r}")
    if chunks is None and volume.size > DASK_MIN_VOXELS:
        chunks = slab_chunks(volume.shape)
    if chunks is not None:
        lazy = apply_filter(da.from_array(volume, chunks=chunks), spec, spacing=img.spacing)
        with dask.config.set(scheduler="threads", num_workers=num_workers):
            response = np.asarray(lazy.compute())
    else:
        response = np.asarray(apply_filter(volume, spec, spacing=img.spacing))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_nifti(out, response.astype(np.float32, copy=False), img.affine)
    return out
