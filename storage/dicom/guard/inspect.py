"""In-process inspection of one untrusted file: size, preamble, File Meta, deflate cap, walk, attributes."""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import re
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO

from storage.dicom.bugs import file_handle, raise_if_bug
from storage.dicom.guard.attributes import (
    _check_attributes,
)
from storage.dicom.guard.common import (
    _DEFLATED_LE,
    _ENCODING_NAMES,
    _ENCODINGS,
    _MEDIA_DIRECTORY,
    _NATIVE,
    _READ_BLOCK,
    GuardLimits,
    _Reject,
    _silenced,
)
from storage.dicom.guard.structure import (
    _guess_encoding,
    _looks_like_meta,
    _plausible,
    _read_meta,
    _uid,
    _walk_checked,
)
from storage.dicom.model import Rejection

# --------------------------------------------------------------------------- inspection


@dataclass
class FileInspection:
    """In-memory result of the in-process checks of one file (holds a UID: never leaves storage)."""

    path: pathlib.Path
    sha256: str | None
    size: int
    rejection: Rejection | None = None
    sop_instance_uid: str | None = None  # PHI-adjacent: in memory only
    transfer_syntax: str | None = None
    encapsulated: bool = False
    n_frames: int = 0
    frame_shape: tuple[int, ...] = ()
    frame_bytes: int = 0
    pixel_span: tuple[int, int] | None = None  # (offset, length) in the file, native or encapsulated
    deflated: bool = False
    #: top-level element headers from the compiled walk over the file's own bytes (in memory only; see
    #: :mod:`storage.dicom.guard.fastwalk`), handed to the data set reader; None when it did not run
    top_level: Any = None

    @property
    def needs_decode(self) -> bool:
        return self.rejection is None and self.encapsulated


def _rejection(sha: str | None, size: int, rej: _Reject) -> Rejection:
    return Rejection(sha256=sha or "", reason=rej.reason, detail=rej.detail, exception_type=rej.exception_type,
                     size=size)


def _hash_and_load(path: pathlib.Path, size: int, limits: GuardLimits) -> tuple[str, bytes | None]:
    h = hashlib.sha256()
    chunks: list[bytes] | None = [] if size <= limits.in_memory_bytes else None
    with open(path, "rb") as fh:
        while block := fh.read(_READ_BLOCK):
            h.update(block)
            if chunks is not None:
                chunks.append(block)
    data = b"".join(chunks) if chunks is not None else None
    if data is not None and len(data) != size:
        size = len(data)
    return h.hexdigest(), data


#: a SHA-256 digest as hexdigest() writes it
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def inspect_file(path: str | os.PathLike[str], *, limits: GuardLimits, sha256: str | None = None,
                 data: bytes | None = None) -> FileInspection:
    """Run every in-process check on one file; never raises for a bad file.

    Returns a :class:`FileInspection` whose ``rejection`` is set when the file must be
    quarantined, and whose ``needs_decode`` says a compressed sample must still be
    decoded in a bounded worker (see :func:`guard_files`). With ``sha256`` (the file's
    digest, already computed by the scan) the file is not hashed again and only its
    element headers are read. With ``data`` (the file's bytes, already read once by the
    caller) nothing is read from disk: the checks run on those bytes.
    """
    if not isinstance(limits, GuardLimits):
        raise TypeError(f"limits must be a GuardLimits, got {type(limits).__name__}")
    if sha256 is not None and not (isinstance(sha256, str) and _SHA256_HEX.fullmatch(sha256) is not None):
        raise ValueError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
    p = path if isinstance(path, pathlib.Path) else pathlib.Path(path)
    sha: str | None = sha256
    size = 0
    if data is not None and sha is None:
        sha = hashlib.sha256(data).hexdigest()
    try:
        size = len(data) if data is not None else p.stat().st_size
        if size == 0:
            return FileInspection(p, hashlib.sha256(b"").hexdigest(), 0,
                                  _rejection(hashlib.sha256(b"").hexdigest(), 0,
                                             _Reject("not_dicom", "zero-byte file")))
        if size > limits.max_file_bytes:
            sha = sha or _stream_sha256(p)
            raise _Reject("file_too_large", f"file of {size} bytes exceeds the maximum of {limits.max_file_bytes}")
        if data is None:
            if sha is None:
                sha, data = _hash_and_load(p, size, limits)
            # else: digest known, parse headers straight from the file
        if data is not None:
            size = len(data)
            insp = FileInspection(p, sha, size)
            with _silenced():
                _inspect_stream(io.BytesIO(data), size, insp, limits)
        else:
            insp = FileInspection(p, sha, size)
            with open(p, "rb") as fh, _silenced():
                _inspect_stream(fh, size, insp, limits)
        return insp
    except _Reject as rej:
        return FileInspection(p, sha, size, _rejection(sha, size, rej))
    except OSError as exc:
        return FileInspection(p, sha, size, _rejection(sha, size, _Reject(
            "unreadable_file", "the file could not be opened or read", type(exc).__name__)))
    except RecursionError as exc:
        return FileInspection(p, sha, size, _rejection(sha, size, _Reject(
            "nesting_too_deep", "reading the header exceeded the interpreter's recursion limit",
            type(exc).__name__)))
    except MemoryError as exc:
        return FileInspection(p, sha, size, _rejection(sha, size, _Reject(
            "memory_limit", "reading the header ran out of memory", type(exc).__name__)))
    except Exception as exc:  # noqa: BLE001 - a bad file must never crash the run; a medflow bug must
        raise_if_bug(exc, stage="guard", input_key=file_handle(sha))
        return FileInspection(p, sha, size, _rejection(sha, size, _Reject(
            "malformed_structure", "the header could not be interpreted", type(exc).__name__)))


