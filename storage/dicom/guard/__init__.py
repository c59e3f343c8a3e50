"""Safe reading of untrusted DICOM files: reject damaged or hostile files before pixels are touched.

The collection task runs ``scan -> guard -> group -> convert -> QC``. This module is
the guard: every input file either passes or becomes a
:class:`~storage.dicom.model.Rejection` with a stable reason code. Nothing here
raises for a bad file, nothing writes to or moves an input file (files are opened
``"rb"`` only).

What is checked where
---------------------
In process (cheap, bounded by the file size; one read of the file, hashed on the way,
or only the element headers when the scan's digest is passed in ``sha256s``):

1. size (zero bytes, larger than ``max_file_bytes``);
2. the 128-byte preamble + ``DICM`` magic (PS3.10 7.1); a file without it is
   accepted only when it parses as a DICOM data set whose first element group is
   at most 0008 and that contains group 0008 elements;
3. the File Meta Information (group 0002, Explicit VR Little Endian, PS3.10 7.1)
   and its Transfer Syntax UID;
4. for Deflated Explicit VR Little Endian (PS3.5 A.5): a *streaming* inflate with a
   hard cap ``max_inflated_bytes`` (a 0.6 MB deflated file used 1.24 GB in pydicom);
5. a structural walk of every data element with an explicit stack (no recursion):
   each element's declared length must fit inside its enclosing item/sequence and
   inside the file (PS3.5 7.1, 7.5), undefined-length sequences, items and
   encapsulated pixel data (PS3.5 A.4) must be closed by their delimiters, and the
   sequence nesting depth must not exceed ``max_sequence_depth``. pydicom 3.0.2 reads
   several of these damaged files "without error and without pixels" (file cut at 5 %,
   big-endian header over a little-endian body, a length past the end of file, a
   pixel-data length near 4 GB); the walk catches all of them. When the walk fails
   under the declared transfer syntax but succeeds under another one, the file is
   rejected as ``transfer_syntax_mismatch``;
6. the SOP Common and Image Pixel module values (PS3.3 C.12.1, C.7.6.3) decoded
   straight from the offsets the walk recorded (no pydicom parse in process, so no
   recursion and no value ever quoted in a warning):
   required attributes present, dimensions in sane ranges, expected byte count
   ``Rows*Columns*SamplesPerPixel*NumberOfFrames*BitsAllocated/8`` (1-bit packed,
   YBR_FULL_422 sub-sampled) at most ``max_pixel_bytes`` and, for native
   (uncompressed) syntaxes, equal to the Pixel Data length (an even-padding byte and
   less than one frame of trailing padding are tolerated); for encapsulated syntaxes
   at least one fragment per frame (PS3.5 A.4) and a decoder available.

In a bounded worker process (only for encapsulated, i.e. compressed, pixel data):
a sample of frames (first and last, ``decode_sample_frames``) is decoded with
pydicom in a process whose address space is capped with
``resource.setrlimit(RLIMIT_AS, baseline + worker_memory_bytes)`` and that is killed
after ``decode_timeout_s``. A hostile file can cost that worker, never the run. Native
(uncompressed) files never go to the worker: their length check is exact, so hundreds
of valid uncompressed slices cost one read + one header parse each.

Across files (:func:`guard_files` only): files sharing a SOP Instance UID are
compared by their pixel-data digest: identical duplicates keep the first (by path)
and reject the others as ``duplicate_instance``; differing ones are all rejected as
``duplicate_instance_conflict`` (nobody can tell which one is right).

PHI
---
A :class:`Rejection` carries only the file's SHA-256, a reason code, a detail
sentence written here from numbers this module checked (byte counts, tags, rows,
frames) and the *type* name of an exception. Exception messages are never copied (a
pydicom message can quote an element value), no element value, name, ID, date or
UID ever enters a rejection, and pydicom warnings raised while reading are
swallowed (they can quote values too).

Worker processes use the ``forkserver`` start method (safe inside a threaded
Prefect task). As with any ``multiprocessing`` use, a *script* calling
:func:`guard_files` must guard its entry point with ``if __name__ == "__main__":``.

Reason codes
------------
See :data:`REASON_CODES` (code -> description); codes are stable and are what the
quarantine store, the catalog and the report show.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from storage.dicom.bugs import IngestBugError, file_handle
from storage.dicom.guard.attributes import _check_attributes, _check_encapsulated, _expected_bytes  # noqa: F401
from storage.dicom.guard.common import _READ_BLOCK, REASON_CODES, GuardLimits, _Reject, _silenced  # noqa: F401
from storage.dicom.guard.inspect import FileInspection, _inspect_stream, inspect_file  # noqa: F401
from storage.dicom.guard.structure import _read_meta, _Structure, _walk, _walk_checked  # noqa: F401
from storage.dicom.guard.workers import _decode_sample, _decode_tasks, _mp_context, _run_bounded, _Worker  # noqa: F401
from storage.dicom.model import Rejection

__all__ = ["REASON_CODES", "GuardLimits", "guard_file", "guard_files", "inspect_file", "FileInspection",
           "finish_inspections"]



# --------------------------------------------------------------------------- public API


def guard_file(path: str | os.PathLike[str], *, limits: GuardLimits) -> Rejection | None:
    """Check one untrusted file; ``None`` when it may be converted, else its :class:`Rejection`.

    Compressed pixel data is sample-decoded in a bounded worker started for this call
    (about 0.1-0.5 s); for many files use :func:`guard_files`, which shares workers and
    also detects duplicate SOP Instance UIDs across files. Never raises for a bad file.
    """
    return guard_files([path], limits=limits, workers=1)[path]


def guard_files(paths: Iterable[str | os.PathLike[str]], *, limits: GuardLimits, workers: int = 2,
                sha256s: Mapping[Any, str] | None = None) -> dict[Any, Rejection | None]:
    """Check a batch of untrusted files.

    Parameters
    ----------
    paths : iterable of path-like
        Files to check (opened read-only; never modified).
    limits : GuardLimits
        Size, depth, time and memory limits.
    workers : int
        Bounded worker processes for sample-decoding compressed pixel data; started
        only when a compressed file passes the in-process checks.

    Returns
    -------
    dict
        Each input path (as given) -> ``None`` (may be converted) or a
        :class:`Rejection` with a code from :data:`REASON_CODES`.
    """
    if not isinstance(limits, GuardLimits):
        raise TypeError(f"limits must be a GuardLimits, got {type(limits).__name__}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    keys = list(dict.fromkeys(paths))  # a path given twice is one file, not a duplicate instance
    known = sha256s or {}
    inspections = [inspect_file(p, limits=limits, sha256=known.get(p) or None) for p in keys]
    finish_inspections(inspections, limits=limits, workers=workers)
    return {key: insp.rejection for key, insp in zip(keys, inspections, strict=True)}


def finish_inspections(inspections: list[FileInspection], *, limits: GuardLimits, workers: int = 2) -> None:
    """The across-file part of the guard, on in-process inspections (:func:`inspect_file`).

    Sample-decodes compressed files in bounded workers and marks duplicate SOP Instance
    UIDs; sets ``rejection`` on the inspections concerned (in place).

    Raises
    ------
    IngestBugError
        When the decode workers cannot start or medflow's decode code fails (not the data).
    """
    outcomes = _run_bounded(_decode_tasks(inspections, limits), limits=limits, workers=workers)
    for i, res in outcomes.items():
        if res is not None and res.get("bug"):
            raise IngestBugError("guard decode", file_handle(inspections[i].sha256), str(res["exception_type"]),
                                 str(res.get("location", "?")))
    for i, res in outcomes.items():
        if res is not None:
            insp = inspections[i]
            insp.rejection = Rejection(sha256=insp.sha256 or "", reason=res["reason"], detail=res["detail"],
                                       exception_type=res.get("exception_type"), size=insp.size)
    _mark_duplicates(inspections)


def _pixel_digest(insp: FileInspection) -> str:
    """SHA-256 of the stored pixel data bytes (the whole file's hash for deflated files)."""
    if insp.pixel_span is None:
        return "file:" + (insp.sha256 or "")
    offset, length = insp.pixel_span
    h = hashlib.sha256()
    with open(insp.path, "rb") as fh:
        fh.seek(offset)
        remaining = length
        while remaining > 0:
            block = fh.read(min(_READ_BLOCK, remaining))
            if not block:
                break
            h.update(block)
            remaining -= len(block)
    return h.hexdigest()


def _mark_duplicates(inspections: list[FileInspection]) -> None:
    by_uid: dict[str, list[FileInspection]] = defaultdict(list)
    for insp in inspections:
        if insp.rejection is None and insp.sop_instance_uid:
            by_uid[insp.sop_instance_uid].append(insp)
    for group in by_uid.values():
        if len(group) < 2:
            continue
        group.sort(key=lambda x: str(x.path))
        try:
            digests = {x.sha256 if len({y.sha256 for y in group}) == 1 else _pixel_digest(x) for x in group}
        except OSError:
            digests = {"?", "??"}  # cannot compare: treat as a conflict
        if len(digests) == 1:
            for dup in group[1:]:
                dup.rejection = Rejection(sha256=dup.sha256 or "", reason="duplicate_instance",
                                          detail=f"an identical copy of an instance present {len(group)} times "
                                                 f"(same SOP Instance UID and pixel data); the first copy was kept",
                                          size=dup.size)
        else:
            for dup in group:
                dup.rejection = Rejection(sha256=dup.sha256 or "", reason="duplicate_instance_conflict",
                                          detail=f"{len(group)} files share one SOP Instance UID but hold "
                                                 f"{len(digests)} different pixel data", size=dup.size)
