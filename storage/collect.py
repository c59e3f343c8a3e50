"""Collection into a workspace: DICOM folder -> guarded, pseudonymised Zarr volumes and masks.

This is the storage side of the collection stage. It runs inside one Prefect task
and is the de-identification boundary: raw headers, patient IDs and UIDs stay in
memory here; what is written (Zarr attrs, ``collection.json``, quarantine records,
catalog rows) carries only pseudonymous keys and whitelisted, PHI-free facts.
The pseudonym map is recorded in the encrypted vault, the only way back.
"""

from __future__ import annotations

import pathlib
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storage.deid.vocabulary import clean_text
from storage.dicom import collect_folder
from storage.dicom.guard import GuardLimits
from storage.dicom.model import ConvertedVolume, Rejection
from storage.pseudonym import PseudonymKeys
from storage.quarantine import QuarantineStore
from storage.vault import Vault
from storage.volumes import write_array

_SAFE_ROI = re.compile(r"[^A-Za-z0-9_.+-]+")

#: Converter meta keys that come from free-text elements (LO/SH) and may carry identifying text:
#: they pass the Clean Descriptors vocabulary (PS3.15 E.3.5) or are dropped.
FREE_TEXT_KEYS = ("manufacturer", "model", "convolution_kernel")


def clean_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The converter's meta with free-text values cleaned; values that clean to nothing are dropped."""
    out = dict(meta)
    for key in FREE_TEXT_KEYS:
        value = out.pop(key, None)
        if isinstance(value, str):
            cleaned = clean_text(value)
            if cleaned:
                out[key] = cleaned
    return out


def clean_roi_name(name: str, index: int) -> str:
    """ROI names are free text (LO): keep them only as far as the safe vocabulary allows."""
    cleaned = _SAFE_ROI.sub("_", clean_text(name or ""))[:64].strip("_")
    return cleaned or f"roi{index}"


@dataclass
class CollectedVolume:
    rel: str  # folder relative to the collection artifact folder
    meta: dict[str, Any]


@dataclass
class CollectedMask:
    rel: str
    meta: dict[str, Any]


@dataclass
class CollectionSummary:
    volumes: list[CollectedVolume] = field(default_factory=list)
    masks: list[CollectedMask] = field(default_factory=list)
    rejections: list[dict[str, Any]] = field(default_factory=list)
    routed: list[dict[str, Any]] = field(default_factory=list)
    qc: list[dict[str, Any]] = field(default_factory=list)
    n_files: int = 0


def burned_in_refusal(ds: Any) -> str | None:
    """Refuse images that may carry burned-in text (PS3.15 E.1.1 / Clean Pixel Data is not performed).

    Header-only variant of :func:`storage.deid.burned_in.burned_in_risk`: BurnedInAnnotation
    YES refuses, NO accepts; when absent, risky modalities and SOP classes (US, SC, XA,
    endoscopy, ...) are refused.
    """
    from storage.deid.burned_in import ENCAPSULATED_DOCUMENT_PREFIX, RISKY_MODALITIES, RISKY_SOP_CLASSES

    sop = str(ds.get("SOPClassUID", "") or "").strip()
    if sop.startswith(ENCAPSULATED_DOCUMENT_PREFIX):
        return "encapsulated_document"
    flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag in ("YES", "NO"):
        return "burned_in_annotation" if flag == "YES" else None
    modality = str(ds.get("Modality", "") or "").strip().upper()
    return "burned_in_annotation" if modality in RISKY_MODALITIES or sop in RISKY_SOP_CLASSES else None


def rejection_record(rej: Rejection) -> dict[str, Any]:
    return {"sha256": rej.sha256, "reason": rej.reason, "detail": rej.detail,
            "exception_type": rej.exception_type, "series_key": rej.series_key}


def guard_limits(config: Any) -> GuardLimits:
    return GuardLimits(max_pixel_bytes=int(config.max_pixel_bytes), max_inflated_bytes=int(config.max_inflated_bytes),
                       decode_timeout_s=float(config.file_timeout_s), worker_memory_bytes=int(config.file_memory_bytes))


def _volume_qc(vol: ConvertedVolume) -> list[dict[str, Any]]:
    """QC findings of one converted volume (PHI-free dicts)."""
    from imaging import qc

    return [f.as_dict() for f in qc.volume_findings(vol.volume, vol.meta, spacing=vol.spacing)]


