"""Read each file once: digest, guard, header scan and the full parse all come from the same bytes.

The historical path read a file four times (scan hashed it, then parsed its header; the
guard hashed it again and walked it; the converter parsed it in full). Here a file of
at most ``in_memory_bytes`` is read into memory once and

1. hashed (SHA-256, the key of quarantine records and of the per-unit cache);
2. checked by the guard's in-process inspection on those bytes
   (:func:`storage.dicom.guard.inspect_file` with ``data=``): damaged or hostile files are
   rejected *before* pydicom sees them;
3. parsed by pydicom once, in full (pixel data included, from memory), classified, and
   handed to grouping and conversion as a :class:`~storage.dicom.model.FileEntry` with
   ``full=True`` (the converter does not read the file again).

Larger files take the streaming path (hash while reading, guard from the open file,
header-only parse; the converter reads the pixels later), so memory stays bounded by
``in_memory_bytes`` per file plus what one unit (see :mod:`storage.collect`) holds.

Reason codes are the scan's and the guard's (``not_dicom``, ``unreadable_header``,
``unreadable_file``, ``dicomdir`` and :data:`storage.dicom.guard.REASON_CODES`).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import pathlib
from dataclasses import dataclass

from storage.dicom.bugs import file_handle, raise_if_bug
from storage.dicom.guard import FileInspection, GuardLimits, finish_inspections, inspect_file
from storage.dicom.guard.common import _silenced
from storage.dicom.model import FileEntry, Rejection
from storage.dicom.scan import _MEDIA_DIRECTORY, classify, file_identity, read_header, sha256_file

__all__ = ["ReadResult", "read_once", "read_files", "IN_MEMORY_BYTES"]

#: Files up to this size are read into memory once when no guard limits say otherwise.
IN_MEMORY_BYTES = 64 << 20


@dataclass
class ReadResult:
    """One file after its single read: an entry to convert, or a rejection."""

    entry: FileEntry | None
    rejection: Rejection | None
    inspection: FileInspection | None = None


def _is_probably_dicom(head: bytes) -> bool:
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    return head[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x08", b"\x00\x02")


def _parse(data: bytes, top=None):
    """Full parse from memory (:func:`storage.dicom.rawread.dataset_from_bytes`, else ``pydicom.dcmread``).

    ``top``: the guard's table of the top-level element headers (``FileInspection.top_level``).
    Preamble-less data sets are read as :func:`storage.dicom.scan.read_header` reads them.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    from storage.dicom.rawread import dataset_from_bytes

    ds = dataset_from_bytes(data, top=top)
    if ds is not None:
        return ds
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if "SOPClassUID" not in ds and not ("Rows" in ds and "Columns" in ds):
            raise
        return ds


def read_once(path: str | os.PathLike[str], *, limits: GuardLimits | None,
              known: tuple[str, tuple[int, int, int, int, int]] | None = None) -> ReadResult:
    """Read, hash, guard and parse one file (see the module docstring); never raises for a bad file.

    Parameters
    ----------
    path : path-like
        Opened read-only.
    limits : GuardLimits or None
        The guard's limits; ``None`` skips the guard (trusted input).
    known : (str, tuple), optional
        ``(sha256, identity)`` of the file as the source fingerprint hashed it
        (:func:`storage.dicom.units.partition`'s ``vouched``): when the open file, after it has been
        read, still has that identity (:func:`storage.dicom.scan.file_identity`) and the bytes read are
        all of it, the digest is taken instead of hashing the bytes again; otherwise they are hashed.

    Raises
    ------
    IngestBugError
        When medflow's own code fails on the file (not a data defect).
    """
    p = pathlib.Path(path)
    cap = limits.in_memory_bytes if limits is not None else IN_MEMORY_BYTES
    try:
        size = p.stat().st_size
        if size > cap:
            return _read_streaming(p, size, limits)
        with open(p, "rb") as fh:
            data = fh.read()
            after = os.fstat(fh.fileno()) if known is not None else None
    except OSError as exc:
        return ReadResult(None, Rejection("", "unreadable_file", "file could not be read", type(exc).__name__))
    if after is not None and after.st_size == len(data) and file_identity(after) == known[1]:
        digest = known[0]  # the bytes the fingerprint hashed (the file has not changed since)
    else:
        digest = hashlib.sha256(data).hexdigest()
    size = len(data)
    insp = None
    if limits is not None:
        insp = inspect_file(p, limits=limits, sha256=digest, data=data)
        if insp.rejection is not None:
            return ReadResult(None, insp.rejection, insp)
    if not _is_probably_dicom(data[:132]):
        return ReadResult(None, Rejection(digest, "not_dicom", "no DICM preamble and no plausible DICOM element",
                                          size=size))
    top = None
    if insp is not None:
        top, insp.top_level = insp.top_level, None  # (used once: not kept with the inspection)
    ds, rejection = _parsed(functools.partial(_parse, data, top), digest, size)
    del data, top  # the dataset holds what it needs
    if rejection is not None:
        return ReadResult(None, rejection)
    return _entry(p, ds, digest, size, insp, full=True, sequences_checked=insp is not None)


