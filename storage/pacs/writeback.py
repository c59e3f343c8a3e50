"""Results back to the PACS: masks as DICOM SEG, feature values as a TID 1500 measurement report (highdicom).

Both reference the source series. By default the source is the **pseudonymised copy**: the
source instances are de-identified with the workspace's secret (:func:`storage.deid.engine.deidentify_dataset`,
the same UIDs and patient pseudonym the collection uses) and stored alongside, so the SEG and SR
references resolve in the PACS without any identifying object being written back.

Masks are on the volume grid ``mask[slice, row, column]`` (see :mod:`imaging.geometry`); each source
instance is placed on its slice by its Image Position (Patient) through the volume's affine, so a
SEG frame is exactly the mask plane of the instance it references.
"""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from storage.pacs.model import PacsError

#: Coding scheme of medflow's feature concepts in the SR (private, PS3.16 8.2: "99" prefix)
FEATURE_SCHEME = "99MEDFLOW"
MANUFACTURER = "medflow"


@dataclass
class MaskInput:
    """One ROI on the volume grid: ``mask`` bool (slices, rows, columns); ``source`` 'reference' or 'auto'."""

    roi_name: str
    mask: np.ndarray
    source: str = "reference"


def feature_code(family: str, feature: str, aggregation: str = "", image: str = "original") -> str:
    """A stable 16-character code value for one feature (its concept in the SR)."""
    text = "|".join(str(x) for x in (family, feature, aggregation or "", image or "original"))
    return "F" + hashlib.sha256(text.encode()).hexdigest()[:15].upper()


def read_series(files: Sequence[pathlib.Path]) -> list[Dataset]:
    """Read the instances of one series (pixel data included)."""
    return [pydicom.dcmread(str(f)) for f in files]


def deidentified(datasets: Sequence[Dataset], *, keys) -> list[Dataset]:
    """The pseudonymised copies (PS3.15 Basic Profile with the workspace secret); originals untouched."""
    from storage.deid.engine import deidentify_dataset

    return [deidentify_dataset(ds, keys=keys) for ds in datasets]


def slice_order(datasets: Sequence[Dataset], affine: np.ndarray, n_slices: int) -> list[int]:
    """The volume slice index of each dataset (by Image Position (Patient) through ``affine``).

    Raises
    ------
    PacsError
        When an instance does not fall on a slice centre or two instances share a slice.
    """
    inv = np.linalg.inv(np.asarray(affine, dtype=float))
    out = []
    for ds in datasets:
        ipp = np.array([float(v) for v in ds.ImagePositionPatient] + [1.0])
        idx = inv @ ipp
        k = int(round(idx[0]))
        if abs(idx[0] - k) > 0.05 or abs(idx[1]) > 0.05 or abs(idx[2]) > 0.05 or not 0 <= k < n_slices:
            raise PacsError("an instance of the series is not on a slice of the volume grid: cannot reference it")
        out.append(k)
    if len(set(out)) != len(out):
        raise PacsError("two instances of the series fall on the same slice (a multi-volume series): not supported")
    return out


def build_seg(source: Sequence[Dataset], affine: np.ndarray, masks: Sequence[MaskInput], *,
              series_number: int = 9901, software_version: str = "medflow") -> Dataset:
    """A binary DICOM SEG of ``masks`` referencing ``source`` (one frame per source instance and segment)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if not masks:
        raise ValueError("masks: need at least one ROI to write a SEG")
    n_slices = masks[0].mask.shape[0]
    order = slice_order(source, affine, n_slices)
    rows, cols = int(source[0].Rows), int(source[0].Columns)
    pixels = np.zeros((len(source), rows, cols, len(masks)), dtype=bool)
    for j, m in enumerate(masks):
        if m.mask.shape != (n_slices, rows, cols):
            raise ValueError(f"mask {m.roi_name!r}: shape {m.mask.shape} is not the volume grid "
                             f"({n_slices}, {rows}, {cols})")
        pixels[:, :, :, j] = m.mask.astype(bool)[order]
    algorithm = hd.AlgorithmIdentificationSequence(name="medflow", version=software_version,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for j, m in enumerate(masks, start=1):
        auto = m.source != "reference"
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=j, segment_label=m.roi_name[:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Neoplasm,
            algorithm_type=(hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC if auto
                            else hd.seg.SegmentAlgorithmTypeValues.MANUAL),
            algorithm_identification=algorithm if auto else None))
    return hd.seg.Segmentation(
        source_images=list(source), pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name="medflow", software_versions=software_version, device_serial_number="1",
        series_description="medflow segmentations")


def build_sr(seg: Dataset, features, *, source: Sequence[Dataset] = (), series_number: int = 9902, software_version: str = "medflow") -> Dataset:
    """A Comprehensive 3D SR (TID 1500) with one volumetric ROI group per SEG segment.

    ``features`` is a table with columns ``roi_name, family, feature, aggregation, value`` (and
    optionally ``image``); ``source`` are the instances the SEG references (the SR's evidence). Rows whose ``roi_name`` is not a segment label, or whose value is not
    finite, are left out. Each value is a NUM item whose concept is :func:`feature_code`.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    labels = {str(s.SegmentLabel): int(s.SegmentNumber) for s in seg.SegmentSequence}
    # (built here, not with ReferencedSegment.from_segmentation, which fails on a one-segment SEG whose
    # segment identification is in the shared functional groups)
    source_series = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="medflow", manufacturer_name=MANUFACTURER))
    context = hd.sr.ObservationContext(observer_device_context=observer)
    unit = hd.sr.CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")
    groups = []
    for roi, number in labels.items():
        rows = features[features["roi_name"] == roi]
        measurements = []
        seen = set()
        for r in rows.itertuples(index=False):
            value = float(r.value)
            image = getattr(r, "image", "original")
            code = feature_code(r.family, r.feature, getattr(r, "aggregation", ""), image)
            if not np.isfinite(value) or code in seen:
                continue
            seen.add(code)
            meaning = f"{r.family} {r.feature} {getattr(r, 'aggregation', '') or ''}".strip()[:64]
            measurements.append(hd.sr.Measurement(
                name=hd.sr.CodedConcept(value=code, scheme_designator=FEATURE_SCHEME, meaning=meaning),
                value=value, unit=unit))
        if not measurements:
            continue
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"ROI {roi}"[:64]),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID), segment_number=number,
                source_series=hd.sr.SourceSeriesForSegmentation(source_series)),
            measurements=measurements))
    if not groups:
        raise ValueError("features: no finite value for any segment of the SEG")
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
                                     imaging_measurements=groups)
    return hd.sr.Comprehensive3DSR(
        evidence=[seg, *source], content=report, series_instance_uid=hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
        series_description="medflow features (TID 1500)", is_complete=True, is_final=False)