def collect_into(source: str | pathlib.Path, folder: pathlib.Path, *, config: Any, keys: PseudonymKeys,
                 workspace: pathlib.Path, run_id: str | None = None) -> CollectionSummary:
    """Convert every series under ``source`` and write volumes/masks below ``folder`` (a staging folder).

    Quarantine records go to ``WORKSPACE/quarantine`` (one per file hash); the pseudonym map
    to the encrypted vault. Returns the PHI-free summary.
    """
    result = collect_folder(source, max_pixel_bytes=int(config.max_pixel_bytes), guard_limits=guard_limits(config),
                            pet_units=config.pet_units, apply_magnification=config.apply_magnification,
                            seg_fractional_threshold=config.seg_fractional_threshold,
                            rtstruct_slice_tolerance=config.rtstruct_slice_tolerance,
                            refuse=None if config.allow_burned_in else burned_in_refusal)
    out = CollectionSummary(n_files=result.n_files)
    vault = Vault(workspace, keys)
    by_series: dict[tuple[str, int], str] = {}
    pairs: dict[str, set[tuple[str, str]]] = {"patient": set(), "study": set(), "series": set()}

    for vol in sorted(result.volumes, key=lambda v: (keys.series_key(v.series_uid), v.volume_index)):
        patient_key = keys.patient_key(vol.patient_id)
        study_key = keys.study_key(vol.study_uid)
        series_key = keys.series_key(vol.series_uid)
        volume_key = keys.volume_key(series_key, vol.volume_index)
        pairs["patient"].add((vol.patient_id, patient_key))
        pairs["study"].add((vol.study_uid, study_key))
        pairs["series"].add((vol.series_uid, series_key))
        by_series[(vol.series_uid, vol.volume_index)] = volume_key
        findings = _volume_qc(vol)
        for f in findings:
            out.qc.append({"volume_key": volume_key, "series_key": series_key, **f})
        if any(f["severity"] == "error" for f in findings):
            codes = ",".join(sorted({f["code"] for f in findings if f["severity"] == "error"}))
            out.rejections.append({"sha256": volume_key, "reason": "qc_failed", "series_key": series_key,
                                   "detail": f"series failed QC ({codes}); not converted", "exception_type": None})
            continue
        rel = f"volumes/{volume_key}"
        meta = {
            "patient_key": patient_key, "study_key": study_key, "series_key": series_key,
            "volume_key": volume_key, "volume_index": vol.volume_index, "kind": vol.kind,
            "modality": vol.meta.get("modality"), "series_number": vol.meta.get("series_number"),
            "shape": list(vol.volume.shape), "spacing": [float(s) for s in vol.spacing],
            "dtype": str(vol.volume.dtype), "info": clean_meta(vol.meta),
        }
        write_array(folder / rel, vol.volume, affine=vol.affine, spacing=vol.spacing,
                    attrs={"medflow": {k: v for k, v in meta.items() if k != "info"}, "dicom": meta["info"]},
                    chunk_mb=float(config.chunk_mb))
        out.volumes.append(CollectedVolume(rel=rel, meta=meta))

    for i, m in enumerate(sorted(result.masks, key=lambda m: (keys.series_key(m.referenced_series_uid),
                                                                m.referenced_volume_index, m.roi_name))):
        volume_key = by_series.get((m.referenced_series_uid, m.referenced_volume_index))
        if volume_key is None:
            out.rejections.append({"sha256": f"mask-{i}", "reason": "mask_reference_missing", "series_key": None,
                                   "detail": "mask references a series that was not converted", "exception_type": None})
            continue
        vol_meta = next(v.meta for v in out.volumes if v.meta["volume_key"] == volume_key)
        roi = clean_roi_name(m.roi_name, i)
        mask_key = f"{volume_key}.m{i}"
        rel = f"masks/{mask_key}"
        affine = np.asarray(next(v.affine for v in result.volumes
                                 if (v.series_uid, v.volume_index) == (m.referenced_series_uid,
                                                                        m.referenced_volume_index)))
        voxels = int(np.count_nonzero(m.mask))
        meta = {"mask_key": mask_key, "volume_key": volume_key, "roi_name": roi, "source": m.source,
                "patient_key": vol_meta["patient_key"], "modality": vol_meta["modality"], "voxels": voxels,
                "shape": list(m.mask.shape)}
        write_array(folder / rel, m.mask.astype(bool), affine=affine, spacing=tuple(vol_meta["spacing"]),
                    attrs={"medflow": meta})
        out.masks.append(CollectedMask(rel=rel, meta=meta))

    for kind, items in pairs.items():
        vault.record_many(kind, sorted(items))
    store = QuarantineStore(workspace)
    for rej in result.rejections:
        store.add(rej, run_id=run_id)
        out.rejections.append(rejection_record(rej))
    out.routed = [rejection_record(r) for r in result.routed]
    return out
