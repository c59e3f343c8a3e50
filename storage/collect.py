"""Collection into a workspace: DICOM folder -> guarded, pseudonymised Zarr volumes and masks.

This is the storage side of the collection stage. It runs inside one Prefect task
and is the de-identification boundary: raw headers, patient IDs and UIDs stay in
memory here; what is written (Zarr attrs, ``collection.json``, quarantine records,
catalog rows) carries only pseudonymous keys and whitelisted, PHI-free facts.
The pseudonym map is recorded in the encrypted vault, the only way back.
"""

from __future__ import annotations

import contextlib
import gc
import json
import pathlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from storage.dicom import collect_files
from storage.dicom.bugs import IngestBugError
from storage.dicom.guard import GuardLimits
from storage.dicom.model import ConvertedVolume, Rejection
from storage.pseudonym import PseudonymKeys
from storage.quarantine import QuarantineStore
from storage.vault import Vault
from storage.volumes import write_array
from storage.workers import default_workers, worker_context
from storage.workspace import MANIFEST, Workspace, atomic_folder, canonical_json, sha256_bytes

_SAFE_ROI = re.compile(r"[^A-Za-z0-9_.+-]+")

#: Converter meta keys that come from free-text elements (LO/SH) and may carry identifying text:
#: they pass the Clean Descriptors vocabulary (PS3.15 E.3.5) or are dropped.
FREE_TEXT_KEYS = ("manufacturer", "model", "convolution_kernel")

#: Workspace stage folder of the per-unit (per-patient) collection artifacts, and their summary file.
UNIT_STAGE = "collection-unit"
UNIT_SUMMARY = "unit.json"


def clean_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The converter's meta with free-text values cleaned; values that clean to nothing are dropped."""
    from storage.deid.vocabulary import clean_text  # (pydicom: loaded by the unit workers, not by the flow)

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
    from storage.deid.vocabulary import clean_text

    cleaned = _SAFE_ROI.sub("_", clean_text(name or ""))[:64].strip("_")
    return cleaned or f"roi{index}"


@dataclass
class CollectedVolume:
    rel: str  # folder relative to ``base`` (the collection folder when ``base`` is None)
    meta: dict[str, Any]
    base: pathlib.Path | None = None  # the unit's cached artifact folder, when collected by units


@dataclass
class CollectedMask:
    rel: str
    meta: dict[str, Any]
    base: pathlib.Path | None = None


@dataclass
class CollectionSummary:
    volumes: list[CollectedVolume] = field(default_factory=list)
    masks: list[CollectedMask] = field(default_factory=list)
    rejections: list[dict[str, Any]] = field(default_factory=list)
    routed: list[dict[str, Any]] = field(default_factory=list)
    qc: list[dict[str, Any]] = field(default_factory=list)
    n_files: int = 0
    units_converted: int = 0
    units_cached: int = 0


def burned_in_refusal(ds: Any) -> str | None:
    """Refuse images that may carry burned-in text (PS3.15 E.1.1 / Clean Pixel Data is not performed).

    Header-only variant of :func:`storage.deid.burned_in.burned_in_risk`: BurnedInAnnotation
    YES refuses, NO accepts; when absent, risky modalities and SOP classes (US, SC, XA,
    endoscopy, ...) are refused.
    """
    from storage.deid.burned_in import ENCAPSULATED_DOCUMENT_PREFIX, RISKY_MODALITIES, RISKY_SOP_CLASSES
    from storage.dicom.attrs import attr  # (pydicom: loaded by the unit workers, not by the flow)

    sop = str(attr(ds, "SOPClassUID", "") or "").strip()
    if sop.startswith(ENCAPSULATED_DOCUMENT_PREFIX):
        return "encapsulated_document"
    flag = str(attr(ds, "BurnedInAnnotation", "") or "").strip().upper()
    if flag in ("YES", "NO"):
        return "burned_in_annotation" if flag == "YES" else None
    modality = str(attr(ds, "Modality", "") or "").strip().upper()
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


