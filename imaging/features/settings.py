"""Settings of the IBSI-1 feature extractor and the named presets.

:class:`FeatureSettings` holds every image-processing and feature-calculation
choice of the IBSI reference manual (arXiv:1612.07003, chapter 2 and the
feature chapter): interpolation (VTM2), intensity rounding (68QD), ROI partial
volume (E8H9), re-segmentation (USB3, 7ACA), discretisation (K15C, Q3RU),
IVH discretisation and the texture-matrix distances.

``PRESETS`` holds the IBSI digital phantom benchmark settings and the five
CT-phantom configurations A-E of the IBSI-1 validation (manual, "Reference
data sets", table of configurations).

This module only validates values; YAML parsing happens outside ``imaging``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from imaging.types import Discretisation, FeatureFamily, Interpolation, IvhDiscretisation, TextureDimension

ALL_FAMILIES: tuple[FeatureFamily, ...] = (
    "morph", "loc", "stat", "ih", "ivh", "cm", "rlm", "szm", "dzm", "ngt", "ngl",
)


class FeatureSettings(BaseModel):
    """Everything that determines IBSI-1 feature values, except the image itself.

    Lengths are in millimetres, intensities in the image's own unit. Axis 0 of
    the volume is the slice axis (medflow's ``[slice, row, column]``): 2D
    interpolation and 2D/2.5D texture aggregation work in planes of axes 1-2.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # --- interpolation (IBSI VTM2, grid alignment "align grid centers" 3WE3) ---
    new_spacing: tuple[float, float, float] | tuple[float, float] | None = Field(
        default=None,
        description="Target voxel size in mm, array-axis order. None = no interpolation. "
        "With interpolation_dim='2d' give the two in-plane spacings (axes 1, 2) or three values "
        "whose first entry is ignored.")
    interpolation_dim: Literal["2d", "3d"] = "3d"
    interpolation: Interpolation = "linear"
    intensity_rounding: bool = Field(
        default=False, description="Round interpolated intensities to the nearest integer (IBSI 68QD, CT).")
    roi_interpolation: Interpolation = "linear"
    roi_partial_volume: float = Field(default=0.5, gt=0.0, le=1.0,
                                      description="Partial-volume threshold delta of the interpolated ROI (E8H9).")

    # --- re-segmentation (USB3 range, 7ACA outliers) ---
    resegmentation_range: tuple[float | None, float | None] | None = Field(
        default=None, description="Closed intensity interval [a, b] kept in the intensity mask; None = open end.")
    outlier_sigma: float | None = Field(
        default=None, gt=0.0, description="Remove intensities outside mean +- k sigma (IBSI uses k = 3).")

    # --- discretisation for IH and texture (K15C FBN, Q3RU FBS) ---
    discretisation: Discretisation = "fbs"
    bin_width: float | None = Field(default=None, gt=0.0)
    bin_number: int | None = Field(default=None, gt=0)
    fbs_minimum: float | None = Field(
        default=None,
        description="Lower bound X_gl,min of fixed-bin-size discretisation. None = lower bound of the "
        "re-segmentation range, or the ROI minimum when no lower bound is set.")

    # --- intensity-volume histogram discretisation ---
    ivh_discretisation: IvhDiscretisation = "none"
    ivh_bin_width: float | None = Field(default=None, gt=0.0)
    ivh_bin_number: int | None = Field(default=None, gt=0)

    # --- texture ---
    texture_dims: tuple[TextureDimension, ...] = ("2d", "2.5d", "3d")
    glcm_distance: int = Field(default=1, ge=1, description="Chebyshev distance of GLCM neighbours.")
    ngtdm_distance: int = Field(default=1, ge=1)
    ngldm_distance: int = Field(default=1, ge=1)
    ngldm_coarseness: float = Field(default=0.0, ge=0.0, description="Coarseness alpha of the NGLDM.")

    # --- what to compute ---
    families: tuple[FeatureFamily, ...] = ALL_FAMILIES

    @model_validator(mode="after")
    def _check(self) -> FeatureSettings:
        if self.discretisation == "fbs" and self.bin_width is None:
            raise ValueError("discretisation='fbs' needs bin_width")
        if self.discretisation == "fbn" and self.bin_number is None:
            raise ValueError("discretisation='fbn' needs bin_number")
        if self.ivh_discretisation == "fbs" and self.ivh_bin_width is None:
            raise ValueError("ivh_discretisation='fbs' needs ivh_bin_width")
        if self.ivh_discretisation == "fbn" and self.ivh_bin_number is None:
            raise ValueError("ivh_discretisation='fbn' needs ivh_bin_number")
        if self.new_spacing is not None:
            if any(s <= 0 for s in self.new_spacing):
                raise ValueError(f"new_spacing must be > 0, got {self.new_spacing!r}")
            if self.interpolation_dim == "3d" and len(self.new_spacing) != 3:
                raise ValueError(f"3d interpolation needs three new_spacing values, got {self.new_spacing!r}")
        if self.resegmentation_range is not None:
            lo, hi = self.resegmentation_range
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"resegmentation_range lower bound exceeds upper bound: {self.resegmentation_range!r}")
        if len(set(self.families)) != len(self.families):
            raise ValueError(f"families contains duplicates: {self.families!r}")
        if not self.texture_dims:
            raise ValueError("texture_dims must name at least one of '2d', '2.5d', '3d'")
        return self

    @property
    def in_plane_spacing(self) -> tuple[float, float] | None:
        """The in-plane target spacing (axes 1, 2) for 2D interpolation."""
        if self.new_spacing is None:
            return None
        return (float(self.new_spacing[-2]), float(self.new_spacing[-1]))


