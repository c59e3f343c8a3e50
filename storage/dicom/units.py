"""Partition a source into collection units (one per patient) from a cheap look at each file.

A *unit* is the set of files converted together and cached together: every series and
every RTSTRUCT/SEG of one patient (a structure set is always converted with the images it
references, which share the PatientID even when they sit in another study). Units are
what makes a cohort incremental: adding patients adds units; units whose files did not
change are cache hits (see :mod:`storage.collect`).

The look is cheap on purpose: the file's bytes (read for its content digest anyway) and
the PatientID (0010,0020) found by walking the top-level elements of groups 0002-0010
(:func:`patient_of`). When this process hashed the file moments ago (the flows' source
fingerprint, :func:`storage.dicom.scan.file_digest` with :func:`peek_patient`) and it has not
changed since, that digest and PatientID are reused and the file is not read again. Files that cannot be looked at this way (deflated, big endian,
undefined-length sequences early in the header, damaged) fall back to a pydicom read
stopped after group 0010, and, failing that, go to one shared unit of their own, where the
full read gives its verdict (guard, quarantine). Grouping never rejects a file.
"""

from __future__ import annotations

import hashlib
import io
import pathlib
import struct
from collections.abc import Callable

from storage.dicom.guard.common import _silenced
from storage.dicom.scan import NOTE_BYTES, PatientToken, file_identity, sha256_file, take_digest

__all__ = ["patient_of", "partition", "peek_patient"]

_PATIENT_ID = 0x00100020
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_DEFLATED = b"1.2.840.10008.1.2.1.99"
_EXPLICIT_BE = b"1.2.840.10008.1.2.2"
_IMPLICIT_LE = b"1.2.840.10008.1.2\x00"
_UNPARSED = "\x00unparsed"
_WHOLE_FILE_BYTES = 64 << 20
_HEAD_BYTES = 1 << 20
_PEEK_BYTES = NOTE_BYTES  # the fingerprint's peek: the header up to PatientID in all but odd files


def _walk_to_patient_id(data: bytes, pos: int, *, implicit: bool) -> str | None:
    """PatientID from top-level little-endian elements starting at ``pos``; None when unsure."""
    end = len(data)
    while pos + 8 <= end:
        group, elem = struct.unpack_from("<HH", data, pos)
        tag = group << 16 | elem
        if implicit:
            length = struct.unpack_from("<L", data, pos + 4)[0]
            value = pos + 8
        else:
            vr = data[pos + 4:pos + 6]
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    return None
                length = struct.unpack_from("<L", data, pos + 8)[0]
                value = pos + 12
            elif b"AA" <= vr <= b"ZZ":
                length = struct.unpack_from("<H", data, pos + 6)[0]
                value = pos + 8
            else:
                return None
        if tag > _PATIENT_ID:
            return ""  # no PatientID before the first element past it
        if length == _UNDEFINED or value + length > end:
            return None
        if tag == _PATIENT_ID:
            try:
                return data[value:value + length].decode("ascii").strip(" \x00")
            except UnicodeDecodeError:
                return None
        pos = value + length
    return None


def patient_of(data: bytes, *, partial: bool = False) -> str | None:
    """The PatientID of a DICOM file's bytes (``""`` when absent), or None when it cannot be told cheaply.

    ``partial``: ``data`` is the file's first bytes only; the answer is then given only when the
    element walk reaches PatientID (or an element past it) inside ``data``, never by pydicom.
    """
    head = data[:1024]
    if _DEFLATED in head:
        return None  # inflating is the guard's job (capped), not the grouping's
    fallback = (lambda _data: None) if partial else _pydicom_patient
    if _EXPLICIT_BE in head:
        return fallback(data)
    if len(data) >= 132 and data[128:132] == b"DICM":
        pos = 132
        # File Meta (explicit VR LE); its length is in (0002,0000)
        if data[pos:pos + 4] == b"\x02\x00\x00\x00" and data[pos + 4:pos + 6] == b"UL" and len(data) >= pos + 12:
            meta_len = struct.unpack_from("<L", data, pos + 8)[0]
            pos = pos + 12 + meta_len
        else:
            return fallback(data)
        implicit = _IMPLICIT_LE in data[132:pos]
    else:
        pos = 0
        vr = data[4:6]
        implicit = not (b"AA" <= vr <= b"ZZ")
    try:
        found = _walk_to_patient_id(data, pos, implicit=implicit)
    except struct.error:
        found = None
    return found if found is not None else fallback(data)


