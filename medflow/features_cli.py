"""Body of ``medflow features --image PATH --mask PATH (--preset NAME | --settings FILE.yaml)
[--roi NAME] --out FEATURES.csv``: IBSI-1 features of one ROI, written as a CSV table.

The settings YAML is a mapping of :class:`imaging.features.FeatureSettings` fields,
optionally starting from a named preset which the other keys override::

    preset: ibsi-config-c      # optional base (see imaging.features.PRESETS)
    bin_width: 10.0
    families: [stat, ih, cm]

Images are read through a reader callable (default :func:`storage.images.read_image`,
NIfTI/NRRD) so other inputs (DICOM series, RTSTRUCT, workspace volumes) can be
plugged in by passing another ``reader``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy
from pydantic import ValidationError

import medflow
from imaging.features import PRESETS, FeatureSettings, extract_features
from medflow.yamlio import read_yaml_mapping, validation_lines
from storage.images import ImageData
from storage.inputs import check_same_grid, load_case, select_roi
from storage.workspace import atomic_path, canonical_json, digest_path

#: Provenance columns added to every row of the CSV.
PROVENANCE_COLUMNS = ["roi", "settings_name", "image_digest", "mask_digest", "settings_digest",
                      "medflow_version", "numpy_version", "scipy_version"]


class FeatureSettingsError(ValueError):
    """The settings YAML is unreadable or does not describe valid feature settings."""


def parse_feature_settings(data: dict[str, Any], *, source: str = "feature settings") -> FeatureSettings:
    """Validate a mapping as :class:`FeatureSettings`; an optional ``preset`` key names the base preset."""
    fields = dict(data)
    base_name = fields.pop("preset", None)
    if base_name is not None:
        if base_name not in PRESETS:
            raise FeatureSettingsError(f"{source}: unknown preset {base_name!r}; known: {sorted(PRESETS)}")
        fields = {**PRESETS[base_name].model_dump(), **fields}
    try:
        return FeatureSettings.model_validate(fields)
    except ValidationError as exc:
        lines = validation_lines(exc)
        raise FeatureSettingsError(f"{source}: invalid feature settings:\n  " + "\n  ".join(lines)) from exc


def load_feature_settings(path: str | Path) -> FeatureSettings:
    """Read a YAML file of :class:`FeatureSettings` fields (errors name the file and the field)."""
    data = read_yaml_mapping(path, what="settings YAML", error=FeatureSettingsError)
    return parse_feature_settings(data, source=str(path))


def resolve_settings(preset: str | None, settings_file: Path | None) -> tuple[FeatureSettings, str]:
    """Exactly one of ``preset`` / ``settings_file``; returns the settings and a name for provenance."""
    if (preset is None) == (settings_file is None):
        raise ValueError("give exactly one of preset or settings_file "
                         f"(got preset={preset!r}, settings_file={settings_file!r})")
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known presets: {sorted(PRESETS)}")
        return PRESETS[preset], preset
    assert settings_file is not None
    return load_feature_settings(settings_file), Path(settings_file).name


def settings_digest(settings: FeatureSettings) -> str:
    """``sha256:<hex>`` of the canonical JSON of the settings (what determines the values)."""
    return "sha256:" + hashlib.sha256(canonical_json(settings.model_dump(mode="json")).encode()).hexdigest()


def run_features(image: Path, mask: Path, *, preset: str | None, settings_file: Path | None, roi: str | None,
                 out: Path, reader: Callable[[Path], ImageData] | None = None) -> pd.DataFrame:
    """Extract IBSI-1 features of the ROI ``mask`` on ``image`` and write them to ``out`` (CSV).

    Parameters
    ----------
    image, mask : Path
        Files readable by ``reader`` (default: NIfTI/NRRD via :func:`storage.images.read_image`).
    preset : str or None
        Name in :data:`imaging.features.PRESETS`; exclusive with ``settings_file``.
    settings_file : Path or None
        YAML of :class:`FeatureSettings` fields (optional ``preset`` key as base).
    roi : str or None
        Label value to select in a label-image mask, or the ROI/segment name of an
        RTSTRUCT/SEG (None: the only ROI / all non-zero voxels of a single label).
    out : Path
        CSV written atomically.
    reader : callable, optional
        ``reader(path) -> ImageData`` for both files. By default :func:`storage.inputs.load_case`
        reads NIfTI/NRRD, a DICOM series folder, a workspace volume, and as mask an RTSTRUCT
        (``roi`` = ROI name) or a DICOM SEG (``roi`` = segment label) on the image grid.

    Returns
    -------
    pandas.DataFrame
        The table written: ``family, feature, aggregation, ibsi_code, value`` plus
        :data:`PROVENANCE_COLUMNS`.
    """
    settings, settings_name = resolve_settings(preset, Path(settings_file) if settings_file else None)
    image, mask, out = Path(image), Path(mask), Path(out)
    if reader is None:
        case = load_case(image, mask, roi=roi)
        img, roi_mask = case.image, case.mask
    else:
        img, msk = reader(image), reader(mask)
        if img.volume.ndim != 3:
            raise ValueError(f"{image}: features need a 3-D volume, got shape {img.volume.shape!r}")
        check_same_grid(img, msk, image_name=str(image), mask_name=str(mask))
        roi_mask = select_roi(msk.volume, roi, source=str(mask))
    table = extract_features(img.volume, roi_mask, spacing=tuple(img.spacing), settings=settings)
    provenance = {
        "roi": "" if roi is None else str(roi),
        "settings_name": settings_name,
        "image_digest": digest_path(image) if image.exists() else "",
        "mask_digest": digest_path(mask) if mask.exists() else "",
        "settings_digest": settings_digest(settings),
        "medflow_version": medflow.__version__,
        "numpy_version": np.__version__,
        "scipy_version": scipy.__version__,
    }
    for key, value in provenance.items():
        table[key] = value
    with atomic_path(out, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    return table
