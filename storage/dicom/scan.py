"""Find DICOM files under a folder, read their headers and classify them.

Files are only ever opened read-only (``"rb"``). Headers are read with
``stop_before_pixels=True`` so pixel data is never loaded here. A file whose header
cannot be read becomes a :class:`~storage.dicom.model.Rejection` (never an exception).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from storage.dicom.bugs import file_handle, raise_if_bug
from storage.dicom.model import FileEntry, ObjectKind, Rejection
from storage.digest_memo import RACY_SECONDS, is_racy

if TYPE_CHECKING:
    from storage.digest_memo import DigestMemo

__all__ = ["UNREADABLE", "PatientToken", "classify", "file_digest", "file_identity", "forget_digests", "is_probably_dicom", "iter_files", "known_digest", "read_header",
           "remember_digest", "scan", "sha256_file", "take_digest"]

# SOP Class UIDs (PS3.4 Annex B.5) of objects that are not images to stack.
_RTSTRUCT = {"1.2.840.10008.5.1.4.1.1.481.3"}
_RTDOSE = {"1.2.840.10008.5.1.4.1.1.481.2"}
_RTPLAN = {
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT Plan
    "1.2.840.10008.5.1.4.1.1.481.8",  # RT Ion Plan
    "1.2.840.10008.5.1.4.1.1.481.4",  # RT Beams Treatment Record
    "1.2.840.10008.5.1.4.1.1.481.6",  # RT Brachy Treatment Record
    "1.2.840.10008.5.1.4.1.1.481.7",  # RT Treatment Summary Record
    "1.2.840.10008.5.1.4.1.1.481.9",  # RT Ion Beams Treatment Record
}
_SEG = {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"}  # Segmentation, Label Map Segmentation
_SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."  # SR family incl. Key Object Selection (88.59)
_PR_PREFIX = "1.2.840.10008.5.1.4.1.1.11."  # presentation states
_MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR
_NON_IMAGE_STORAGE = {
    "1.2.840.10008.5.1.4.1.1.66",  # Raw Data
    "1.2.840.10008.5.1.4.1.1.66.1",  # Spatial Registration
    "1.2.840.10008.5.1.4.1.1.66.2",  # Spatial Fiducials
    "1.2.840.10008.5.1.4.1.1.66.3",  # Deformable Spatial Registration
    "1.2.840.10008.5.1.4.1.1.66.5",  # Surface Segmentation
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.104.2",  # Encapsulated CDA
    "1.2.840.10008.5.1.4.1.1.104.3",  # Encapsulated STL
}
_WAVEFORM_PREFIX = "1.2.840.10008.5.1.4.1.1.9."

_CHUNK = 1 << 20


def iter_files(root: str | os.PathLike[str]) -> Iterator[pathlib.Path]:
    """Every regular file below ``root`` at any depth, with any name, in a stable order.

    A folder's files (sorted by name) come before its subfolders (sorted, each walked the same
    way), as :func:`os.walk` orders them top-down. Symbolic links to directories are not followed
    (no cycles); symbolic links to files and hidden files are included. Entries are typed from
    :func:`os.scandir` (no ``stat`` per file where the file system reports the type).

    Raises
    ------
    NotADirectoryError
        If ``root`` is not a directory.
    """
    root_p = pathlib.Path(root)
    if not root_p.is_dir():
        raise NotADirectoryError(f"root must be a directory, got {str(root)!r}")
    yield from _walk_files(root_p)


def _walk_files(folder: pathlib.Path) -> Iterator[pathlib.Path]:
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:  # pragma: no cover - unreadable folder (os.walk skips it too)
        return
    subfolders = []
    for entry in entries:
        try:
            if entry.is_dir():
                if not entry.is_symlink():
                    subfolders.append(entry.name)
            elif entry.is_file():
                yield folder / entry.name
        except OSError:  # pragma: no cover - unreadable entry
            continue
    for name in subfolders:
        yield from _walk_files(folder / name)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of the file's bytes (streamed, read-only)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# (path, device, inode, size, mtime ns, ctime ns) -> (hex SHA-256, what ``note`` said of the file's first bytes),
# for this process only: the files of the source fingerprinted last (forget_digests() at each fingerprint),
# each taken out by the partition that uses it
_DIGESTS: dict[tuple[str, int, int, int, int, int], tuple[str, Any]] = {}
_DIGESTS_MAX = 1 << 18
#: A file changed less than this long before it was hashed is never remembered ("racy git": file
#: times have the kernel's coarse clock, so a same-size rewrite within one tick keeps them).
_RACY_SECONDS = RACY_SECONDS
#: Bytes of a file's head handed to ``note`` (:func:`file_digest`).
NOTE_BYTES = 64 << 10
_WHOLE_FILE_BYTES = 64 << 20


def _stat_key(path: str | os.PathLike[str], st: os.stat_result) -> tuple[str, int, int, int, int, int]:
    return (os.fspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """``(device, inode, size, mtime_ns, ctime_ns)``: what a remembered digest is remembered under (with the path).

    Writing to a file changes its modification and status-change times (and a file changed too recently to
    tell is never remembered: :func:`remember_digest`), so an equal identity means the bytes hashed.
    """
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_digest(path: str | os.PathLike[str], *, note: Callable[[bytes], Any] | None = None) -> str:
    """:func:`sha256_file`, remembered for this process while the file's identity, size and times stay.

    A file whose modification or status-change time is within :data:`_RACY_SECONDS` of the
    moment it is hashed is hashed again every time (it may still be being written).

    Parameters
    ----------
    note : callable, optional
        Called with the file's first :data:`NOTE_BYTES` bytes (from the same read); its answer is
        remembered with the digest (:func:`take_digest`), e.g. the PatientID for the partition.
    """
    st = os.stat(path)
    hit = _DIGESTS.get(_stat_key(path, st))
    if hit is not None:
        return hit[0]
    st, digest, noted = _read_digest(path, note, st)
    remember_digest(path, st, digest, noted)
    return digest


def _read_digest(path: str | os.PathLike[str], note: Callable[[bytes], Any] | None,
                 st: os.stat_result | None = None) -> tuple[os.stat_result, str, Any]:
    """``(stat taken before the read, SHA-256, note of the first bytes)`` of one file, read once."""
    if st is None:
        st = os.stat(path)
    if st.st_size <= _WHOLE_FILE_BYTES:
        with open(path, "rb") as fh:
            data = fh.read()
        digest = hashlib.sha256(data).hexdigest()
        head = data[:NOTE_BYTES] if note is not None else b""
        del data
    else:
        digest = sha256_file(path)
        head = b""
        if note is not None:
            with open(path, "rb") as fh:
                head = fh.read(NOTE_BYTES)
    return st, digest, note(head) if note is not None else None


#: :func:`file_digests`' entry for a file that could not be stat'ed or read (never a SHA-256: not 64 hex digits)
UNREADABLE = "unreadable"


def _read_digests(paths: list[str], note: Callable[[bytes], Any] | None
                  ) -> list[tuple[os.stat_result | None, str, Any]]:
    """:func:`_read_digest` of each path (one worker's share of :func:`file_digests`).

    A file that cannot be stat'ed or read gives ``(None, UNREADABLE, None)``: one such file must not
    stop the others' digests (nor, through the source fingerprint, the whole run).
    """
    out: list[tuple[os.stat_result | None, str, Any]] = []
    for p in paths:
        try:
            out.append(_read_digest(p, note))
        except OSError:
            out.append((None, UNREADABLE, None))
    return out


#: Below this many files to hash, :func:`file_digests` does not start worker processes.
_PARALLEL_FILES = 512


class PatientToken(str):
    """A file's patient as the workspace's digest memory keeps it (a keyed token, never the PatientID).

    Handed to the partition in place of the peeked PatientID for a file that was not read
    (:func:`file_digests` with a ``memo``); the partition groups by tokens then (see
    :func:`storage.dicom.units.partition`).
    """

    __slots__ = ()


def file_digests(paths: list[pathlib.Path], *, note: Callable[[bytes], Any] | None = None,
                 workers: int = 1, memo: DigestMemo | None = None,
                 token: Callable[[Any], str | None] | None = None) -> list[str]:
    """:func:`file_digest` of every path, in order; the files not remembered yet hashed by ``workers`` processes.

    The workers come from the collection's worker server (:func:`storage.workers.worker_context`, its modules
    loaded) and each reads and hashes an interleaved share of the files; what they report (stat, digest,
    ``note``'s answer) is remembered here as :func:`file_digest` remembers it. With ``workers`` <= 1, fewer
    than :data:`_PARALLEL_FILES` files, or workers that cannot start, the files are hashed in this process.

    A file that cannot be stat'ed or read (permissions, an I/O error, removed since it was listed) is
    :data:`UNREADABLE` in the answer, never remembered or recorded, and the other files are hashed as usual:
    the collection quarantines such a file (``unreadable_file``) and converts the rest. Its path is never
    part of an exception (a source's file names can hold patient names).

    ``memo``: the workspace's :class:`~storage.digest_memo.DigestMemo`. A file it vouches for (same device,
    inode, size and times as when it was hashed) is not read at all: it is remembered here with the
    :class:`PatientToken` the memo kept for it, or with nothing (the partition then reads its head). Every
    file hashed here is recorded in it, with ``token(noted)`` (e.g. a keyed token of the peeked PatientID).
    """
    out: list[str | None] = [None] * len(paths)
    todo: list[int] = []
    stats: list[os.stat_result] = []
    for i, p in enumerate(paths):
        try:
            st = os.stat(p)
        except OSError:  # removed since it was listed, or a link to nothing
            out[i] = UNREADABLE
            continue
        hit = _DIGESTS.get(_stat_key(p, st))
        if hit is not None:
            out[i] = hit[0]
        else:
            todo.append(i)
            stats.append(st)
    if memo is not None and todo:
        left = []
        for i, st, hit in zip(todo, stats, memo.lookup(stats), strict=True):
            if hit is None:
                left.append(i)
            else:
                digest, patient = hit
                remember_digest(paths[i], st, digest, None if patient is None else PatientToken(patient))
                out[i] = digest
        todo = left
    new: list[tuple[os.stat_result, str, Any]] = []  # (stat taken before the read, digest, note) of each file hashed
    hashed: list[tuple[int, tuple[os.stat_result | None, str, Any]]] = []  # (index, what _read_digests answered)
    if workers > 1 and len(todo) >= _PARALLEL_FILES:
        import concurrent.futures

        from storage.workers import worker_context

        shares = [todo[k::workers * 4] for k in range(workers * 4)]  # interleaved: sizes and folders mixed
        try:
            with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=worker_context()) as pool:
                answers = list(pool.map(_read_digests, [[os.fspath(paths[i]) for i in share] for share in shares],
                                        [note] * len(shares)))
        except Exception:  # noqa: BLE001 - workers that fail to start (or a failure in them): hashed here, where
            answers = None  # an error of medflow's own surfaces in this process
        if answers is not None:
            hashed = list(zip([i for share in shares for i in share], [r for answer in answers for r in answer],
                              strict=True))
            todo = []
    hashed += zip(todo, _read_digests([os.fspath(paths[i]) for i in todo], note), strict=True)
    for i, (st, digest, noted) in hashed:
        out[i] = digest
        if st is not None:  # (an unreadable file: neither remembered nor recorded)
            remember_digest(paths[i], st, digest, noted)
            new.append((st, digest, noted))
    if memo is not None and new:
        memo.record((st, digest, token(noted) if token is not None else None) for st, digest, noted in new)
    return out  # type: ignore[return-value]


def remember_digest(path: str | os.PathLike[str], st: os.stat_result, digest: str, noted: Any = None) -> None:
    """Record ``digest`` (and ``noted``) for ``path`` as it was when ``st`` was taken (not for a racily young file)."""
    if is_racy(st, now_ns=time.time_ns(), seconds=_RACY_SECONDS):
        return
    if len(_DIGESTS) >= _DIGESTS_MAX:
        _DIGESTS.clear()
    _DIGESTS[_stat_key(path, st)] = (digest, noted)


def known_digest(path: str | os.PathLike[str], st: os.stat_result) -> str | None:
    """The remembered digest of ``path`` for the stat ``st``, or None."""
    hit = _DIGESTS.get(_stat_key(path, st))
    return None if hit is None else hit[0]


def take_digest(path: str | os.PathLike[str], st: os.stat_result) -> tuple[str, Any] | None:
    """``(digest, noted)`` remembered for ``path`` at stat ``st``, forgotten as it is handed out, or None."""
    return _DIGESTS.pop(_stat_key(path, st), None)


def forget_digests() -> None:
    """Forget every remembered digest (a new source is about to be fingerprinted)."""
    _DIGESTS.clear()


def is_probably_dicom(path: str | os.PathLike[str]) -> bool:
    """Cheap test: ``DICM`` at byte 128 (PS3.10 preamble), or a plausible first data element.

    Preamble-less files (raw data sets, common in old archives) usually start with an
    element of group 0x0002 or 0x0008 (little endian) or 0x0800 (big endian); those are
    accepted here and verified by a forced header read later.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    group = head[:2]
    return group in (b"\x02\x00", b"\x08\x00", b"\x00\x08", b"\x00\x02")


def read_header(path: str | os.PathLike[str], *, defer_size: str | int | None = "64 KB"):
    """Read a DICOM header without pixel data.

    Files with the PS3.10 preamble are read normally; files without it are read with
    ``force=True`` (and must then contain a SOP Class UID or image dimensions to count
    as DICOM).

    Parameters
    ----------
    path : path-like
    defer_size : str or int or None
        Elements larger than this are read lazily (pydicom ``defer_size``).

    Returns
    -------
    pydicom.Dataset
        Without ``PixelData``.

    Raises
    ------
    pydicom.errors.InvalidDicomError, OSError, ...
        When the header is unreadable; :func:`scan` turns these into rejections.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True, defer_size=defer_size)
    except InvalidDicomError:
        ds = pydicom.dcmread(path, stop_before_pixels=True, defer_size=defer_size, force=True)
        if "SOPClassUID" not in ds and not ("Rows" in ds and "Columns" in ds):
            raise
        return ds


def classify(ds) -> ObjectKind:
    """Object kind from the SOP Class UID (PS3.4 B.5).

    ``image`` for every image storage class (CT, MR, PET, CR, DX, MG, US, SC, XA, NM,
    enhanced multi-frame classes, RT Image...), ``rtstruct``, ``seg`` (binary/fractional
    Segmentation, Label Map Segmentation), ``sr`` (Structured Reports incl. Key Object
    Selection), ``presentation`` (presentation states), ``rtdose``, ``rtplan`` (plans and
    treatment records), ``other`` (DICOMDIR, raw data, registrations, encapsulated
    documents, waveforms, unknown classes without pixel geometry).
    """
    from storage.dicom.attrs import attr  # (pydicom: not imported with this module)

    sop = str(attr(ds, "SOPClassUID", "") or "")
    if not sop:
        meta = getattr(ds, "file_meta", None)
        sop = str(getattr(meta, "MediaStorageSOPClassUID", "") or "") if meta is not None else ""
    if sop in _RTSTRUCT:
        return "rtstruct"
    if sop in _SEG:
        return "seg"
    if sop in _RTDOSE:
        return "rtdose"
    if sop in _RTPLAN:
        return "rtplan"
    if sop.startswith(_SR_PREFIX):
        return "sr"
    if sop.startswith(_PR_PREFIX):
        return "presentation"
    elements = ds._dict  # membership by tag (BaseTag hashes as its int): what ``keyword in ds`` tests
    if sop == _MEDIA_DIRECTORY or 0x00041220 in elements:  # DirectoryRecordSequence
        return "other"
    if sop in _NON_IMAGE_STORAGE or sop.startswith(_WAVEFORM_PREFIX):
        return "other"
    if 0x00280010 in elements and 0x00280011 in elements:  # Rows, Columns
        return "image"
    return "other"


def scan(root: str | os.PathLike[str]) -> tuple[list[FileEntry], list[Rejection]]:
    """Read the header of every file under ``root``.

    Returns
    -------
    entries : list of FileEntry
        One per readable DICOM file (any object kind; DICOMDIR index files are
        rejected with reason ``"dicomdir"`` as they hold no image).
    rejections : list of Rejection
        ``"not_dicom"`` (no preamble and no plausible data element, or a forced read
        found no DICOM content), ``"unreadable_header"`` (pydicom raised),
        ``"unreadable_file"`` (the file could not be opened), ``"dicomdir"``.
    """
    entries: list[FileEntry] = []
    rejections: list[Rejection] = []
    for path in iter_files(root):
        try:
            digest = sha256_file(path)
        except OSError as exc:
            rejections.append(Rejection("", "unreadable_file", "file could not be read", type(exc).__name__))
            continue
        try:
            size: int | None = int(path.stat().st_size)
        except OSError:
            size = None
        if not is_probably_dicom(path):
            rejections.append(Rejection(digest, "not_dicom", "no DICM preamble and no plausible DICOM element",
                                        size=size))
            continue
        try:
            ds = read_header(path)
        except RecursionError as exc:
            rejections.append(Rejection(digest, "unreadable_header", "header nested too deeply", type(exc).__name__,
                                        size=size))
            continue
        except Exception as exc:  # noqa: BLE001 - any parser failure is a rejection; a medflow bug is not
            raise_if_bug(exc, stage="scan", input_key=file_handle(digest))
            reason = "not_dicom" if type(exc).__name__ == "InvalidDicomError" else "unreadable_header"
            rejections.append(Rejection(digest, reason, "pydicom could not read the header", type(exc).__name__,
                                        size=size))
            continue
        try:
            kind = classify(ds)
            is_dir = str(ds.get("SOPClassUID", "")) == _MEDIA_DIRECTORY or "DirectoryRecordSequence" in ds
        except Exception as exc:  # noqa: BLE001
            raise_if_bug(exc, stage="scan", input_key=file_handle(digest))
            rejections.append(Rejection(digest, "unreadable_header", "header elements could not be decoded",
                                        type(exc).__name__, size=size))
            continue
        if is_dir:
            rejections.append(Rejection(digest, "dicomdir", "DICOMDIR index file (no image)", size=size))
            continue
        entries.append(FileEntry(path=path, sha256=digest, dataset=ds, object_kind=kind))
    return entries, rejections