def _convert_unit(paths: list[pathlib.Path], folder: pathlib.Path, *, config: Any, keys: PseudonymKeys,
                  tag: str, guard_workers: int = 1, known: dict[str, Any] | None = None) -> dict[str, Any]:
    """Convert one unit's files and write its volumes/masks below ``folder`` (runs in a worker process).

    Returns a dict with the PHI-free ``summary`` (volume/mask meta with ``rel``, rejection
    records, routed, QC, n_files), the in-memory ``pairs`` for the vault (identifiers: never
    written by this function) and the :class:`Rejection` objects for the quarantine store.
    """
    result = collect_files(paths, max_pixel_bytes=int(config.max_pixel_bytes), guard_limits=guard_limits(config),
                           guard_workers=guard_workers, pet_units=config.pet_units,
                           apply_magnification=config.apply_magnification,
                           seg_fractional_threshold=config.seg_fractional_threshold,
                           rtstruct_slice_tolerance=config.rtstruct_slice_tolerance,
                           refuse=None if config.allow_burned_in else burned_in_refusal, known_digests=known)
    out: dict[str, Any] = {"volumes": [], "masks": [], "rejections": [], "qc": [], "n_files": result.n_files,
                           "series_files": {}}
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
        # files of each series that became volumes, QC-rejected ones included: which unit owns a split series
        out["series_files"][series_key] = out["series_files"].get(series_key, 0) + max(1, len(vol.source_sha256s))
        findings = _volume_qc(vol)
        for f in findings:
            out["qc"].append({"volume_key": volume_key, "series_key": series_key, **f})
        if any(f["severity"] == "error" for f in findings):
            codes = ",".join(sorted({f["code"] for f in findings if f["severity"] == "error"}))
            out["rejections"].append({"sha256": volume_key, "reason": "qc_failed", "series_key": series_key,
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
        out["volumes"].append({"rel": rel, "meta": meta, "files": list(vol.source_sha256s)})

    vol_meta = {v["meta"]["volume_key"]: v["meta"] for v in out["volumes"]}
    per_volume: dict[str, int] = {}
    for i, m in enumerate(sorted(result.masks, key=lambda m: (keys.series_key(m.referenced_series_uid),
                                                                m.referenced_volume_index, m.roi_name))):
        volume_key = by_series.get((m.referenced_series_uid, m.referenced_volume_index))
        if volume_key is None or volume_key not in vol_meta:
            out["rejections"].append({"sha256": f"mask-{tag}-{i}", "reason": "mask_reference_missing",
                                      "series_key": None, "detail": "mask references a series that was not converted",
                                      "exception_type": None})
            continue
        vmeta = vol_meta[volume_key]
        j = per_volume.get(volume_key, 0)  # numbered per volume: adding other series never renames a mask
        per_volume[volume_key] = j + 1
        roi = clean_roi_name(m.roi_name, j)
        mask_key = f"{volume_key}.m{j}"
        rel = f"masks/{mask_key}"
        affine = np.asarray(next(v.affine for v in result.volumes
                                 if (v.series_uid, v.volume_index) == (m.referenced_series_uid,
                                                                        m.referenced_volume_index)))
        meta = {"mask_key": mask_key, "volume_key": volume_key, "roi_name": roi, "source": m.source,
                "patient_key": vmeta["patient_key"], "modality": vmeta["modality"],
                "voxels": int(np.count_nonzero(m.mask)), "shape": list(m.mask.shape)}
        write_array(folder / rel, m.mask.astype(bool, copy=False), affine=affine, spacing=tuple(vmeta["spacing"]),
                    attrs={"medflow": meta})
        out["masks"].append({"rel": rel, "meta": meta})
    out["rejections"].extend(rejection_record(r) for r in result.rejections)
    out["routed"] = [rejection_record(r) for r in result.routed]
    return {"summary": out, "pairs": {k: sorted(v) for k, v in pairs.items()}, "quarantine": result.rejections}


@contextlib.contextmanager
def _collection_deferred() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for one unit, then collect once.

    Parsing a unit keeps every file's data set alive until its series are converted: tens of
    thousands of new objects per patient, which trigger collections that walk them (and every
    module object the worker imported) again and again without finding garbage: a quarter of a
    unit's CPU time on the sts cohort. Reference counting still frees everything as usual; what
    sits in reference cycles is freed by one collection of the youngest generation at the end of the unit.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
            gc.collect(0)  # the unit's objects are all still in the youngest generation: only they are walked


def _unit_task(paths: list[pathlib.Path], folder: pathlib.Path, cached: bool, config: Any, keys: PseudonymKeys,
               tag: str, known: dict[str, Any] | None = None) -> dict[str, Any]:
    """Worker entry: convert a unit into ``folder`` (atomically, with ``unit.json``, when ``cached``).

    ``known``: the digests the source fingerprint took of the unit's files (:func:`storage.dicom.collect_files`).
    """
    with _collection_deferred():
        if not cached:
            return _convert_unit(paths, folder, config=config, keys=keys, tag=tag, known=known)
        with atomic_folder(folder) as stage:
            res = _convert_unit(paths, stage, config=config, keys=keys, tag=tag, known=known)
            (stage / UNIT_SUMMARY).write_text(canonical_json(res["summary"]))
        return res


def collect_into(source: str | pathlib.Path, folder: pathlib.Path, *, config: Any, keys: PseudonymKeys,
                 workspace: pathlib.Path, run_id: str | None = None, unit_salt: str | None = None,
                 workers: int | None = None) -> CollectionSummary:
    """Convert every series under ``source`` and write volumes/masks (PHI-free summary returned).

    The source is partitioned into units, one per patient (:mod:`storage.dicom.units`); units
    are converted in parallel worker processes (at most ``workers`` in flight, so memory is
    bounded by that many units' files), each file read once (:mod:`storage.dicom.ingest`).

    Parameters
    ----------
    source : path
        Folder of DICOM files (any depth, any names); read-only.
    folder : path
        The collection's staging folder. Without ``unit_salt``, every volume/mask is written
        below it (``rel`` is relative to it).
    config : CollectionConfig
    keys : PseudonymKeys
    workspace : path
        Quarantine records go to ``WORKSPACE/quarantine``, the pseudonym map to the vault.
    unit_salt : str, optional
        Digest of everything except the files that determines a unit's output (parameters,
        code and library versions, pseudonymisation key id). When given, each unit is a
        content-keyed artifact ``WORKSPACE/artifacts/collection-unit/<key>`` with
        ``key = sha256(salt, sorted file digests)``: a unit converted before (by any run,
        from any location) is a cache hit costing one small JSON read, and collected
        volumes/masks carry ``base`` = that folder.
    workers : int, optional
        Worker processes (default :func:`default_workers`); 1 converts in this process.

    Raises
    ------
    IngestBugError
        A defect in medflow (or worker processes that cannot start), never a data defect:
        damaged files are quarantined, the batch goes on.
    """
    from storage.dicom.scan import iter_files
    from storage.dicom.units import partition

    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    ws = Workspace(workspace)
    n_workers = workers or default_workers()
    if n_workers > 1:  # the worker server starts importing while this process partitions the source
        worker_context()
    vouched: dict[str, Any] = {}  # digests the fingerprint took: a unit does not hash those files again
    units, unreadable = partition(list(iter_files(source)), patient_token=keys.partition_token, vouched=vouched)
    if unreadable:
        units.append([(p, "") for p in unreadable])
    out = CollectionSummary()
    jobs: list[_Job] = []
    done: list[tuple[pathlib.Path | None, dict[str, Any]]] = []
    for files in units:
        digests = sorted(sha for _p, sha in files)
        tag = (digests[0] or "unreadable")[:12]
        paths = [p for p, _sha in files]
        if unit_salt is None:
            # one unit writes straight into ``folder``; several get a subfolder each, so two units holding parts
            # of one series (conflicting PatientIDs) can never overwrite each other's volume on disk
            jobs.append(_Job(tag, paths, folder if len(units) == 1 else folder / "units" / tag, False,
                             _known(paths, vouched)))
            continue
        key = sha256_bytes(canonical_json([unit_salt, digests]).encode())
        unit_folder = ws.artifact_dir(UNIT_STAGE, key)
        summary_path = unit_folder / UNIT_SUMMARY
        if (unit_folder / MANIFEST).is_file() and summary_path.is_file():
            done.append((unit_folder, json.loads(summary_path.read_text())))
            out.units_cached += 1
        else:
            jobs.append(_Job(tag, paths, unit_folder, True, _known(paths, vouched)))
    vault = Vault(workspace, keys)
    store = QuarantineStore(workspace)
    results = _run_units(jobs, config=config, keys=keys, workers=n_workers)
    pairs: dict[str, list[tuple[str, str]]] = {}
    for res in results:  # every unit's pseudonym pairs in one vault rewrite per kind (not one per unit)
        for kind, items in res["pairs"].items():
            pairs.setdefault(kind, []).extend(tuple(x) for x in items)
    for kind, items in pairs.items():
        vault.record_many(kind, items)
    for job, res in zip(jobs, results, strict=True):
        target, cached = job.target, job.cached
        for rej in res["quarantine"]:
            store.add(rej, run_id=run_id)
        summary = res["summary"]
        if not cached and target != folder:
            prefix = target.relative_to(folder).as_posix()
            summary = {**summary, "volumes": [{**v, "rel": f"{prefix}/{v['rel']}"} for v in summary["volumes"]],
                       "masks": [{**m, "rel": f"{prefix}/{m['rel']}"} for m in summary["masks"]]}
        done.append((target if cached else None, summary))
        out.units_converted += 1
    for base, summary in _resolve_split_series(done, store=store, run_id=run_id):
        out.n_files += int(summary["n_files"])
        out.volumes.extend(CollectedVolume(rel=v["rel"], meta=v["meta"], base=base) for v in summary["volumes"])
        out.masks.extend(CollectedMask(rel=m["rel"], meta=m["meta"], base=base) for m in summary["masks"])
        out.rejections.extend(summary["rejections"])
        out.routed.extend(summary["routed"])
        out.qc.extend(summary["qc"])
    out.volumes.sort(key=lambda v: (v.meta["series_key"], v.meta["volume_index"]))
    out.masks.sort(key=lambda m: m.meta["mask_key"])
    out.rejections.sort(key=lambda r: (str(r.get("reason")), str(r.get("sha256"))))
    out.routed.sort(key=lambda r: (str(r.get("reason")), str(r.get("sha256"))))
    out.qc.sort(key=lambda f: (str(f.get("volume_key")), str(f.get("code"))))
    return out


def _series_sizes(summary: dict[str, Any]) -> dict[str, int]:
    """Files per series key that one unit turned into volumes (QC-rejected volumes included)."""
    if summary.get("series_files") is not None:
        return {str(k): int(v) for k, v in summary["series_files"].items()}
    sizes: dict[str, int] = {}  # a unit summary cached before series_files existed: its written volumes
    for v in summary["volumes"]:
        key = v["meta"]["series_key"]
        sizes[key] = sizes.get(key, 0) + max(1, len(v.get("files") or []))
    return sizes


def _resolve_split_series(done: list[tuple[pathlib.Path | None, dict[str, Any]]], *,
                          store: QuarantineStore | None = None, run_id: str | None = None
                          ) -> list[tuple[pathlib.Path | None, dict[str, Any]]]:
    """One unit per series.

    A series whose instances disagree on PatientID (a damaged or conflicting instance) is split over two
    units. The unit holding the most of the series' files (counted over every volume it built, including
    one that QC then rejected) keeps the series; the volumes other units built from it, with the masks
    drawn on them, are reported per file as ``series_patient_conflict``. Owners are chosen per series, not
    per volume key: volume indices are numbered per unit, so ``v0`` of one part need not be the same
    volume as ``v0`` of another (fuzz seed 7: a 1-file part and a 2-D image of the other part), and the
    size of a part is its file count, not ``shape[0]`` (the rows of a 2-D image).
    """
    owners: dict[str, tuple[int, int]] = {}
    for i, (_base, summary) in enumerate(done):
        for key, size in _series_sizes(summary).items():
            if key not in owners or size > owners[key][1]:
                owners[key] = (i, size)
    out = []
    for i, (base, summary) in enumerate(done):
        lost = {v["meta"]["volume_key"] for v in summary["volumes"]
                if owners.get(v["meta"]["series_key"], (i, 0))[0] != i}
        if lost:
            rejected = [{"sha256": sha, "reason": "series_patient_conflict", "series_key": v["meta"]["series_key"],
                         "detail": "part of a series whose instances disagree on the patient; the part with the "
                                   "most files was kept, this part was not converted", "exception_type": None}
                        for v in summary["volumes"] if v["meta"]["volume_key"] in lost
                        for sha in (v.get("files") or [f"{v['meta']['volume_key']}-part{i}"])]
            if store is not None:
                for r in rejected:
                    store.add(Rejection(r["sha256"], r["reason"], r["detail"], series_key=r["series_key"]),
                              run_id=run_id)
            summary = {**summary,
                       "volumes": [v for v in summary["volumes"] if v["meta"]["volume_key"] not in lost],
                       "masks": [m for m in summary["masks"] if m["meta"]["volume_key"] not in lost],
                       "qc": [f for f in summary["qc"] if f.get("volume_key") not in lost],
                       "rejections": [*summary["rejections"], *rejected]}
        out.append((base, summary))
    return out


class _Job(NamedTuple):
    """One unit to convert: its tag, files, target folder, whether it is a cached artifact, known digests."""

    tag: str
    paths: list[pathlib.Path]
    target: pathlib.Path
    cached: bool
    known: dict[str, Any]


def _known(paths: list[pathlib.Path], vouched: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint's digests of ``paths`` (by ``str(path)``), those it took."""
    return {key: vouched[key] for key in map(str, paths) if key in vouched}


def _run_units(jobs: list[_Job], *, config: Any,
               keys: PseudonymKeys, workers: int) -> list[dict[str, Any]]:
    """Results of ``jobs`` in order: inline for one job or one worker, else in a process pool.

    A failure in the pool is raised here, after the pool's frame is gone: an exception raised inside
    it keeps that frame (and the worker processes' pipes) alive for as long as the exception lives,
    and Prefect keeps a failed run's exception (soak: 4 pipe fds held per failed ingest).
    """
    if len(jobs) <= 1 or workers == 1:
        return [_unit_task(job.paths, job.target, job.cached, config, keys, job.tag, job.known) for job in jobs]
    results, bug = _run_pool(jobs, config=config, keys=keys, workers=workers)
    if bug is not None:
        raise IngestBugError(*bug)
    return results


def _run_pool(jobs: list[_Job], *, config: Any,
              keys: PseudonymKeys, workers: int) -> tuple[list[dict[str, Any]], tuple[str, ...] | None]:
    """``(results, None)``, or ``([], IngestBugError fields)`` when the pool or a unit failed as a medflow bug."""
    import concurrent.futures
    from concurrent.futures.process import BrokenProcessPool

    try:
        pool = concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(jobs)),
                                                      mp_context=worker_context())
    except OSError as exc:
        return [], ("collection workers", "worker start-up", type(exc).__name__)
    with pool:
        # the largest units first (by files): the last to start are the shortest, so the workers finish together
        # (longest-processing-time-first); results are still taken in the order of ``jobs``
        order = sorted(range(len(jobs)), key=lambda i: (-len(jobs[i][1]), i))
        futures: list[Any] = [None] * len(jobs)
        try:
            for i in order:
                job = jobs[i]
                futures[i] = pool.submit(_unit_task, job.paths, job.target, job.cached, config, keys, job.tag,
                                         job.known)
        except (OSError, BrokenProcessPool) as exc:
            return [], ("collection workers", "worker start-up", type(exc).__name__)
        results = []
        for tag, fut in zip((job.tag for job in jobs), futures, strict=True):
            try:
                results.append(fut.result())
                continue
            except BrokenProcessPool:
                bug = ("collection workers", f"unit sha256:{tag}", "BrokenProcessPool",
                       "a unit worker process died (killed, out of memory?)")
            except IngestBugError as exc:  # a unit's bug: its fields only (the exception carries the worker's frames)
                bug = (exc.stage, exc.input_key, exc.exception_type, exc.location)
            for f in futures:
                if f is not None:
                    f.cancel()
            return [], bug
        return results, None
