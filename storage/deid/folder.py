"""De-identify a folder of DICOM files into a pseudonymous folder tree.

Output layout (every path component is pseudonymous)::

    OUT_DIR/<patient_key>/<study_key>/<series_key>/<new SOPInstanceUID>.dcm

Each file is written atomically (temporary file in the same folder, fsync, rename);
input files are only read. Refused inputs (burned-in text, encapsulated documents,
unreadable files) become :class:`~storage.dicom.model.Rejection` records: added to the
workspace quarantine (``storage.quarantine.QuarantineStore``) when a workspace is given
and that module exists, and always listed in the report. When a workspace is given,
the originals behind the pseudonyms (patient, study, series) are recorded in the
encrypted vault (:class:`storage.vault.Vault`).

Nothing in the report names an input path or an original identifier.
"""

from __future__ import annotations

import collections
import os
import pathlib
from dataclasses import dataclass, field

import pydicom
from pydicom.errors import InvalidDicomError

from storage.deid.engine import DeidRejected, deidentify_dataset, patient_identity
from storage.deid.options import DeidOptions
from storage.dicom.model import Rejection
from storage.pseudonym import PseudonymKeys
from storage.workspace import Workspace, atomic_path, sha256_file


@dataclass
class DeidReport:
    """PHI-free outcome of :func:`deidentify_folder` (counts, pseudonymous keys, rejections)."""

    n_files: int = 0
    n_written: int = 0
    n_rejected: int = 0
    n_not_dicom: int = 0
    n_skipped: int = 0  # DICOMDIR files (their records name paths and patients)
    patients: set[str] = field(default_factory=set)
    studies: set[str] = field(default_factory=set)
    series: set[str] = field(default_factory=set)
    rejections: list[Rejection] = field(default_factory=list)
    quarantined: int = 0

    @property
    def reasons(self) -> dict[str, int]:
        return dict(collections.Counter(r.reason for r in self.rejections))

    def counts(self) -> dict[str, object]:
        return {
            "files": self.n_files, "written": self.n_written, "rejected": self.n_rejected,
            "not_dicom": self.n_not_dicom, "skipped_dicomdir": self.n_skipped,
            "patients": len(self.patients), "studies": len(self.studies), "series": len(self.series),
            "quarantined": self.quarantined, "reasons": self.reasons,
        }


