"""Data model shared by the DICOM collection modules (scan -> guard -> group -> convert -> QC).

Everything here lives in memory inside one collection task. Objects that hold
identifying data (``FileEntry.path``, ``FileEntry.dataset``, ``SeriesGroup.uids``)
are never logged, returned from a Prefect task, or written to the workspace;
only the PHI-free fields of :class:`ConvertedVolume` and :class:`ConvertedMask`
cross that boundary (after :mod:`storage.deid` pseudonymisation of the keys).
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

ObjectKind = Literal["image", "rtstruct", "seg", "sr", "presentation", "rtdose", "rtplan", "other"]
VolumeKind = Literal["3d", "4d", "2d", "2d+t"]


@dataclass
class FileEntry:
    """One DICOM file: its header (``stop_before_pixels=True``) or, with ``full``, the whole data set.

    ``full`` means ``dataset`` was parsed from the file's bytes read once
    (:func:`storage.dicom.ingest.read_once`), pixel data included: the converter uses it
    as is instead of reading the file again.
    """

    path: pathlib.Path
    sha256: str
    dataset: Any  # pydicom.Dataset (PHI: never leaves storage)
    object_kind: ObjectKind = "image"
    full: bool = False


@dataclass
class Rejection:
    """A file or series that did not become a volume (goes to quarantine).

    ``reason`` is a stable reason code (e.g. ``"truncated"``, ``"pixel_length_mismatch"``,
    ``"unsupported_transfer_syntax"``, ``"decompression_bomb"``, ``"burned_in_annotation"``,
    ``"duplicate_instance_conflict"``); ``detail`` is a PHI-free sentence.
    """

    sha256: str
    reason: str
    detail: str
    exception_type: str | None = None
    series_key: str | None = None  # pseudonymous key when known
    size: int | None = None  # file size in bytes when known (lets quarantine.locate skip other files)


@dataclass
class SeriesGroup:
    """Files of one series (same SeriesInstanceUID), all of object kind ``image`` unless stated."""

    series_uid: str  # PHI-adjacent: pseudonymise before it leaves storage
    study_uid: str
    patient_id: str  # PHI: pseudonymise before it leaves storage
    frame_of_reference_uid: str | None
    modality: str
    files: list[FileEntry] = field(default_factory=list)
    object_kind: ObjectKind = "image"


@dataclass
class ConvertedVolume:
    """One volume (or 2-D image) made from a series.

    Attributes
    ----------
    volume : ndarray
        ``[slice, row, column]`` for 3-D, ``[time, slice, row, column]`` for 4-D,
        ``[row, column]`` for 2-D and ``[time, row, column]`` for 2-D+t; real-world
        values after Modality LUT (rescale slope/intercept, per frame where given).
    affine : ndarray (4, 4)
        Spatial array index (the last 3 axes, or the 2 in-plane axes padded with a
        unit slice axis for 2-D) -> patient LPS mm (PS3.3 C.7.6.2.1.1).
    spacing : tuple of float
        mm, spatial array-axis order.
    kind : "3d" | "4d" | "2d" | "2d+t"
    meta : dict
        PHI-free, JSON-serialisable facts: modality, series_number, acquisition/echo/
        temporal index, units (e.g. "HU", "SUVbw", "BQML"), rescale type, manufacturer,
        model, transfer_syntax, bits_stored, photometric, gantry_tilt_deg, spacing_source
        ("PixelSpacing" | "ImagerPixelSpacing" | "SequenceOfUltrasoundRegions" | ...),
        calibration notes, n_files, ...
    volume_index : int
        Index of this volume within its series (series split into several volumes).
    instance_uids : list of str
        SOPInstanceUIDs per slice (in memory only: lets RTSTRUCT/SEG find their grid).
    """

    volume: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, ...]
    kind: VolumeKind
    meta: dict[str, Any]
    volume_index: int = 0
    instance_uids: list[str] = field(default_factory=list)
    #: content digests of the files the volume was built from (PHI-free; lets a dropped volume name its files)
    source_sha256s: list[str] = field(default_factory=list)
    series_uid: str = ""
    frame_of_reference_uid: str | None = None
    patient_id: str = ""  # PHI: in memory only, pseudonymised by the collection task
    study_uid: str = ""  # in memory only, pseudonymised by the collection task


@dataclass
class ConvertedMask:
    """One ROI of an RTSTRUCT / SEG rasterised on the grid of its referenced volume."""

    mask: np.ndarray  # bool, same spatial shape as the referenced volume
    roi_name: str
    referenced_series_uid: str
    referenced_volume_index: int = 0
    source: Literal["rtstruct", "seg"] = "rtstruct"
    meta: dict[str, Any] = field(default_factory=dict)
