"""Pull a PACS query into the workspace: expected instances vs arrivals, retries, a complete staging folder.

Layout (inside the workspace, private 0700, names pseudonymous)::

    WORKSPACE/incoming/held/<study_key>/<series_key>/<new_uid(sop)>.dcm   every instance received, once
    WORKSPACE/incoming/<pull_key>/<study_key>/<series_key>/...             hard links: the COMPLETE studies
                                                                           of this pull (the collection source)

``pull_key`` is a keyed hash of the resolved query, so the same query maps to the same folder
and nothing of the query shows in a path. An instance is held once per SOP Instance UID: one
that arrives again with the same content digest is skipped; with another digest it replaces the
held copy (the PACS's current version). A study enters the staging folder only when every
instance the query listed has arrived (and no series reports more instances than were listed);
otherwise it is reported incomplete, with counts and pseudonymised UIDs (``keys.new_uid``, the
UIDs of the de-identified copy) in the catalog table ``pacs_transfer`` -- never in logs.

Retries: missing instances are requested again, one by one, after ``backoff_s * 2**attempt``;
transient IO failures (:class:`~storage.pacs.model.TransientPacsError`) are retried the same way;
anything else (refused association, bad credentials, unknown move destination) stops the pull.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import pathlib
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import pydicom

from storage.pacs.model import ExpectedSeries, PacsError, PullPlan, TransientPacsError
from storage.pacs.uri import PacsSource, parse_source
from storage.pseudonym import PseudonymKeys

INCOMING = "incoming"
HELD = "held"


def pull_key(source: PacsSource, keys: PseudonymKeys) -> str:
    """Keyed digest of the resolved query (the staging folder's name): no query text in any path."""
    mac = hmac.new(keys.derive_key("pacs-pull"), source.canonical().encode(), hashlib.sha256)
    return "q" + mac.hexdigest()[:24]


def _private_dir(path: pathlib.Path) -> pathlib.Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


class Holding:
    """The received-instance store ``WORKSPACE/incoming/held`` (thread-safe ``receive``)."""

    def __init__(self, workspace: pathlib.Path, keys: PseudonymKeys):
        self.incoming = _private_dir(pathlib.Path(workspace) / INCOMING)
        self.root = _private_dir(self.incoming / HELD)
        self.keys = keys
        self._lock = threading.Lock()
        self.stored = 0
        self.skipped = 0
        self.replaced = 0
        self.unreadable = 0

    def path(self, study_uid: str, series_uid: str, sop_uid: str) -> pathlib.Path:
        k = self.keys
        return self.root / k.study_key(study_uid) / k.series_key(series_uid) / f"{k.new_uid(sop_uid)}.dcm"

    def holds(self, study_uid: str, series_uid: str, sop_uid: str) -> bool:
        return self.path(study_uid, series_uid, sop_uid).is_file()

    def receive(self, data: bytes) -> None:
        """Keep one received instance (encoded file bytes): skip an identical copy, replace a changed one."""
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True,
                                 specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
            study, series, sop = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        except Exception:  # noqa: BLE001 - a broken object cannot be placed; it stays missing and is retried
            with self._lock:
                self.unreadable += 1
            return
        target = self.path(study, series, sop)
        digest = hashlib.sha256(data).digest()
        with self._lock:
            if target.is_file():
                if hashlib.sha256(target.read_bytes()).digest() == digest:
                    self.skipped += 1
                    return
                self.replaced += 1
            else:
                self.stored += 1
            _private_dir(target.parent.parent)
            _private_dir(target.parent)
            tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)


@dataclass
class StudyStatus:
    """Completeness of one study (pseudonymous keys and UIDs only)."""

    study_key: str
    complete: bool
    n_series: int
    n_expected: int
    n_held: int
    n_missing: int
    missing: list[dict[str, str]] = field(default_factory=list)  # [{"series_key", "sop_uid"(pseudonymised)}]
    unlisted: int = 0  # instances the series-level count reports beyond those listed


