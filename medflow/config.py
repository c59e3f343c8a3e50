"""Pydantic configuration models: the one place where medflow's scientific defaults live.

The flow validates a :class:`PipelineConfig`; every stage task receives its own
sub-model and passes the values to the pure functions as explicit keyword
arguments. In the Prefect UI the pipeline deployment's parameters render as a
form generated from these models.
"""

from __future__ import annotations

import pathlib
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from imaging.filter_spec import FilterSpec


class _Model(BaseModel):
    # hide_input_in_errors: a rejected value (a source URI, a path) may identify a patient; errors name the field
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class CollectionConfig(_Model):
    """Collection: scanning, guarding, de-identification and conversion of DICOM."""

    max_pixel_bytes: int = Field(2 * 1024**3, gt=0, description="Largest decoded pixel payload accepted per file (bytes).")
    max_inflated_bytes: int = Field(512 * 1024**2, gt=0, description="Cap on a deflated file's inflated size (bytes).")
    file_timeout_s: float = Field(60.0, gt=0, description="Time bound for checking one file.")
    file_memory_bytes: int = Field(4 * 1024**3, gt=0, description="Memory bound for checking one file.")
    retain_longitudinal_modified_dates: bool = Field(True, description="PS3.15 option: shift dates consistently per patient.")
    retain_patient_characteristics: bool = Field(False, description="PS3.15 option: keep sex, age, size, weight.")
    clean_descriptors: bool = Field(True, description="PS3.15 option: keep descriptors only after cleaning.")
    retain_safe_private: bool = Field(False, description="PS3.15 option: keep an allow-list of safe private tags.")
    allow_burned_in: bool = Field(False, description="Accept images that may carry burned-in annotations (US, SC, XA...).")
    retain_unlisted_text: bool = Field(
        False, description="Keep text/dates of attributes not in Table E.1-1 (the standard's behaviour); "
                           "default cleans them too.")
    pseudonymize_patient: bool = Field(True, description="Patient ID/Name become the patient pseudonym (else emptied).")
    chunk_mb: float = Field(32.0, gt=0, description="Target Zarr chunk size in MiB.")
    pet_units: Literal["as_stored", "suvbw"] = Field(
        "as_stored", description="PET values as stored (after rescale) or converted to SUVbw when the tags allow it.")
    apply_magnification: bool = Field(
        True, description="Projection radiography: divide ImagerPixelSpacing by the estimated magnification.")
    seg_fractional_threshold: float = Field(0.5, gt=0, le=1, description="Fractional DICOM SEG -> binary threshold.")
    rtstruct_slice_tolerance: float = Field(0.1, gt=0, description="Contour-to-slice distance tolerance (slices).")