#: IBSI digital phantom benchmark: no interpolation, no re-segmentation, intensities
#: used as grey levels (FBS, bin width 1, minimum = ROI minimum 1), IVH on the raw
#: discrete intensities, all aggregations.
IBSI_DIGITAL_PHANTOM = FeatureSettings(
    discretisation="fbs", bin_width=1.0, ivh_discretisation="none",
)

#: IBSI-1 CT phantom configurations A-E ("Reference data sets" chapter of the manual).
IBSI_CONFIG_A = FeatureSettings(
    resegmentation_range=(-500.0, 400.0),
    discretisation="fbs", bin_width=25.0, ivh_discretisation="none",
    texture_dims=("2d", "2.5d"),
)
IBSI_CONFIG_B = FeatureSettings(
    new_spacing=(2.0, 2.0), interpolation_dim="2d", interpolation="linear", intensity_rounding=True,
    roi_interpolation="linear", roi_partial_volume=0.5,
    resegmentation_range=(-500.0, 400.0),
    discretisation="fbn", bin_number=32, ivh_discretisation="none",
    texture_dims=("2d", "2.5d"),
)
IBSI_CONFIG_C = FeatureSettings(
    new_spacing=(2.0, 2.0, 2.0), interpolation_dim="3d", interpolation="linear", intensity_rounding=True,
    roi_interpolation="linear", roi_partial_volume=0.5,
    resegmentation_range=(-1000.0, 400.0),
    discretisation="fbs", bin_width=25.0, ivh_discretisation="fbs", ivh_bin_width=2.5,
    texture_dims=("3d",),
)
IBSI_CONFIG_D = FeatureSettings(
    new_spacing=(2.0, 2.0, 2.0), interpolation_dim="3d", interpolation="linear", intensity_rounding=True,
    roi_interpolation="linear", roi_partial_volume=0.5,
    outlier_sigma=3.0,
    discretisation="fbn", bin_number=32, ivh_discretisation="none",
    texture_dims=("3d",),
)
IBSI_CONFIG_E = FeatureSettings(
    new_spacing=(2.0, 2.0, 2.0), interpolation_dim="3d", interpolation="cubic", intensity_rounding=True,
    roi_interpolation="linear", roi_partial_volume=0.5,
    resegmentation_range=(-1000.0, 400.0), outlier_sigma=3.0,
    discretisation="fbn", bin_number=32, ivh_discretisation="fbn", ivh_bin_number=1000,
    texture_dims=("3d",),
)

PRESETS: dict[str, FeatureSettings] = {
    "ibsi-digital-phantom": IBSI_DIGITAL_PHANTOM,
    "ibsi-config-a": IBSI_CONFIG_A,
    "ibsi-config-b": IBSI_CONFIG_B,
    "ibsi-config-c": IBSI_CONFIG_C,
    "ibsi-config-d": IBSI_CONFIG_D,
    "ibsi-config-e": IBSI_CONFIG_E,
}