@dataclass
class PullReport:
    """What one pull did; PHI-free (safe to log, return from a task, store in the catalog)."""

    pull_key: str
    protocol: str
    staging: str  # workspace-relative folder of the complete studies
    studies: list[StudyStatus]
    stored: int
    skipped: int
    replaced: int
    attempts: int
    transient_errors: int
    seconds: float

    @property
    def n_complete(self) -> int:
        return sum(s.complete for s in self.studies)

    @property
    def n_incomplete(self) -> int:
        return len(self.studies) - self.n_complete

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["n_complete"], d["n_incomplete"] = self.n_complete, self.n_incomplete
        return d


def _missing(plan: PullPlan, holding: Holding) -> dict[str, list[tuple[ExpectedSeries, list[str]]]]:
    out: dict[str, list[tuple[ExpectedSeries, list[str]]]] = {}
    for study, series in plan.studies.items():
        for s in series:
            gone = [u for u in sorted(s.instances) if not holding.holds(study, s.series_uid, u)]
            if gone:
                out.setdefault(study, []).append((s, gone))
    return out


def _status(plan: PullPlan, holding: Holding, keys: PseudonymKeys) -> list[StudyStatus]:
    out = []
    for study, series in sorted(plan.studies.items(), key=lambda kv: keys.study_key(kv[0])):
        missing, held, unlisted = [], 0, 0
        for s in series:
            for u in sorted(s.instances):
                if holding.holds(study, s.series_uid, u):
                    held += 1
                else:
                    missing.append({"series_key": keys.series_key(s.series_uid), "sop_uid": keys.new_uid(u)})
            unlisted += max(0, (s.count or 0) - len(s.instances))
        expected = sum(s.n_expected for s in series)
        out.append(StudyStatus(study_key=keys.study_key(study), complete=not missing and not unlisted and expected > 0,
                               n_series=len(series), n_expected=expected, n_held=held,
                               n_missing=len(missing) + unlisted, missing=missing, unlisted=unlisted))
    return out