class PreprocessingConfig(_Model):
    """Preprocessing: resampling, denoising and intensity normalisation."""

    target_spacing_mm: tuple[float, float, float] | None = Field(
        None, description="Resample to this voxel size (mm, slice/row/column order); null keeps the acquired grid.")
    interpolation: Literal["nearest", "linear", "cubic"] = "linear"
    mask_partial_volume: float = Field(0.5, ge=0.0, le=1.0, description="Threshold applied to interpolated masks.")
    denoise: Literal["none", "gaussian", "median", "bilateral", "nl_means", "anisotropic_diffusion"] = "none"
    gaussian_sigma_mm: float = Field(1.0, gt=0)
    median_size: int = Field(3, ge=1, description="Median window (voxels per axis, odd).")
    bilateral_sigma_spatial_mm: float = Field(1.5, gt=0)
    bilateral_sigma_range: float | None = Field(
        None, gt=0, description="Intensity sigma of the bilateral filter; null: 2 x the estimated noise sigma.")
    nl_means_h: float | None = Field(None, gt=0, description="NL-means filtering strength; null: 0.8 x noise sigma.")
    diffusion_iterations: int = Field(5, ge=1)
    diffusion_kappa: float | None = Field(None, gt=0, description="Perona-Malik conductance; null: 2 x noise sigma.")
    bias_field: Literal["none", "polynomial", "n4"] = Field("none", description="MR bias-field correction (MR only).")
    normalisation: Literal["none", "zscore", "percentile", "window"] = "none"
    window: tuple[float, float] = Field((-1000.0, 3000.0), description="(low, high) clip for normalisation='window'.")
    percentiles: tuple[float, float] = Field((1.0, 99.0))

    @field_validator("median_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"median_size must be odd, got {v}")
        return v


class FusionConfig(_Model):
    """Co-registration of the other series of a study onto a reference modality's grid."""

    enabled: bool = Field(False, description="Register every other 3-D volume of a study onto the reference.")
    reference_modality: str = Field("CT", description="Modality whose grid the others are resampled onto.")
    transform: Literal["rigid", "affine"] = "rigid"
    metric: Literal["mattes_mi", "mean_squares", "correlation"] = "mattes_mi"
    iterations: int = Field(200, ge=1)
    interpolation: Literal["nearest", "linear", "cubic"] = "linear"


class ProcessingConfig(_Model):
    """Processing: enhancement, automatic segmentation where no reference mask exists, detection."""

    log_enhancement: bool = Field(True, description="Compute I' = log(I - min(I) + 1) before thresholding.")
    threshold: Literal["otsu", "multi_otsu"] = "otsu"
    histogram_bins: int = Field(256, ge=16)
    opening_radius: int = Field(1, ge=0, description="Morphological opening radius (voxels) after thresholding.")
    min_component_voxels: int = Field(50, ge=0, description="Connected components smaller than this are dropped.")
    connectivity: Literal[1, 2, 3] = 1
    keep_largest: int = Field(3, ge=1, description="Keep this many largest components as automatic ROIs.")
    segment_when_reference_exists: bool = Field(
        True, description="Also segment volumes that have a reference mask, to report Dice/HD95 against it.")
    pet_fraction: float = Field(0.4, gt=0, lt=1, description="PET isocontour as a fraction of SUVmax.")
    method: Literal["threshold", "region_grow"] = Field(
        "threshold", description="CT/MR segmentation: Otsu threshold chain, or region growing from seeds.")
    seed_points_mm: list[tuple[float, float, float]] = Field(
        default_factory=list, description="Region-growing seeds in patient LPS mm; empty: the centroids of the "
                                          "reference masks (assisted mode, flagged in the evaluation).")
    grow_k: float = Field(2.5, gt=0, description="Region growing: mean +- k std of the seed neighbourhoods.")
    grow_radius: int = Field(2, ge=0, description="Region growing: half-width (voxels) of the seed cubes.")
    split_touching: bool = Field(False, description="Split touching objects (watershed on the distance map).")
    split_min_distance_mm: float = Field(10.0, gt=0)
    filters: list[FilterSpec] = Field(
        default_factory=list, description="IBSI-2 filters (medflow filter vocabulary); each response map is stored "
                                          "and its intensity statistics are computed per ROI in the analysis stage.")
    detect_blobs: bool = Field(False, description="LoG/DoG blob detection (candidate lesions).")
    blob_method: Literal["log", "dog"] = "log"
    blob_sigmas_mm: tuple[float, ...] = (2.0, 4.0, 8.0)
    blob_threshold: float = Field(0.3, description="Scale-normalised response threshold, in units of the "
                                                   "volume's robust intensity spread (IQR) inside the body.")


class AnalysisConfig(_Model):
    """Analysis: per-ROI IBSI-1 quantitative features.

    ``settings`` maps a DICOM modality (``CT``, ``PT``, ``MR``...; ``*`` for any other) to
    feature settings in the ``medflow features --settings`` vocabulary: an optional
    ``preset`` (``ibsi-config-a`` ... ``ibsi-config-e``, ``ibsi-digital-phantom``) plus
    :class:`imaging.features.FeatureSettings` fields that override it. CT uses IBSI
    configuration C (HU re-segmentation [-1000, 400], FBS 25 HU); other modalities use
    configuration D (FBN 32 bins, 3-sigma outlier filtering) without integer rounding,
    since SUV and MR intensities are not integers.
    """

    settings: dict[str, dict] = Field(default_factory=lambda: {
        "CT": {"preset": "ibsi-config-c"},
        "*": {"preset": "ibsi-config-d", "intensity_rounding": False},
    })
    max_workers: int = Field(2, ge=1, description="ROIs processed in parallel (threads).")
    include_auto_masks: bool = Field(True, description="Also extract features of the automatic segmentations.")


class DiscoveryConfig(_Model):
    """Knowledge discovery: patient-level case base, prediction, rules, survival, efficacy, similar cases.

    The clinical columns' roles (identifier, baseline predictor, label, event, time,
    treatment, post-baseline, PHI, ignore; :class:`knowledge.roles.CaseSchema`) come from
    ``schema_file`` (a YAML written by ``medflow schema propose`` and checked by the user)
    or inline ``roles``; the schema's content, never its path, enters the cache key.
    Without a labelled clinical table the workspace's patients are placed against the
    stored case base ``casebase`` (its schema is ``schema.yaml`` beside it).
    """

    schema_file: str | None = Field(
        None, description="Case-schema YAML giving every clinical column its role (relative paths: from the "
                          "current directory, then from the medflow checkout).")
    roles: dict[str, Any] | None = Field(
        None, description="Inline case schema (same content as a schema file: columns, missing_tokens).")
    label: str | None = Field(None, description="Label column to predict when the schema declares several.")
    casebase: str | None = Field(
        "sample/sts_casebase/casebase.parquet",
        description="Stored case base (Parquet, schema.yaml beside it) that new patients are placed against when "
                    "the workspace has no labelled clinical table; null: none.")
    classifier: Literal["logistic_regression", "svm", "random_forest", "decision_tree"] = Field(
        "logistic_regression", description="Classifier of the prediction models (nested cross-validation).")
    outer_folds: int = Field(5, ge=2, description="Outer cross-validation folds (grouped by patient).")
    inner_folds: int = Field(3, ge=2, description="Inner folds (feature selection, hyper-parameters).")
    n_bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples for confidence intervals.")
    n_permutations: int = Field(200, ge=0, description="Label permutations of the null model.")
    k_similar: int = Field(3, ge=1, description="Similar cases shown per patient.")
    max_tree_depth: int = Field(3, ge=1, description="Depth of the decision tree turned into rules.")
    random_state: int = 0
    lang: Literal["en", "zh"] = Field("en", description="Language of the report and rules.txt.")

    @model_validator(mode="after")
    def _one_schema(self) -> DiscoveryConfig:
        if self.schema_file is not None and self.roles is not None:
            raise ValueError("discovery: give schema_file or roles, not both")
        return self

    def resolved(self) -> DiscoveryConfig:
        """A copy whose schema is inline (``roles`` from the file's content, ``schema_file`` null).

        Raises
        ------
        FileNotFoundError, ValueError
            Naming the missing file or the invalid field/column of the schema.
        """
        if self.schema_file is None:
            return self
        from storage.clinical import read_case_schema

        path = resolve_path(self.schema_file)
        return self.model_copy(update={"schema_file": None, "roles": read_case_schema(path).to_dict()})

    def casebase_path(self) -> pathlib.Path | None:
        """The stored case base file, or None when none is configured or it does not exist."""
        if self.casebase is None:
            return None
        try:
            return resolve_path(self.casebase)
        except FileNotFoundError:
            return None


def resolve_path(value: str) -> pathlib.Path:
    """A configured file: as given (absolute or relative to the current directory), else in the checkout."""
    p = pathlib.Path(value).expanduser()
    if p.is_file():
        return p.resolve()
    alt = pathlib.Path(__file__).resolve().parents[1] / value
    if not p.is_absolute() and alt.is_file():
        return alt
    raise FileNotFoundError(f"file does not exist: {value}")


class ComputeConfig(_Model):
    """Where per-voxel work runs. Defaults: Dask's threaded scheduler on the local cores."""

    dask_scheduler_address: str | None = Field(
        None, description="A dask.distributed scheduler (tcp://host:8786); null uses the local threaded scheduler.")
    dask_threads: int | None = Field(
        None, ge=1, description="Dask threads inside each volume chain (default: the cores divided among the "
                                "concurrent chains).")
    concurrent_volumes: int | None = Field(
        None, ge=1, description="Volume chains run at once on this machine (default: one per core, each with "
                                "1 dask thread; measured faster than one chain with all cores). Ignored on a dask "
                                "scheduler, whose workers set the concurrency.")
    memory_budget_bytes: int = Field(
        4 * 1024**3, gt=0, description="Connected-component labelling whose working memory would exceed this "
                                       "runs chunk by chunk with a merge across chunk faces.")


class PacsConfig(_Model):
    """PACS pulls (``source`` = ``dimse://AET@host:port?...`` or ``dicomweb+http(s)://host/path?...``) and write-back.

    Credentials never live here: DICOMweb reads MEDFLOW_DICOMWEB_USER/PASSWORD or MEDFLOW_DICOMWEB_TOKEN.
    """

    retries: int = Field(3, ge=0, description="Further attempts for missing instances and transient IO errors.")
    backoff_s: float = Field(2.0, ge=0, description="Wait before retry i: backoff_s * 2**i seconds.")
    timeout_s: float = Field(60.0, gt=0, description="Network timeout of each DIMSE/HTTP exchange, seconds.")
    scp_bind_address: str = Field("0.0.0.0", description="Where our C-STORE SCP listens during a C-MOVE "
                                                         "(the PACS must reach it at the registered host/port).")
    write_back: bool = Field(False, description="Store masks as DICOM SEG and features as a TID 1500 SR in the PACS.")
    write_back_target: str | None = Field(
        None, description="PACS URI to store results to (dimse:// or dicomweb+http(s)://, query part ignored); "
                          "null: the source PACS.")
    write_back_identified: bool = Field(
        False, description="Reference the original (identified) series instead of storing and referencing the "
                           "pseudonymised copy.")


class PipelineConfig(_Model):
    """Everything one pipeline run needs. Paths are the only environment-specific values."""

    source: str = Field(description="Folder of DICOM files (any depth, any file names), or a PACS query URI "
                                    "(dimse://AET@host:port?... or dicomweb+http(s)://host/path?...; see storage.pacs.uri).")
    workspace: str = Field(description="Workspace folder (artifacts, catalog, cache records, reports).")
    clinical: str | None = Field(None, description="Clinical case table (CSV or Parquet), optional.")
    catalog_url: str | None = Field(
        None, description="SQLAlchemy URL of the catalog; null uses WORKSPACE/catalog.sqlite.")
    collection: CollectionConfig = CollectionConfig()
    preprocessing: PreprocessingConfig = PreprocessingConfig()
    fusion: FusionConfig = FusionConfig()
    processing: ProcessingConfig = ProcessingConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    discovery: DiscoveryConfig = DiscoveryConfig()
    compute: ComputeConfig = ComputeConfig()
    pacs: PacsConfig = PacsConfig()

    @field_validator("source")
    @classmethod
    def _no_identifiers_in_source(cls, value: str) -> str:
        # the source is a run parameter that Prefect stores: a PACS query by patient/accession/study UID
        # must reference the environment (env:NAME), never carry the identifier itself
        from storage.pacs.uri import check_run_parameter

        check_run_parameter(value)
        return value


def load_config(path: str | pathlib.Path | None, **overrides) -> PipelineConfig:
    """Load a YAML config file (sections as in :class:`PipelineConfig`) and apply top-level overrides."""
    data: dict = {}
    if path is not None:
        from medflow.yamlio import read_yaml_mapping

        data.update(read_yaml_mapping(path, what="config file"))
    data.update({k: v for k, v in overrides.items() if v is not None})
    return PipelineConfig.model_validate(data)


def dump_config(config: PipelineConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