def _stream_sha256(p: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        while block := fh.read(_READ_BLOCK):
            h.update(block)
    return h.hexdigest()


def _inspect_stream(fp: BinaryIO, size: int, insp: FileInspection, limits: GuardLimits) -> None:
    fp.seek(0)
    head = fp.read(1024)
    has_magic = len(head) >= 132 and head[128:132] == b"DICM"
    meta: dict[int, bytes] = {}
    ts: str | None = None
    if not has_magic and not _looks_like_meta(head) and _damaged_preamble(head):
        raise _Reject("bad_preamble", "no 'DICM' magic at byte 128 although a DICOM File Meta "
                                      "Information group follows (damaged preamble)")
    if has_magic:
        meta, ds_start = _read_meta(fp, 132, size)
        ts = _uid(meta.get(0x0010))
        preamble_less = False
    elif _looks_like_meta(head):
        meta, ds_start = _read_meta(fp, 0, size)
        ts = _uid(meta.get(0x0010))
        preamble_less = True
    else:
        ds_start = 0
        preamble_less = True
    if _uid(meta.get(0x0002)) == _MEDIA_DIRECTORY:
        raise _Reject("dicomdir", "a DICOMDIR media directory file (index only, no image data)")
    insp.transfer_syntax = ts

    stream: BinaryIO = fp
    end = size
    if ts == _DEFLATED_LE:
        stream, end = _inflate_capped(fp, ds_start, size, limits.max_inflated_bytes)
        ds_start = 0
        insp.deflated = True

    if ts in _NATIVE:
        encoding = _NATIVE[ts]
    elif ts is None:
        fp.seek(ds_start)
        encoding = _guess_encoding(fp.read(8))
    else:  # encapsulated and unknown syntaxes are Explicit VR Little Endian (PS3.5 A.4)
        encoding = (False, True)

    try:
        info = _walk_checked(stream, ds_start, end, implicit=encoding[0], little=encoding[1],
                             max_depth=limits.max_sequence_depth)
        failure: _Reject | None = None if _plausible(info) else _Reject(
            "missing_required_attribute", "the data set has no group 0008 elements (no SOP Class/Instance UID)")
    except _Reject as rej:
        if rej.reason == "nesting_too_deep":
            raise
        failure = rej
    if failure is not None:
        if preamble_less and not meta:
            raise _Reject("not_dicom", "no 'DICM' magic at byte 128 and no parseable DICOM data set at byte 0")
        if not insp.deflated:
            for alt in _ENCODINGS:
                if alt == encoding:
                    continue
                try:
                    alt_info = _walk_checked(stream, ds_start, end, implicit=alt[0], little=alt[1],
                                             max_depth=limits.max_sequence_depth)
                except _Reject:
                    continue
                if _plausible(alt_info):
                    declared = _ENCODING_NAMES.get(encoding, "the declared syntax")
                    raise _Reject("transfer_syntax_mismatch",
                                  f"the data set is encoded as {_ENCODING_NAMES[alt]} but the file declares "
                                  f"{declared}")
        raise failure

    _check_attributes(stream, ds_start, encoding, info, insp, limits, ts)
    if not insp.deflated:
        insp.top_level = info.top


def _damaged_preamble(head: bytes) -> bool:
    if len(head) >= 140 and _looks_like_meta(head[132:]):
        return True  # a File Meta group exactly where it belongs, but the magic is wrong
    idx = head.find(b"DICM")
    return idx >= 0 and idx != 128 and _looks_like_meta(head[idx + 4:])


def _inflate_capped(fp: BinaryIO, start: int, size: int, cap: int) -> tuple[BinaryIO, int]:
    """Inflate a raw deflate stream (PS3.5 A.5) in bounded steps; reject past ``cap`` bytes."""
    fp.seek(start)
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    out: list[bytes] = []
    total = 0
    step = 1 << 20
    try:
        while True:
            block = fp.read(_READ_BLOCK)
            if not block:
                break
            data = block
            while data:
                piece = d.decompress(data, step)
                total += len(piece)
                if total > cap:
                    raise _Reject("decompression_bomb", f"the deflated data set inflates to more than {cap} bytes "
                                                        f"(from {size - start} compressed bytes)")
                out.append(piece)
                data = d.unconsumed_tail
            if d.eof:
                break
        while True:  # drain what is still buffered
            piece = d.flush() if not d.eof else b""
            if not piece:
                break
            total += len(piece)
            if total > cap:
                raise _Reject("decompression_bomb", f"the deflated data set inflates to more than {cap} bytes")
            out.append(piece)
    except zlib.error as exc:
        raise _Reject("decode_failed", "the deflate stream is corrupt", type(exc).__name__) from None
    if not d.eof:
        raise _Reject("truncated", "the deflate stream ends before its final block")
    data_all = b"".join(out)
    return io.BytesIO(data_all), len(data_all)