def _build_staging(workspace: pathlib.Path, key: str, plan: PullPlan, holding: Holding,
                   statuses: list[StudyStatus], keys: PseudonymKeys) -> pathlib.Path:
    """Hard-link the complete studies' expected instances into ``incoming/<key>`` (swapped in whole)."""
    final = holding.incoming / key
    stage = _private_dir(holding.incoming / f".{key}.staging-{uuid.uuid4().hex[:8]}")
    complete = {s.study_key for s in statuses if s.complete}
    try:
        for study, series in plan.studies.items():
            if keys.study_key(study) not in complete:
                continue
            for s in series:
                folder = _private_dir(stage / keys.study_key(study) / keys.series_key(s.series_uid))
                for u in s.instances:
                    src = holding.path(study, s.series_uid, u)
                    dst = folder / src.name
                    try:
                        os.link(src, dst)
                    except OSError:
                        shutil.copy2(src, dst)
        old = None
        if final.exists():
            old = holding.incoming / f".{key}.old-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
        os.replace(stage, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return final


def query(source: PacsSource, *, timeout_s: float) -> PullPlan:
    """The expected instances of every study the source's query selects (C-FIND or QIDO-RS)."""
    if source.protocol == "dimse":
        from storage.pacs import dimse

        return dimse.query(source, timeout_s=timeout_s)
    from storage.pacs import dicomweb

    return dicomweb.query(source, timeout_s=timeout_s)


def _retriever(source: PacsSource, holding: Holding, plan: PullPlan, *, timeout_s: float, scp_bind_address: str):
    if source.protocol == "dimse":
        from storage.pacs.dimse import DimseRetriever

        classes = [c for series in plan.studies.values() for s in series for c in s.instances.values()]
        return DimseRetriever(source, holding.receive, timeout_s=timeout_s, scp_bind_address=scp_bind_address,
                              sop_classes=classes)
    from storage.pacs.dicomweb import DicomwebRetriever

    return DicomwebRetriever(source, holding.receive, timeout_s=timeout_s)


def execute(source: PacsSource, plan: PullPlan, workspace: str | os.PathLike, *, keys: PseudonymKeys,
            retries: int = 3, backoff_s: float = 2.0, timeout_s: float = 60.0,
            scp_bind_address: str = "127.0.0.1", catalog_url: str | None = None) -> PullReport:
    """Retrieve what ``plan`` lists and is not yet held, retry what is missing, stage the complete studies.

    Parameters
    ----------
    source : PacsSource
        Where to retrieve from (as parsed by :func:`storage.pacs.uri.parse_source`).
    plan : PullPlan
        The expected instances (from :func:`query`).
    workspace : path
        The workspace; instances land in ``incoming/held``, complete studies in ``incoming/<pull_key>``.
    keys : PseudonymKeys
        Pseudonymises every study/series key and UID that is written or reported.
    retries : int
        Further attempts for missing instances and transient failures (0 = one attempt only).
    backoff_s : float
        Wait before retry ``i`` (0-based): ``backoff_s * 2**i`` seconds.
    timeout_s : float
        Network timeout of each DIMSE/HTTP exchange, seconds.
    scp_bind_address : str
        Address our C-STORE SCP listens on during a C-MOVE (DIMSE ``retrieve=move`` only).
    catalog_url : str, optional
        Catalog to record the per-study completeness in (default: the workspace's SQLite catalog).

    Returns
    -------
    PullReport
        PHI-free: counts, pseudonymous study keys and the staging folder (workspace-relative).
    """
    if retries < 0 or backoff_s < 0 or timeout_s <= 0:
        raise ValueError(f"retries={retries}, backoff_s={backoff_s}, timeout_s={timeout_s}: need retries >= 0, "
                         "backoff_s >= 0 and timeout_s > 0")
    ws = pathlib.Path(workspace).resolve()
    t0 = time.perf_counter()
    holding = Holding(ws, keys)
    attempts, transient = 0, 0
    with _retriever(source, holding, plan, timeout_s=timeout_s, scp_bind_address=scp_bind_address) as get:
        for attempt in range(retries + 1):
            todo = _missing(plan, holding)
            if not todo:
                break
            if attempt:
                time.sleep(backoff_s * 2 ** (attempt - 1))
            attempts += 1
            for items in todo.values():
                for s, gone in items:
                    try:
                        if attempt == 0 and len(gone) == len(s.instances):
                            get.series(s)  # nothing of it held yet: one series-level retrieval
                        else:
                            get.instances(s, gone)
                    except TransientPacsError:
                        transient += 1
    statuses = _status(plan, holding, keys)
    key = pull_key(source, keys)
    staging = _build_staging(ws, key, plan, holding, statuses, keys)
    report = PullReport(pull_key=key, protocol=source.protocol, staging=staging.relative_to(ws).as_posix(),
                        studies=statuses, stored=holding.stored, skipped=holding.skipped, replaced=holding.replaced,
                        attempts=attempts, transient_errors=transient, seconds=round(time.perf_counter() - t0, 3))
    from storage.pacs.catalog import record_pull

    record_pull(ws, report, url=catalog_url)
    return report


def pull(uri: str, workspace: str | os.PathLike, *, keys: PseudonymKeys, retries: int = 3, backoff_s: float = 2.0,
         timeout_s: float = 60.0, scp_bind_address: str = "127.0.0.1", catalog_url: str | None = None) -> PullReport:
    """Parse ``uri``, query the PACS, retrieve and stage (see :func:`execute`). Queries are retried on transient IO."""
    source = parse_source(uri)
    for attempt in range(retries + 1):
        try:
            plan = query(source, timeout_s=timeout_s)
            break
        except TransientPacsError:
            if attempt == retries:
                raise
            time.sleep(backoff_s * 2 ** attempt)
    return execute(source, plan, workspace, keys=keys, retries=retries, backoff_s=backoff_s, timeout_s=timeout_s,
                   scp_bind_address=scp_bind_address, catalog_url=catalog_url)


__all__ = ["Holding", "PacsError", "PullReport", "StudyStatus", "TransientPacsError", "execute", "pull",
           "pull_key", "query"]