def check_dirs(in_dir: pathlib.Path, out_dir: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """Resolve both folders; refuse an output inside the input (or the reverse, or the same)."""
    src = pathlib.Path(in_dir).expanduser().resolve()
    dst = pathlib.Path(out_dir).expanduser().resolve()
    if not src.is_dir():
        raise ValueError("in_dir must be an existing folder")
    if dst == src or dst.is_relative_to(src):
        raise ValueError("out_dir must not be inside in_dir (de-identified files would mix with originals)")
    if src.is_relative_to(dst):
        raise ValueError("in_dir must not be inside out_dir")
    return src, dst


def _quarantine_store(workspace):
    if workspace is None:
        return None
    try:
        from storage.quarantine import QuarantineStore  # written by another engineer
    except ImportError:
        return None
    return QuarantineStore(workspace.root if isinstance(workspace, Workspace) else workspace)


def _known_reasons() -> frozenset[str]:
    try:
        from storage.dicom.guard import REASON_CODES
    except ImportError:
        return frozenset()
    return frozenset(REASON_CODES)


def _iter_files(root: pathlib.Path):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            yield pathlib.Path(dirpath) / name


GUARD_BATCH = 256


def _guarded(paths: list[pathlib.Path], digests: dict[pathlib.Path, str], limits) -> dict:
    """Run the untrusted-file guard (storage.dicom.guard) over ``paths``; {} when it is unavailable."""
    try:
        from storage.dicom.guard import GuardLimits, guard_files
    except ImportError:
        return {}
    out: dict = {}
    limits = limits if limits is not None else GuardLimits()
    for i in range(0, len(paths), GUARD_BATCH):
        batch = paths[i:i + GUARD_BATCH]
        out.update(guard_files(batch, limits=limits, sha256s={p: digests[p] for p in batch}))
    return out


def deidentify_folder(in_dir, out_dir, *, options: DeidOptions | None = None, keys: PseudonymKeys,
                      workspace=None, run_id: str | None = None, guard: bool = True,
                      limits=None) -> DeidReport:
    """De-identify every DICOM file below ``in_dir`` into ``out_dir`` (see module docstring).

    Parameters
    ----------
    in_dir, out_dir : path-like
        Source folder (never modified) and destination folder (created).
    options : DeidOptions, optional
    keys : PseudonymKeys
    workspace : path-like or Workspace, optional
        When given: rejections go to its quarantine and pseudonyms to its vault.
    run_id : str, optional
        Passed to the quarantine store (counts distinct runs that rejected a file).
    guard : bool
        Check every file with :func:`storage.dicom.guard.guard_files` first (truncated,
        malformed, decompression bombs, absurd sizes, undecodable pixels, duplicates) so
        damaged files are quarantined instead of being parsed by pydicom. Default True.
    limits : storage.dicom.guard.GuardLimits, optional
        Limits for the guard (its defaults when None).

    Returns
    -------
    DeidReport
    """
    options = options or DeidOptions()
    src, dst = check_dirs(in_dir, out_dir)
    report = DeidReport()
    store = _quarantine_store(workspace)
    known = _known_reasons()
    mappings: dict[str, dict[str, str]] = {"patient": {}, "study": {}, "series": {}}
    paths: list[pathlib.Path] = []
    for path in _iter_files(src):
        if path.name.startswith("."):
            continue
        report.n_files += 1
        if path.name.upper() == "DICOMDIR":
            report.n_skipped += 1
            continue
        paths.append(path)
    digests = {p: sha256_file(p) for p in paths}
    verdicts = _guarded(paths, digests, limits) if guard else {}
    for path in paths:
        digest = digests[path]
        verdict = verdicts.get(path)
        if verdict is not None:
            if verdict.reason == "not_dicom":
                report.n_not_dicom += 1
            else:
                _reject(report, store, known, run_id, verdict)
            continue
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            report.n_not_dicom += 1
            continue
        except Exception as exc:  # damaged file: record type only, never the message (may echo values)
            _reject(report, store, known, run_id, Rejection(
                sha256=digest, reason="malformed_structure", detail="pydicom could not parse the file",
                exception_type=type(exc).__name__, size=path.stat().st_size))
            continue
        try:
            out = deidentify_dataset(ds, options=options, keys=keys, sha256=digest)
        except DeidRejected as exc:
            exc.rejection.size = path.stat().st_size
            _reject(report, store, known, run_id, exc.rejection)
            continue
        identity = patient_identity(ds)
        study_uid = str(ds.get("StudyInstanceUID", "") or "")
        series_uid = str(ds.get("SeriesInstanceUID", "") or "")
        pk, sk, rk = keys.patient_key(identity), keys.study_key(study_uid), keys.series_key(series_uid)
        mappings["patient"][identity] = pk
        mappings["study"][study_uid] = sk
        mappings["series"][series_uid] = rk
        report.patients.add(pk)
        report.studies.add(sk)
        report.series.add(rk)
        sop = str(out.get("SOPInstanceUID", "") or "") or keys.new_uid(digest)
        target = dst / pk / sk / rk / f"{sop}.dcm"
        with atomic_path(target, suffix=".dcm") as tmp:
            out.save_as(tmp, enforce_file_format=True)
        report.n_written += 1
    if workspace is not None:
        from storage.vault import Vault
        vault = Vault(workspace, keys)
        for kind, table in mappings.items():
            if table:
                vault.record_many(kind, table.items())
    return report


def _reject(report: DeidReport, store, known: frozenset[str], run_id: str | None,
            rejection: Rejection) -> None:
    report.n_rejected += 1
    report.rejections.append(rejection)
    # the quarantine accepts only the guard's reason codes; others stay in the report only
    if store is not None and rejection.reason in known:
        store.add(rejection, run_id=run_id)
        report.quarantined += 1
