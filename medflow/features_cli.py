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
import yaml
from pydantic import ValidationError

import medflow
from imaging.features import PRESETS, FeatureSettings, extract_features
from storage.images import ImageData, read_image
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
        lines = []
        for err in exc.errors():
            loc = ".".join(str(part) for part in err.get("loc", ())) or "(settings)"
            shown = "" if loc == "(settings)" else f" (got {err.get('input')!r})"
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            lines.append(f"field '{loc}': {msg}{shown}")
        raise FeatureSettingsError(f"{source}: invalid feature settings:\n  " + "\n  ".join(lines)) from exc


def load_feature_settings(path: str | Path) -> FeatureSettings:
    """Read a YAML file of :class:`FeatureSettings` fields (errors name the file and the field)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"settings YAML does not exist: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise FeatureSettingsError(f"{p}: not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FeatureSettingsError(f"{p}: expected a mapping of settings fields, got {type(data).__name__}")
    return parse_feature_settings(data, source=str(p))


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


def select_roi(mask: np.ndarray, roi: str | None, *, source: str = "mask") -> np.ndarray:
    """The boolean ROI of a mask or label image.

    ``roi=None`` takes every non-zero voxel and requires a single label; a
    numeric ``roi`` selects that label value. Named ROIs need a label table
    (RTSTRUCT/SEG), which NIfTI/NRRD masks do not have.
    """
    m = np.asarray(mask)
    labels = np.unique(m[m != 0])
    if roi is None:
        if labels.size > 1:
            raise ValueError(f"{source} holds {labels.size} labels {labels[:10].tolist()}; choose one with roi")
        sel = m != 0
    else:
        try:
            value = float(roi)
        except ValueError:
            raise ValueError(f"roi {roi!r} is not a label value; {source} is a label image without ROI names "
                             f"(labels present: {labels[:10].tolist()})") from None
        sel = m == value
    if not sel.any():
        raise ValueError(f"ROI {roi!r} is empty in {source}")
    return sel


def check_same_grid(image: ImageData, mask: ImageData, *, image_name: str = "image",
                    mask_name: str = "mask", atol_mm: float = 1e-3) -> None:
    """Raise ``ValueError`` unless image and mask share shape and geometry."""
    if image.volume.shape[:3] != mask.volume.shape[:3]:
        raise ValueError(f"image and mask grids differ: {image_name} has shape {image.volume.shape!r}, "
                         f"{mask_name} has shape {mask.volume.shape!r}")
    if not np.allclose(image.affine, mask.affine, atol=atol_mm):
        raise ValueError(f"image and mask grids differ: same shape {image.volume.shape!r} but different "
                         f"geometry;\n{image_name} affine:\n{np.array2string(image.affine, precision=4)}\n"
                         f"{mask_name} affine:\n{np.array2string(mask.affine, precision=4)}")


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
        Label value to select in the mask (None: all non-zero voxels, single label).
    out : Path
        CSV written atomically.
    reader : callable, optional
        ``reader(path) -> ImageData``; the extension point for other inputs.

    Returns
    -------
    pandas.DataFrame
        The table written: ``family, feature, aggregation, ibsi_code, value`` plus
        :data:`PROVENANCE_COLUMNS`.
    """
    settings, settings_name = resolve_settings(preset, Path(settings_file) if settings_file else None)
    read = reader or read_image
    image, mask, out = Path(image), Path(mask), Path(out)
    img = read(image)
    msk = read(mask)
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
