"""The preprocessing chain the pipeline runs on one volume: resample, bias field, denoise, normalise.

A composition of :mod:`imaging.preprocess` with explicit keyword options (the
pipeline's :class:`medflow.config.PreprocessingConfig` supplies them). Where a
strength is left as ``None`` it is derived from the volume's estimated noise sigma
(Immerkaer's estimator, :func:`imaging.qc.noise_sigma`), so one setting works for
HU, SUV and arbitrary MR units.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from imaging import preprocess as pp
from imaging import qc


def preprocess_volume(volume: Any, *, spacing: Sequence[float], affine: np.ndarray, modality: str | None,
                      target_spacing_mm: Sequence[float] | None = None, interpolation: str = "linear",
                      bias_field: str = "none", denoise: str = "none", gaussian_sigma_mm: float = 1.0,
                      median_size: int = 3, bilateral_sigma_spatial_mm: float = 1.5,
                      bilateral_sigma_range: float | None = None, nl_means_h: float | None = None,
                      diffusion_iterations: int = 5, diffusion_kappa: float | None = None,
                      normalisation: str = "none", window: Sequence[float] = (-1000.0, 3000.0),
                      percentiles: Sequence[float] = (1.0, 99.0)
                      ) -> tuple[Any, tuple[float, ...], np.ndarray, dict[str, Any]]:
    """Run the chain; returns ``(volume float32, spacing, affine, applied)`` where ``applied`` records
    every step with the values actually used (for provenance)."""
    spacing = tuple(float(s) for s in spacing)
    applied: dict[str, Any] = {}
    data = volume.astype(np.float32)
    if target_spacing_mm is not None and tuple(float(s) for s in target_spacing_mm) != spacing:
        data, affine = pp.resample(data, spacing=spacing, new_spacing=tuple(target_spacing_mm),
                                   interpolation=interpolation, affine=affine)  # type: ignore[arg-type]
        spacing = tuple(float(s) for s in target_spacing_mm)
        applied["resample"] = {"spacing_mm": list(spacing), "interpolation": interpolation}
    if bias_field != "none" and modality == "MR":
        data, _field = pp.bias_field_correction(np.asarray(data), method=bias_field, spacing=spacing)
        applied["bias_field"] = bias_field
    if denoise != "none":
        options: dict[str, Any]
        sigma = None
        if denoise in ("bilateral", "nl_means", "anisotropic_diffusion"):
            sigma = float(qc.noise_sigma(data))
            sigma = sigma if sigma > 0 else 1.0
        if denoise == "gaussian":
            options = {"sigma_mm": gaussian_sigma_mm}
        elif denoise == "median":
            options = {"size": median_size}
        elif denoise == "bilateral":
            options = {"sigma_spatial_mm": bilateral_sigma_spatial_mm,
                       "sigma_range": bilateral_sigma_range or 2.0 * sigma}  # type: ignore[operator]
        elif denoise == "nl_means":
            options = {"h": nl_means_h or 0.8 * sigma, "sigma": sigma}  # type: ignore[operator]
        elif denoise == "anisotropic_diffusion":
            options = {"iterations": diffusion_iterations, "kappa": diffusion_kappa or 2.0 * sigma}  # type: ignore[operator]
        else:
            raise ValueError(f"denoise must be one of none, gaussian, median, bilateral, nl_means, "
                             f"anisotropic_diffusion; got {denoise!r}")
        data = pp.denoise(data, method=denoise, spacing=spacing, **options)
        applied["denoise"] = {"method": denoise, **{k: float(v) for k, v in options.items()},
                              **({"noise_sigma": sigma} if sigma is not None else {})}
    if normalisation != "none":
        data = pp.normalise(data, method=normalisation, window=window, percentiles=percentiles)
        applied["normalisation"] = normalisation
    return data, spacing, affine, applied
