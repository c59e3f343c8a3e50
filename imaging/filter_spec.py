"""YAML-facing description of one IBSI-2 convolutional filter, and the dispatcher that applies it.

The field names follow the IBSI-2 reference manual (arXiv:2006.05470) vocabulary; see ``docs/filters.md``
for the schema and one example per IBSI-2 phase-1 test. Parsing YAML is the caller's job (this package
does no IO): build the model with ``FilterSpec.model_validate(mapping)``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from imaging.filters import gabor_filter, laplacian_of_gaussian, laws_filter, mean_filter, wavelet_filter
from imaging.filters.laws import parse_laws_kernels
from imaging.filters.wavelets import parse_subband, wavelet_kernels
from imaging.types import ArrayLike, FilterDimensions, FilterType, IBSIBoundary

#: Fields each filter type may use (besides the common ones); any other field set explicitly is an error.
_FIELDS: dict[str, set[str]] = {
    "mean": {"support_voxels"},
    "log": {"sigma_mm", "truncate"},
    "laws": {"laws_kernels", "energy_distance", "rotation_invariance", "pooling"},
    "gabor": {
        "sigma_mm",
        "truncate",
        "gabor_lambda_mm",
        "gabor_gamma",
        "gabor_theta",
        "gabor_theta_step",
        "rotation_invariance",
        "pooling",
    },
    "wavelet": {"wavelet", "level", "subband", "rotation_invariance", "pooling"},
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "mean": ("support_voxels",),
    "log": ("sigma_mm",),
    "laws": ("laws_kernels",),
    "gabor": ("sigma_mm", "gabor_lambda_mm", "gabor_gamma", "gabor_theta"),
    "wavelet": ("wavelet", "subband"),
}
_COMMON = {"filter_type", "dimensions", "boundary", "response", "name", "description"}
_RESPONSES: dict[str, tuple[str, ...]] = {
    "mean": ("real",),
    "log": ("real",),
    "laws": ("real", "energy"),
    "gabor": ("modulus", "real", "imaginary"),
    "wavelet": ("real",),
}


class FilterSpec(BaseModel):
    """One IBSI-2 filter with its parameters (IBSI-2 vocabulary).

    Axes: "x" is array axis 2, "y" axis 1, "z" axis 0 of ``volume[z, y, x]``; "2D" filters act in-plane on
    every slice (axes 1 and 2). Angles are in radians, lengths in mm unless the name says voxels.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    filter_type: FilterType = Field(description="mean | log | laws | gabor | wavelet")
    dimensions: FilterDimensions = Field(
        "3D", description="2D: in-plane per slice (axes 1, 2); 3D: volumetric (Gabor: 3 orthogonal planes)"
    )
    boundary: IBSIBoundary = Field("mirror", description="IBSI-2 padding: zero | nearest | periodic | mirror")
    response: Literal["real", "energy", "modulus", "imaginary"] | None = Field(
        None,
        description="response map type; default: 'energy' for Laws with energy_distance, 'modulus' for "
        "Gabor, else 'real'",
    )
    name: str | None = Field(None, description="free label, e.g. the IBSI-2 test id")
    description: str | None = None

    # mean
    support_voxels: int | None = Field(None, gt=0, description="mean filter support M (odd, voxels)")
    # LoG and Gabor
    sigma_mm: float | None = Field(None, gt=0, description="Gaussian standard deviation (mm)")
    truncate: float = Field(4.0, gt=0, description="filter half-width in standard deviations (IBSI-2: 4)")
    # Laws
    laws_kernels: str | None = Field(
        None, description="Laws filter, kernels for x, y(, z): e.g. L5E5E5, L5S5"
    )
    energy_distance: int | None = Field(
        None, gt=0, description="Laws energy map Chebyshev distance delta (voxels)"
    )
    # rotation invariance
    rotation_invariance: bool = Field(
        False, description="pool over right-angle rotations (Gabor: orientations)"
    )
    pooling: Literal["max", "min", "average", "none"] = Field(
        "none", description="max | min | average | none"
    )
    # Gabor
    gabor_lambda_mm: float | None = Field(None, gt=0, description="Gabor wavelength lambda (mm)")
    gabor_gamma: float | None = Field(None, gt=0, description="Gabor spatial aspect ratio gamma")
    gabor_theta: float | None = Field(None, description="Gabor orientation theta (radians)")
    gabor_theta_step: float | None = Field(
        None,
        gt=0,
        description="orientation step (radians) for rotation invariance, e.g. 0.7853981633974483 (pi/4)",
    )
    # wavelets
    wavelet: str | None = Field(None, description="PyWavelets name: haar, db2, db3, coif1, ...")
    level: int = Field(1, ge=1, description="decomposition level")
    subband: str | None = Field(None, description="L/H letters for x, y(, z), e.g. LHL (3D) or HL (2D)")

    @field_validator("gabor_theta", "gabor_theta_step", mode="before")
    @classmethod
    def _angle(cls, v: Any) -> Any:
        """Accept ``"pi/4"``-style strings as well as numbers for angles."""
        if isinstance(v, str):
            return _parse_angle(v)
        return v

    @field_validator("laws_kernels")
    @classmethod
    def _laws(cls, v: str | None) -> str | None:
        if v is not None:
            return "".join(parse_laws_kernels(v))
        return v

    @field_validator("subband")
    @classmethod
    def _subband(cls, v: str | None) -> str | None:
        if v is not None:
            return "".join(parse_subband(v))
        return v

    @field_validator("wavelet")
    @classmethod
    def _wavelet(cls, v: str | None) -> str | None:
        if v is not None:
            wavelet_kernels(v)
        return v

    @field_validator("support_voxels")
    @classmethod
    def _odd(cls, v: int | None) -> int | None:
        if v is not None and v % 2 == 0:
            raise ValueError(f"support_voxels must be odd, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> FilterSpec:
        ft = self.filter_type
        allowed = _COMMON | _FIELDS[ft]
        extra = sorted(f for f in self.model_fields_set if f not in allowed)
        if extra:
            raise ValueError(
                f"field(s) {extra} do not apply to filter_type {ft!r} (allowed: {sorted(allowed)})"
            )
        missing = [f for f in _REQUIRED[ft] if getattr(self, f) is None]
        if missing:
            raise ValueError(f"filter_type {ft!r} requires field(s) {missing}")
        if self.response is not None and self.response not in _RESPONSES[ft]:
            raise ValueError(
                f"response must be one of {_RESPONSES[ft]} for filter_type {ft!r}, got {self.response!r}"
            )
        if self.rotation_invariance and self.pooling == "none":
            raise ValueError("pooling must be max, min or average when rotation_invariance is true")
        if ft == "laws":
            nd = "2D" if len(parse_laws_kernels(self.laws_kernels or "")) == 2 else "3D"
            if nd != self.dimensions:
                raise ValueError(
                    f"laws_kernels {self.laws_kernels!r} is a {nd} filter but dimensions is "
                    f"{self.dimensions!r}"
                )
            if self.response == "energy" and self.energy_distance is None:
                raise ValueError("response 'energy' requires energy_distance")
            if self.response == "real" and self.energy_distance is not None:
                raise ValueError("energy_distance is set but response is 'real'; use response 'energy'")
        if ft == "wavelet":
            nd = "2D" if len(self.subband or "") == 2 else "3D"
            if nd != self.dimensions:
                raise ValueError(
                    f"subband {self.subband!r} is a {nd} sub-band but dimensions is {self.dimensions!r}"
                )
        if ft == "gabor":
            if self.rotation_invariance and self.gabor_theta_step is None:
                raise ValueError("gabor_theta_step is required when rotation_invariance is true")
            if not self.rotation_invariance and self.gabor_theta_step is not None:
                raise ValueError("gabor_theta_step requires rotation_invariance: true")
            if self.dimensions == "3D" and self.pooling == "none":
                raise ValueError("a 3D Gabor filter pools the three orthogonal planes: set pooling")
        if ft in ("mean", "log") or (ft in ("laws", "wavelet") and not self.rotation_invariance):
            if self.pooling != "none":
                raise ValueError(f"pooling {self.pooling!r} has no effect without rotation_invariance")
        return self

    @property
    def resolved_response(self) -> str:
        if self.response is not None:
            return self.response
        if self.filter_type == "laws" and self.energy_distance is not None:
            return "energy"
        if self.filter_type == "gabor":
            return "modulus"
        return "real"


def _parse_angle(text: str) -> float:
    """Parse ``"pi/4"``, ``"5*pi/4"``, ``"-pi"``, ``"1.2"`` into radians."""
    s = text.replace(" ", "").lower()
    if not s:
        raise ValueError("angle must not be empty")
    try:
        return float(s)
    except ValueError:
        pass
    num, _, den = s.partition("/")
    sign = -1.0 if num.startswith("-") else 1.0
    num = num.lstrip("+-")
    if not num.endswith("pi"):
        raise ValueError(
            f"angle must be a number (radians) or a multiple of pi such as '5*pi/4', got {text!r}"
        )
    factor = num[:-2].rstrip("*")
    try:
        value = sign * (float(factor) if factor else 1.0) * math.pi
        return value / float(den) if den else value
    except ValueError as exc:
        raise ValueError(
            f"angle must be a number (radians) or a multiple of pi such as '5*pi/4', got {text!r}"
        ) from exc


def apply_filter(
    volume: Any, spec: FilterSpec, *, spacing: Any, dtype: npt.DTypeLike = np.float32
) -> ArrayLike:
    """Apply the filter described by ``spec`` to ``volume`` (numpy or dask, see :mod:`imaging.filters`).

    Parameters
    ----------
    volume : ndarray or dask array, shape (n0, n1, n2)
    spec : FilterSpec
    spacing : (3,) float, mm, array-axis order.
    dtype : floating dtype of the response map.

    Returns
    -------
    response : same array type as ``volume``, shape (n0, n1, n2).
    """
    if not isinstance(spec, FilterSpec):
        raise TypeError(f"spec must be a FilterSpec, got {type(spec).__name__}")
    pooling = None if spec.pooling == "none" else spec.pooling
    ft = spec.filter_type
    if ft == "mean":
        assert spec.support_voxels is not None
        return mean_filter(
            volume,
            support_voxels=spec.support_voxels,
            boundary=spec.boundary,
            dimensions=spec.dimensions,
            dtype=dtype,
        )
    if ft == "log":
        assert spec.sigma_mm is not None
        return laplacian_of_gaussian(
            volume,
            spacing=spacing,
            sigma_mm=spec.sigma_mm,
            truncate=spec.truncate,
            boundary=spec.boundary,
            dimensions=spec.dimensions,
            dtype=dtype,
        )
    if ft == "laws":
        assert spec.laws_kernels is not None
        return laws_filter(
            volume,
            kernels=spec.laws_kernels,
            boundary=spec.boundary,
            rotation_invariance=spec.rotation_invariance,
            pooling=pooling,
            energy_distance=spec.energy_distance,
            dtype=dtype,
        )
    if ft == "gabor":
        assert spec.sigma_mm is not None and spec.gabor_lambda_mm is not None
        assert spec.gabor_gamma is not None and spec.gabor_theta is not None
        return gabor_filter(
            volume,
            spacing=spacing,
            sigma_mm=spec.sigma_mm,
            lambda_mm=spec.gabor_lambda_mm,
            gamma=spec.gabor_gamma,
            theta=spec.gabor_theta,
            boundary=spec.boundary,
            truncate=spec.truncate,
            dimensions=spec.dimensions,
            rotation_invariance=spec.rotation_invariance,
            theta_step=spec.gabor_theta_step,
            pooling=pooling,
            response=spec.resolved_response,  # type: ignore[arg-type]
            dtype=dtype,
        )
    if ft == "wavelet":
        assert spec.wavelet is not None and spec.subband is not None
        return wavelet_filter(
            volume,
            wavelet=spec.wavelet,
            subband=spec.subband,
            level=spec.level,
            boundary=spec.boundary,
            rotation_invariance=spec.rotation_invariance,
            pooling=pooling,
            dtype=dtype,
        )
    raise ValueError(
        f"filter_type must be one of mean, log, laws, gabor, wavelet, got {ft!r}"
    )  # pragma: no cover
