"""DICOM input: scanning, guarding, grouping, converting, de-identifying.

Raw DICOM headers never leave this package: what it hands to the rest of medflow
are arrays, geometry and a whitelisted, PHI-free metadata dict (see
:class:`storage.dicom.model.ConvertedVolume`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from storage.dicom.model import ConvertedMask, ConvertedVolume, Rejection

if TYPE_CHECKING:  # pragma: no cover
    from storage.dicom.guard import GuardLimits

__all__ = ["CollectionResult", "collect_folder", "collect_files"]


@dataclass
class CollectionResult:
    """Everything one folder produced.

    ``rejections`` are files/series that should have become data and did not (quarantine);
    ``routed`` are recognised non-image objects (SR, presentation states, RT dose/plan,
    other) with reason ``non_image_object:<kind>`` — listed, not converted.
    """

    volumes: list[ConvertedVolume] = field(default_factory=list)
    masks: list[ConvertedMask] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    routed: list[Rejection] = field(default_factory=list)
    n_files: int = 0


def collect_folder(root: str | pathlib.Path, **options: Any) -> CollectionResult:
    """Every file under ``root`` (any depth, any names) through :func:`collect_files`."""
    from storage.dicom.scan import iter_files

    return collect_files(list(iter_files(root)), **options)


def collect_files(paths: list[pathlib.Path], *, max_pixel_bytes: int = 2 * 1024**3, pet_units: str = "as_stored",
                   guard_limits: GuardLimits | None = None, guard_workers: int = 2,
                   apply_magnification: bool = True, seg_fractional_threshold: float = 0.5,
                   rtstruct_slice_tolerance: float = 0.1,
                   refuse: Callable[[Any], str | None] | None = None,
                   known_digests: dict[str, tuple[str, tuple[int, int, int, int, int]]] | None = None
                   ) -> CollectionResult:
    """read once (hash, guard, parse) -> group -> convert images -> rasterise RTSTRUCT / SEG.

    Parameters
    ----------
    paths : list of path
        Files to collect (opened read-only; each is read once, see :mod:`storage.dicom.ingest`).
    max_pixel_bytes : int
        Cap on one object's decoded pixel bytes (checked from the header before decoding).
    pet_units : {"as_stored", "suvbw"}
        See :func:`storage.dicom.convert.convert_series`.
    guard_limits : GuardLimits, optional
        When given, :func:`storage.dicom.guard.guard_files` screens every file before
        grouping (damaged/hostile files become rejections). ``None`` skips the guard (the
        caller ran it already, or the input is trusted).
    guard_workers : int
        Worker processes for the guard's bounded decode.
    apply_magnification : bool
        See :func:`storage.dicom.convert.convert_series` (projection radiography spacing).
    seg_fractional_threshold : float in (0, 1]
        FRACTIONAL SEG voxels count as inside at value >= threshold x MaximumFractionalValue.
    rtstruct_slice_tolerance : float
        Contours further than this fraction of a slice from a slice centre are counted as
        off-slice in the mask's ``meta`` (still filled on the nearest slice).

    known_digests : dict, optional
        ``str(path) -> (sha256, identity)`` of files the source fingerprint hashed: a file still
        with that identity when read is not hashed again (:func:`storage.dicom.ingest.read_once`).

    Never raises for a bad file: problems are in ``rejections``.

    Raises
    ------
    IngestBugError
        When medflow's own code fails (a bug, not a data defect) or the decode workers
        cannot start.
    """
    import pydicom

    from storage.dicom.bugs import file_handle, raise_if_bug
    from storage.dicom.convert import convert_series
    from storage.dicom.guard.common import _silenced
    from storage.dicom.ingest import read_files
    from storage.dicom.rtstruct import rasterise_rtstruct
    from storage.dicom.series import group_series

    result = CollectionResult()
    entries, rejections = read_files(list(paths), limits=guard_limits, guard_workers=guard_workers,
                                     known=known_digests)
    result.n_files = len(paths)
    result.rejections.extend(rejections)
    # values are converted lazily from here on: pydicom's value warnings can quote values (PHI) and cost time
    with _silenced():
        if refuse is not None:  # policy hook, e.g. burned-in annotation risk (de-identification boundary)
            allowed = []
            for e in entries:
                reason = refuse(e.dataset) if e.object_kind == "image" else None
                if reason is None:
                    allowed.append(e)
                else:
                    result.rejections.append(Rejection(e.sha256, reason, "refused by the collection policy "
                                                       f"({reason}); set allow_burned_in to accept such images"))
            entries = allowed
        groups = group_series(entries)
        for g in groups:
            if g.object_kind != "image":
                continue
            vols, rej = convert_series(g, max_pixel_bytes=max_pixel_bytes, pet_units=pet_units,  # type: ignore[arg-type]
                                       apply_magnification=apply_magnification)
            for v in vols:  # identity links for pseudonymisation (in memory only)
                v.patient_id, v.study_uid = g.patient_id, g.study_uid
            result.volumes.extend(vols)
            result.rejections.extend(rej)
        for g in groups:
            if g.object_kind in ("rtstruct", "seg"):
                for e in g.files:
                    try:
                        ds = e.dataset if e.full else pydicom.dcmread(e.path, force=True)
                    except Exception as exc:  # noqa: BLE001
                        raise_if_bug(exc, stage=g.object_kind, input_key=file_handle(e.sha256))
                        result.rejections.append(Rejection(e.sha256, "unreadable_file", "the file could not be read in full",
                                                           type(exc).__name__))
                        continue
                    try:
                        if g.object_kind == "rtstruct":
                            masks, rej = rasterise_rtstruct(ds, result.volumes, sha256=e.sha256,
                                                            slice_tolerance=rtstruct_slice_tolerance)
                        else:
                            from storage.dicom.seg import convert_seg

                            masks, rej = convert_seg(ds, result.volumes, sha256=e.sha256, max_pixel_bytes=max_pixel_bytes,
                                                     fractional_threshold=seg_fractional_threshold)
                    except Exception as exc:  # noqa: BLE001
                        raise_if_bug(exc, stage=g.object_kind, input_key=file_handle(e.sha256))
                        masks, rej = [], [Rejection(e.sha256, f"{g.object_kind}_failed",
                                                    f"the {g.object_kind} object could not be rasterised",
                                                    type(exc).__name__)]
                    result.masks.extend(masks)
                    result.rejections.extend(rej)
            elif g.object_kind != "image":
                result.routed.extend(Rejection(e.sha256, f"non_image_object:{g.object_kind}",
                                               f"{g.object_kind} object recognised and routed, not converted")
                                     for e in g.files)
    return result