def _parsed(parse, digest: str, size: int):
    """``parse()``'s dataset, or the rejection its failure means (a medflow bug raises :class:`IngestBugError`)."""
    try:
        with _silenced():
            return parse(), None
    except RecursionError as exc:
        return None, Rejection(digest, "unreadable_header", "header nested too deeply", type(exc).__name__,
                               size=size)
    except Exception as exc:  # noqa: BLE001 - any parser failure is a rejection; a medflow bug is not
        raise_if_bug(exc, stage="scan", input_key=file_handle(digest))
        reason = "not_dicom" if type(exc).__name__ == "InvalidDicomError" else "unreadable_header"
        return None, Rejection(digest, reason, "pydicom could not read the header", type(exc).__name__, size=size)


def _entry(p: pathlib.Path, ds, digest: str, size: int, insp, *, full: bool,
           sequences_checked: bool = False) -> ReadResult:
    """The parsed file as an entry, after checking that every top-level value decodes under its VR.

    ``sequences_checked``: the guard walked every sequence's structure (they are not parsed again here).
    """
    from storage.dicom.attrs import attr
    from storage.dicom.pixels import ensure_transfer_syntax
    from storage.dicom.rawread import unconvertible_elements

    try:
        kind = classify(ds)
        is_dir = str(attr(ds, "SOPClassUID", "")) == _MEDIA_DIRECTORY or 0x00041220 in ds._dict  # DirectoryRecordSeq.
        with _silenced():  # pydicom's value warnings can quote values (and cost time to format)
            # every top-level value must decode under its VR: a wrong VR/length is a data defect
            unconvertible_elements(ds, sequences_checked=sequences_checked)
        if full:
            ensure_transfer_syntax(ds)
    except Exception as exc:  # noqa: BLE001
        raise_if_bug(exc, stage="scan", input_key=file_handle(digest))
        return ReadResult(None, Rejection(digest, "unreadable_header", "header elements could not be decoded",
                                          type(exc).__name__, size=size))
    if is_dir:
        return ReadResult(None, Rejection(digest, "dicomdir", "DICOMDIR index file (no image)", size=size))
    return ReadResult(FileEntry(path=p, sha256=digest, dataset=ds, object_kind=kind, full=full), None, insp)


def _read_streaming(p: pathlib.Path, size: int, limits: GuardLimits | None) -> ReadResult:
    """Large files: hash while streaming, guard from the open file, header-only parse."""
    try:
        digest = sha256_file(p)
    except OSError as exc:
        return ReadResult(None, Rejection("", "unreadable_file", "file could not be read", type(exc).__name__))
    insp = None
    if limits is not None:
        insp = inspect_file(p, limits=limits, sha256=digest)
        if insp.rejection is not None:
            return ReadResult(None, insp.rejection, insp)
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        return ReadResult(None, Rejection(digest, "unreadable_file", "file could not be read", type(exc).__name__))
    if not _is_probably_dicom(head):
        return ReadResult(None, Rejection(digest, "not_dicom", "no DICM preamble and no plausible DICOM element",
                                          size=size))
    ds, rejection = _parsed(lambda: read_header(p), digest, size)
    if rejection is not None:
        return ReadResult(None, rejection)
    return _entry(p, ds, digest, size, insp, full=False)


def read_files(paths: list[pathlib.Path], *, limits: GuardLimits | None, guard_workers: int = 2,
               known: dict[str, tuple[str, tuple[int, int, int, int, int]]] | None = None
               ) -> tuple[list[FileEntry], list[Rejection]]:
    """:func:`read_once` on every file (``known``: its ``known`` argument by ``str(path)``), then the guard's
    across-file checks.

    Returns the entries to group and convert (in ``paths`` order) and the rejections.
    Compressed files that passed the in-process checks are sample-decoded in bounded
    workers and duplicate SOP Instance UIDs are resolved (:func:`finish_inspections`).
    """
    with _silenced():  # (once for the files: the reader's own blocks inside then cost nothing)
        get = (known or {}).get
        results = [read_once(p, limits=limits, known=get(str(p))) for p in paths]
    rejections = [r.rejection for r in results if r.rejection is not None]
    if limits is not None:
        passed = [r for r in results if r.entry is not None and r.inspection is not None]
        finish_inspections([r.inspection for r in passed], limits=limits, workers=guard_workers)
        for r in passed:
            if r.inspection.rejection is not None:
                rejections.append(r.inspection.rejection)
                r.entry = None
    return [r.entry for r in results if r.entry is not None], rejections