def sr_values(sr: Dataset) -> dict[str, dict[str, float]]:
    """Read back a TID 1500 report: ``{tracking identifier: {concept code: value}}`` (FD value when present)."""
    out: dict[str, dict[str, float]] = {}

    def walk(items, group: str | None) -> None:
        for item in items or []:
            name = item.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in item else None
            if item.ValueType == "TEXT" and name is not None and name.CodeValue == "112039":
                group = str(item.TextValue)
            if item.ValueType == "NUM" and name is not None and name.CodingSchemeDesignator == FEATURE_SCHEME:
                mv = item.MeasuredValueSequence[0]
                value = float(mv.FloatingPointValue) if "FloatingPointValue" in mv else float(mv.NumericValue)
                out.setdefault(group or "", {})[str(name.CodeValue)] = value
            if "ContentSequence" in item:
                walk(item.ContentSequence, group if item.ValueType != "CONTAINER" else None)

    walk(sr.ContentSequence, None)
    return out


def store(target, datasets: list[Dataset], *, timeout_s: float) -> int:
    """Store ``datasets`` to ``target`` (a parsed PACS source): C-STORE for dimse, STOW-RS for DICOMweb."""
    if target.protocol == "dimse":
        from storage.pacs import dimse

        return dimse.store(target, datasets, timeout_s=timeout_s)
    from storage.pacs import dicomweb

    return dicomweb.store(target, datasets, timeout_s=timeout_s)


@dataclass
class WriteBackResult:
    """What was stored for one volume (PHI-free)."""

    volume_key: str
    n_source: int
    n_segments: int
    n_values: int
    seg_series_uid: str  # UIDs of the objects medflow created (not patient data)
    sr_series_uid: str
    source_series_uid: str  # the (pseudonymised unless identified=True) series they reference


def series_files(staging: pathlib.Path, series_key: str) -> list[pathlib.Path]:
    """The staged instances of one series (``staging/<study_key>/<series_key>/*.dcm``)."""
    return sorted(p for p in pathlib.Path(staging).glob(f"*/{series_key}/*.dcm") if p.is_file())


def write_back_volume(target, *, staging: pathlib.Path, volume_key: str, series_key: str, affine: np.ndarray,
                      masks: Sequence[MaskInput], features, keys, identified: bool = False, timeout_s: float = 60.0,
                      software_version: str = "medflow") -> tuple[WriteBackResult, list[Dataset]]:
    """Build the SEG (masks) and SR (features) of one volume and store them, with their source series, to ``target``.

    ``identified=False`` (the default) stores and references the pseudonymised copy of the source
    series; ``True`` references the original instances (already in the PACS; not stored again).
    Returns the result summary and the stored datasets (source copies, SEG, SR).
    """
    files = series_files(staging, series_key)
    if not files:
        raise FileNotFoundError(f"no staged instances for series {series_key} in the pull's staging folder")
    source = read_series(files)
    if not identified:
        source = deidentified(source, keys=keys)
    seg = build_seg(source, affine, masks, software_version=software_version)
    sr = build_sr(seg, features, source=source, software_version=software_version)
    datasets = ([] if identified else list(source)) + [seg, sr]
    store(target, datasets, timeout_s=timeout_s)
    n_values = sum(len(v) for v in sr_values(sr).values())
    return WriteBackResult(volume_key=volume_key, n_source=len(source), n_segments=len(masks), n_values=n_values,
                           seg_series_uid=str(seg.SeriesInstanceUID), sr_series_uid=str(sr.SeriesInstanceUID),
                           source_series_uid=str(source[0].SeriesInstanceUID)), datasets