def peek_patient(head: bytes) -> str | None:
    """The PatientID from a file's first bytes when the element walk reaches it there (see :func:`patient_of`).

    Handed to the source fingerprint (:func:`storage.dicom.scan.file_digest` ``note=``), so that
    :func:`partition` needs no read of its own for the usual file.
    """
    return patient_of(head[:_PEEK_BYTES], partial=True)


def _pydicom_patient(data: bytes) -> str | None:
    from pydicom.filereader import read_partial

    try:
        with _silenced():
            ds = read_partial(io.BytesIO(data), stop_when=lambda tag, vr, length: tag > _PATIENT_ID, force=True)
        return str(ds.get("PatientID", "") or "")
    except Exception:  # noqa: BLE001 - not a verdict: the unit's full read decides (guard, quarantine)
        return None


def partition(paths: list[pathlib.Path], *, patient_token: Callable[[str], str] | None = None,
              vouched: dict[str, tuple[str, tuple[int, int, int, int, int]]] | None = None
              ) -> tuple[list[list[tuple[pathlib.Path, str]]], list[pathlib.Path]]:
    """Group files into units by PatientID, hashing each file on the way.

    ``patient_token``: the keyed token the workspace's digest memory keeps of a PatientID
    (:meth:`storage.pseudonym.PseudonymKeys.partition_token`). With it, files are grouped by token
    (equal exactly when the PatientIDs are equal), and a file the memory vouched for, handed over with
    its :class:`~storage.dicom.scan.PatientToken`, is not read at all; without it a handed token is
    ignored and the file's head read, as for any file whose PatientID was not peeked.

    ``vouched``: filled with ``str(path) -> (digest, identity)`` for each file whose digest this process
    remembered (the fingerprint hashed it, or the workspace's memory vouched for it), ``identity`` being
    ``(device, inode, size, mtime_ns, ctime_ns)`` of the stat it is remembered under: the unit that reads
    the file takes that digest instead of hashing it again while the file still has that identity
    (:func:`storage.dicom.ingest.read_once`).

    Returns
    -------
    units : list of list of (path, sha256)
        One list per patient (files without a readable PatientID share one unit), each sorted
        by path; units ordered by their smallest digest (stable, PHI-free).
    unreadable : list of path
        Files that could not be read (they are handed to the unit conversion, which
        rejects them as ``unreadable_file``).
    """
    groups: dict[str, list[tuple[pathlib.Path, str]]] = {}
    unreadable: list[pathlib.Path] = []
    for p in paths:
        try:
            st = p.stat()
            digest, pid = take_digest(p, st) or (None, None)  # hashed (and peeked) moments ago by the fingerprint
            if digest is not None and vouched is not None:
                vouched[str(p)] = (digest, file_identity(st))
            if isinstance(pid, PatientToken):
                if patient_token is not None:
                    groups.setdefault(pid, []).append((p, digest))  # type: ignore[arg-type]
                    continue
                pid = None
            if digest is not None and pid is None:
                with open(p, "rb") as fh:
                    pid = patient_of(fh.read(_PEEK_BYTES), partial=True)
            if pid is None and st.st_size > _WHOLE_FILE_BYTES:  # large: stream the digest, look at the head only
                digest = digest or sha256_file(p)
                with open(p, "rb") as fh:
                    pid = patient_of(fh.read(_HEAD_BYTES))
            elif pid is None:
                with open(p, "rb") as fh:
                    data = fh.read()
                digest = digest or hashlib.sha256(data).hexdigest()
                pid = patient_of(data)
        except OSError:
            unreadable.append(p)
            continue
        if pid is not None and patient_token is not None:
            pid = patient_token(pid)
        groups.setdefault(_UNPARSED if pid is None else pid, []).append((p, digest))
    units = [sorted(files, key=lambda f: str(f[0])) for files in groups.values()]
    units.sort(key=lambda files: min(sha for _p, sha in files))
    return units, unreadable
