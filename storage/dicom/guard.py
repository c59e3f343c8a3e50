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

import contextlib
import dataclasses
import hashlib
import io
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import pathlib
import resource
import signal
import struct
import threading
import time
import warnings
import zlib
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, BinaryIO

from storage.dicom.model import Rejection

__all__ = ["REASON_CODES", "GuardLimits", "guard_file", "guard_files", "inspect_file", "FileInspection"]

REASON_CODES: dict[str, str] = {
    "not_dicom": "not a DICOM file: no DICM magic and no parseable DICOM data set (includes zero-byte files)",
    "bad_preamble": "the 128-byte preamble / 'DICM' magic is damaged or misplaced (PS3.10 7.1) "
                    "although DICOM data follows",
    "unreadable_file": "the file could not be opened or read (permissions, I/O error)",
    "file_too_large": "the file is larger than the configured maximum file size",
    "truncated": "the file ends before a declared element, item or pixel data ends "
                 "(cut file, element length past end of file)",
    "malformed_structure": "element lengths or delimiters are inconsistent with the enclosing "
                           "sequence/item/fragment structure (PS3.5 7.5, A.4)",
    "transfer_syntax_mismatch": "the data set does not parse under its declared transfer syntax but "
                                "does under another (e.g. big-endian header over a little-endian body)",
    "pixel_length_mismatch": "the pixel data length disagrees with Rows x Columns x Samples x Frames x "
                             "BitsAllocated/8, or an encapsulated stream has fewer fragments than frames",
    "absurd_dimensions": "Rows/Columns/NumberOfFrames/BitsAllocated/SamplesPerPixel outside sane ranges, "
                         "or the expected pixel bytes exceed the configured maximum",
    "decompression_bomb": "decompressed size (deflate stream, or compressed pixel data's declared size) "
                          "exceeds the configured cap",
    "nesting_too_deep": "sequences nested deeper than the configured limit (pydicom would recurse)",
    "decode_failed": "pixel data of a compressed frame could not be decoded, or decoded to another "
                     "shape than the header declares, or the bounded worker died",
    "timeout": "decoding a sample of the pixel data took longer than the per-file time limit",
    "memory_limit": "decoding a sample of the pixel data exceeded the per-file memory limit",
    "duplicate_instance_conflict": "several files share one SOP Instance UID but their pixel data differ "
                                   "(all copies rejected: no way to tell which is right)",
    "duplicate_instance": "an identical duplicate of another file's instance (same SOP Instance UID and "
                          "pixel data); one copy was kept",
    "unsupported_transfer_syntax": "no available decoder for the transfer syntax (unknown, private, "
                                   "video, or a missing plugin)",
    "burned_in_annotation": "the image declares or is suspected of burned-in annotation "
                            "(set by storage.deid, not by the guard)",
    "missing_required_attribute": "a required attribute is missing (SOP Class/Instance UID, Image Pixel "
                                  "module attributes, or the pixel data of an image object)",
    "invalid_attribute": "a required attribute is present but its value cannot be read as its VR "
                         "requires (wrong length or multiplicity, not a number)",
    "dicomdir": "a DICOMDIR media directory (an index of other files, no image data)",
}

# --------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class GuardLimits:
    """Hard limits applied to every untrusted file (the lead's config holds the defaults).

    Attributes
    ----------
    max_file_bytes : int
        Larger files are rejected (``file_too_large``) without being parsed.
    max_pixel_bytes : int
        Maximum expected (decoded) pixel bytes of one file.
    max_inflated_bytes : int
        Maximum inflated size of a Deflated Explicit VR Little Endian data set.
    max_rows, max_columns : int
        Maximum Rows / Columns.
    max_frames : int
        Maximum Number of Frames.
    max_sequence_depth : int
        Maximum sequence nesting depth (a top-level sequence has depth 1).
    decode_timeout_s : float
        Wall-clock limit for decoding the sample frames of one compressed file.
    worker_memory_bytes : int
        Address space a bounded worker may grow by above its idle baseline.
    decode_sample_frames : int
        Frames of a compressed file decoded in the worker: 0 = none, 1 = first,
        2 = first and last.
    in_memory_bytes : int
        Files up to this size are read into memory once (hash + parse from memory);
        larger ones are parsed from the open file.
    """

    max_file_bytes: int = 4 << 30
    max_pixel_bytes: int = 2 << 30
    max_inflated_bytes: int = 512 << 20
    max_rows: int = 32768
    max_columns: int = 32768
    max_frames: int = 100_000
    max_sequence_depth: int = 32
    decode_timeout_s: float = 60.0
    worker_memory_bytes: int = 2 << 30
    decode_sample_frames: int = 2
    in_memory_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_pixel_bytes", "max_inflated_bytes", "max_rows", "max_columns",
                     "max_frames", "max_sequence_depth", "worker_memory_bytes", "in_memory_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not (self.decode_timeout_s > 0):
            raise ValueError(f"decode_timeout_s must be > 0, got {self.decode_timeout_s!r}")
        if self.decode_sample_frames not in (0, 1, 2):
            raise ValueError(f"decode_sample_frames must be 0, 1 or 2, got {self.decode_sample_frames!r}")


# --------------------------------------------------------------------------- constants

_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_DELIM = 0xFFFEE00D
_SEQ_DELIM = 0xFFFEE0DD
_PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_DEFLATED_LE = "1.2.840.10008.1.2.1.99"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_NATIVE = {_IMPLICIT_LE: (True, True), _EXPLICIT_LE: (False, True), _EXPLICIT_BE: (False, False),
           _DEFLATED_LE: (False, True)}
_ENCODINGS = [(True, True), (False, True), (False, False)]  # (implicit, little endian)
_ENCODING_NAMES = {(True, True): "Implicit VR Little Endian", (False, True): "Explicit VR Little Endian",
                   (False, False): "Explicit VR Big Endian"}
_SPP_OK = (1, 3)
_BITS_ALLOCATED_OK = (1, 8, 16, 32, 64)
_READ_BLOCK = 1 << 20


_quiet = threading.local()


class _DropWhileGuarding(logging.Filter):
    """Drops pydicom log records emitted while this thread reads an untrusted file (they can quote values)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_quiet, "active", False)


_PYDICOM_LOGGER = logging.getLogger("pydicom")
if not any(isinstance(f, _DropWhileGuarding) for f in _PYDICOM_LOGGER.filters):
    _PYDICOM_LOGGER.addFilter(_DropWhileGuarding())


@contextlib.contextmanager
def _silenced():
    """No pydicom warnings or log records (both can quote element values) inside the block."""
    previous = getattr(_quiet, "active", False)
    _quiet.active = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _quiet.active = previous


class _Reject(Exception):
    """Internal: carries a reason code and a PHI-free detail (never leaves this module)."""

    def __init__(self, reason: str, detail: str, exception_type: str | None = None):
        super().__init__(reason)
        assert reason in REASON_CODES, reason
        self.reason = reason
        self.detail = detail
        self.exception_type = exception_type


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


@lru_cache(maxsize=4096)
def _dictionary_is_sq(tag: int) -> bool:
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


# --------------------------------------------------------------------------- structure walk


@dataclass
class _Structure:
    """What the structural walk found at the top level of the data set."""

    start: int
    end: int
    first_group: int | None = None
    n_group_0008: int = 0
    n_elements: int = 0
    max_depth: int = 0
    pixel_tag: int | None = None
    pixel_offset: int = 0  # value offset in the parsed stream
    pixel_length: int | None = None  # None = undefined length (encapsulated)
    fragments: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (offset, length)
    values: dict[int, tuple[int, int]] = dataclasses.field(default_factory=dict)  # wanted tag -> (offset, length)


def _walk(fp: BinaryIO, start: int, end: int, *, implicit: bool, little: bool, max_depth: int) -> _Structure:
    """Walk every element from ``start`` to ``end`` with an explicit stack (no recursion).

    Raises :class:`_Reject` (``truncated``, ``malformed_structure``, ``nesting_too_deep``).
    Only element headers are read; values are skipped with ``seek``.
    """
    e = "<" if little else ">"
    tag_len = struct.Struct(e + "HHL")
    explicit_short = struct.Struct(e + "HH2sH")
    u32 = struct.Struct(e + "L")
    read, seek = fp.read, fp.seek
    seek(start)
    pos = start
    info = _Structure(start=start, end=end)
    # container: [kind, end offset (None = undefined length), depth, is top-level pixel data]
    stack: list[list[Any]] = [["ds", end, 0, False]]
    n = 0
    while True:
        kind, cend, depth, top_pixel = stack[-1]
        if cend is not None and pos >= cend:
            if pos > cend:  # pragma: no cover - prevented by the per-element bound check
                raise _Reject("malformed_structure", f"an element overruns its container at byte {pos}")
            if len(stack) == 1:
                break
            stack.pop()
            continue
        hdr = read(8)
        if len(hdr) < 8:
            if len(stack) == 1 and not hdr:
                break  # clean end of file at an element boundary
            where = "the top-level data set" if len(stack) == 1 else f"a sequence at depth {depth}"
            raise _Reject("truncated", f"the file ends inside an element header in {where} "
                                       f"(at byte {pos}, {len(hdr)} of 8 header bytes present)")
        n += 1
        if kind == "ds":
            if implicit:
                group, elem, length = tag_len.unpack(hdr)
                vr = None
                hlen = 8
            else:
                group, elem, vr, length = explicit_short.unpack(hdr)
                hlen = 8
                if b"AA" <= vr <= b"ZZ" and vr[0:1].isupper() and vr[1:2].isupper():
                    if vr in _LONG_VRS:
                        ext = read(4)
                        if len(ext) < 4:
                            raise _Reject("truncated", f"the file ends inside an element header at byte {pos}")
                        length = u32.unpack(ext)[0]
                        hlen = 12
                else:  # implicit-VR switch, tolerated as pydicom does
                    group, elem, length = tag_len.unpack(hdr)
                    vr = None
            tag = group << 16 | elem
            value_pos = pos + hlen
            if tag == _ITEM_DELIM:
                if len(stack) > 1 and cend is None:
                    stack.pop()
                    pos = value_pos
                    continue
                raise _Reject("malformed_structure", f"an item delimiter appears outside an undefined-length "
                                                     f"item at byte {pos}")
            if group == 0xFFFE:
                raise _Reject("malformed_structure", f"item tag {_tag(tag)} inside a data set at byte {pos}")
            if depth == 0:
                info.n_elements += 1
                if info.first_group is None:
                    info.first_group = group
                if group == 0x0008:
                    info.n_group_0008 += 1
            is_pixel = depth == 0 and tag in _PIXEL_TAGS
            if depth == 0 and tag in _WANTED and length != _UNDEFINED:
                info.values[tag] = (value_pos, length)
            if length == _UNDEFINED:
                is_sq = vr == b"SQ"
                if not is_sq and vr in (None, b"UN") and not is_pixel:
                    if _dictionary_is_sq(tag):
                        is_sq = True
                    else:
                        peek = read(4)
                        seek(value_pos)
                        is_sq = len(peek) == 4 and struct.unpack(e + "HH", peek) == (0xFFFE, 0xE000)
                if is_sq:
                    if depth + 1 > max_depth:
                        raise _Reject("nesting_too_deep", f"sequences are nested deeper than {max_depth} levels")
                    info.max_depth = max(info.max_depth, depth + 1)
                    stack.append(["sq", None, depth + 1, False])
                elif vr in (None, b"OB", b"OW", b"UN"):
                    if is_pixel:
                        info.pixel_tag, info.pixel_offset, info.pixel_length = tag, value_pos, None
                    stack.append(["frag", None, depth, is_pixel])
                else:
                    raise _Reject("malformed_structure", f"element {_tag(tag)} has an undefined length but is "
                                                         f"neither a sequence nor OB/OW data")
                pos = value_pos
                continue
            vend = value_pos + length
            limit = end if cend is None else cend
            if vend > limit:
                _overrun(tag, length, value_pos, end, limit, is_pixel)
            if is_pixel:
                info.pixel_tag, info.pixel_offset, info.pixel_length = tag, value_pos, length
            is_sq = vr == b"SQ" or (vr is None and length > 0 and _dictionary_is_sq(tag))
            if is_sq and length > 0:
                if depth + 1 > max_depth:
                    raise _Reject("nesting_too_deep", f"sequences are nested deeper than {max_depth} levels")
                info.max_depth = max(info.max_depth, depth + 1)
                stack.append(["sq", vend, depth + 1, False])
                pos = value_pos
            else:
                pos = vend
                seek(pos)
            continue
        # inside a sequence ("sq") or an encapsulated pixel data stream ("frag"): only items
        group, elem, length = tag_len.unpack(hdr)
        tag = group << 16 | elem
        value_pos = pos + 8
        if tag == _SEQ_DELIM:
            if cend is None:
                stack.pop()
                pos = value_pos
                continue
            raise _Reject("malformed_structure", f"a sequence delimiter inside a defined-length sequence at byte {pos}")
        if tag != _ITEM:
            what = "an encapsulated pixel data stream" if kind == "frag" else "a sequence"
            raise _Reject("malformed_structure", f"unexpected tag {_tag(tag)} inside {what} at byte {pos}")
        if kind == "frag":
            if length == _UNDEFINED:
                raise _Reject("malformed_structure", f"a pixel data fragment with undefined length at byte {pos}")
            if value_pos + length > end:
                raise _Reject("truncated", f"a pixel data fragment declares {length} bytes but only "
                                           f"{max(0, end - value_pos)} remain in the file")
            if top_pixel:
                info.fragments.append((value_pos, length))
            pos = value_pos + length
            seek(pos)
            continue
        # an item of a sequence: a nested data set at the sequence's depth
        if length == _UNDEFINED:
            stack.append(["ds", None, depth, False])
        else:
            limit = end if cend is None else cend
            if value_pos + length > limit:
                if value_pos + length > end:
                    raise _Reject("truncated", f"a sequence item declares {length} bytes but only "
                                               f"{max(0, end - value_pos)} remain in the file")
                raise _Reject("malformed_structure", f"a sequence item of {length} bytes overruns its sequence")
            stack.append(["ds", value_pos + length, depth, False])
        pos = value_pos
    if len(stack) > 1:  # pragma: no cover - loop only exits at the top level
        raise _Reject("truncated", "the file ends inside an undefined-length sequence or item")
    info.end = pos
    return info


def _overrun(tag: int, length: int, value_pos: int, end: int, limit: int, is_pixel: bool) -> None:
    remain = max(0, end - value_pos)
    what = "pixel data" if is_pixel else f"element {_tag(tag)}"
    if value_pos + length > end:
        raise _Reject("truncated", f"{what} declares {length} bytes but only {remain} remain in the file")
    raise _Reject("malformed_structure", f"{what} declares {length} bytes, more than its enclosing item holds")


def _walk_checked(fp: BinaryIO, start: int, end: int, *, implicit: bool, little: bool,
                  max_depth: int) -> _Structure:
    """:func:`_walk` where EOF inside an undefined-length container counts as truncation."""
    try:
        return _walk(fp, start, end, implicit=implicit, little=little, max_depth=max_depth)
    except struct.error as exc:  # pragma: no cover - headers are length-checked before unpacking
        raise _Reject("malformed_structure", "an element header could not be unpacked",
                      type(exc).__name__) from None


def _plausible(info: _Structure) -> bool:
    """A composite-object data set: group 0008 present and no element before it above group 0008."""
    return info.n_group_0008 > 0 and info.first_group is not None and info.first_group <= 0x0008


# --------------------------------------------------------------------------- file meta


def _read_meta(fp: BinaryIO, start: int, end: int) -> tuple[dict[int, bytes], int]:
    """Group 0002 elements from ``start`` (always Explicit VR Little Endian, PS3.10 7.1)."""
    fp.seek(start)
    pos = start
    meta: dict[int, bytes] = {}
    while pos + 8 <= end:
        hdr = fp.read(8)
        group, elem, vr, length = struct.unpack("<HH2sH", hdr)
        if group != 0x0002:
            break
        hlen = 8
        if vr in _LONG_VRS:
            ext = fp.read(4)
            if len(ext) < 4:
                raise _Reject("truncated", "the file ends inside the File Meta Information")
            length = struct.unpack("<L", ext)[0]
            hlen = 12
        if not (b"AA" <= vr <= b"ZZ"):
            raise _Reject("malformed_structure", "the File Meta Information is not Explicit VR Little Endian")
        if pos + hlen + length > end:
            raise _Reject("truncated", f"File Meta element {_tag(group << 16 | elem)} declares {length} bytes "
                                       f"but only {max(0, end - pos - hlen)} remain in the file")
        if elem in (0x0002, 0x0003, 0x0010) and length <= 256:
            meta[elem] = fp.read(length)
        else:
            fp.seek(pos + hlen + length)
        pos += hlen + length
    fp.seek(pos)
    return meta, pos


def _uid(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        text = value.decode("ascii").strip("\x00 ")
    except UnicodeDecodeError:
        return None
    return text or None


def _looks_like_meta(head: bytes) -> bool:
    return len(head) >= 8 and head[0:2] == b"\x02\x00" and b"AA" <= head[4:6] <= b"ZZ"


def _guess_encoding(head: bytes) -> tuple[bool, bool]:
    """pydicom's own guess for a data set without a transfer syntax (filereader.read_partial)."""
    if len(head) < 6:
        return True, True
    group = struct.unpack("<H", head[0:2])[0]
    vr = head[4:6]
    if b"AA" <= vr <= b"ZZ" and vr.isupper():
        return False, group < 1024
    return True, True


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


def inspect_file(path: str | os.PathLike[str], *, limits: GuardLimits, sha256: str | None = None) -> FileInspection:
    """Run every in-process check on one file; never raises for a bad file.

    Returns a :class:`FileInspection` whose ``rejection`` is set when the file must be
    quarantined, and whose ``needs_decode`` says a compressed sample must still be
    decoded in a bounded worker (see :func:`guard_files`). With ``sha256`` (the file's
    digest, already computed by the scan) the file is not hashed again and only its
    element headers are read.
    """
    if not isinstance(limits, GuardLimits):
        raise TypeError(f"limits must be a GuardLimits, got {type(limits).__name__}")
    if sha256 is not None and not (isinstance(sha256, str) and len(sha256) == 64
                                   and all(c in "0123456789abcdef" for c in sha256)):
        raise ValueError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
    p = pathlib.Path(path)
    sha: str | None = sha256
    size = 0
    try:
        st = p.stat()
        size = st.st_size
        if size == 0:
            return FileInspection(p, hashlib.sha256(b"").hexdigest(), 0,
                                  _rejection(hashlib.sha256(b"").hexdigest(), 0,
                                             _Reject("not_dicom", "zero-byte file")))
        if size > limits.max_file_bytes:
            sha = sha or _stream_sha256(p)
            raise _Reject("file_too_large", f"file of {size} bytes exceeds the maximum of {limits.max_file_bytes}")
        if sha is None:
            sha, data = _hash_and_load(p, size, limits)
        else:
            data = None  # digest known: parse headers straight from the file
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
    except Exception as exc:  # noqa: BLE001 - a bad file must never crash the run
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


# --------------------------------------------------------------------------- attributes

_KEYWORDS = {0x00080016: "SOPClassUID", 0x00080018: "SOPInstanceUID", 0x00280002: "SamplesPerPixel",
             0x00280004: "PhotometricInterpretation", 0x00280008: "NumberOfFrames", 0x00280010: "Rows",
             0x00280011: "Columns", 0x00280100: "BitsAllocated", 0x00280101: "BitsStored", 0x00280102: "HighBit",
             0x00280103: "PixelRepresentation"}
_WANTED = frozenset(_KEYWORDS)
_US_TAGS = frozenset({0x00280002, 0x00280010, 0x00280011, 0x00280100, 0x00280101, 0x00280102, 0x00280103})
_MAX_TEXT = 256


class _Attributes:
    """The few top-level values the guard needs, decoded from the walk's offsets (no pydicom parse).

    US values (PS3.5 6.2) must be exactly 2 bytes (VM 1); IS/CS/UI are ASCII with space/NUL
    padding. Anything else is ``invalid_attribute``; absent or empty values are ``None``.
    """

    def __init__(self, stream: BinaryIO, info: _Structure, little: bool):
        self._raw: dict[int, bytes] = {}
        self._little = little
        for tag, (offset, length) in info.values.items():
            if length > _MAX_TEXT:
                raise _Reject("invalid_attribute", f"{_KEYWORDS[tag]} has an implausible length of {length} bytes")
            stream.seek(offset)
            self._raw[tag] = stream.read(length)

    def text(self, tag: int) -> str | None:
        raw = self._raw.get(tag)
        if raw is None:
            return None
        try:
            value = raw.decode("ascii").strip(" \x00")
        except UnicodeDecodeError:
            raise _Reject("invalid_attribute", f"{_KEYWORDS[tag]} is not ASCII text") from None
        return value or None

    def integer(self, tag: int, *, required: bool) -> int | None:
        name = _KEYWORDS[tag]
        raw = self._raw.get(tag)
        if raw is None or len(raw) == 0:
            if required:
                raise _Reject("missing_required_attribute", f"{name} is missing" if raw is None else f"{name} is empty")
            return None
        if tag in _US_TAGS:
            if len(raw) != 2:
                raise _Reject("invalid_attribute", f"{name} holds {len(raw)} bytes, not one 16-bit value")
            return int(struct.unpack("<H" if self._little else ">H", raw)[0])
        text = self.text(tag)
        if text is None:
            if required:
                raise _Reject("missing_required_attribute", f"{name} is empty")
            return None
        if "\\" in text:
            raise _Reject("invalid_attribute", f"{name} has more than one value")
        try:
            as_float = float(text)
        except ValueError:
            raise _Reject("invalid_attribute", f"{name} is not a number") from None
        if not math.isfinite(as_float) or not as_float.is_integer():
            raise _Reject("invalid_attribute", f"{name} is not an integer")
        return int(as_float)


def _check_attributes(stream: BinaryIO, ds_start: int, encoding: tuple[bool, bool], info: _Structure,
                      insp: FileInspection, limits: GuardLimits, ts: str | None) -> None:
    attrs = _Attributes(stream, info, little=encoding[1])
    sop_class = attrs.text(0x00080016)
    sop_instance = attrs.text(0x00080018)
    if sop_class is None:
        raise _Reject("missing_required_attribute", "SOPClassUID is missing")
    if sop_instance is None:
        raise _Reject("missing_required_attribute", "SOPInstanceUID is missing")
    insp.sop_instance_uid = sop_instance

    if info.pixel_tag is None:
        if _is_image_class(sop_class):
            raise _Reject("missing_required_attribute", "an image object without pixel data "
                                                        "(the file may be cut at an element boundary)")
        return

    rows = attrs.integer(0x00280010, required=True)
    cols = attrs.integer(0x00280011, required=True)
    bits = attrs.integer(0x00280100, required=True)
    spp = attrs.integer(0x00280002, required=True)
    photometric = attrs.text(0x00280004)
    if photometric is None:
        raise _Reject("missing_required_attribute", "PhotometricInterpretation is missing")
    integer_pixels = info.pixel_tag == 0x7FE00010
    stored = attrs.integer(0x00280101, required=integer_pixels)
    high = attrs.integer(0x00280102, required=False)
    attrs.integer(0x00280103, required=integer_pixels)
    frames = attrs.integer(0x00280008, required=False)
    frames = 1 if frames is None else frames
    assert rows is not None and cols is not None and bits is not None and spp is not None

    problems = []
    if not 1 <= rows <= limits.max_rows:
        problems.append(f"Rows={rows} (allowed 1..{limits.max_rows})")
    if not 1 <= cols <= limits.max_columns:
        problems.append(f"Columns={cols} (allowed 1..{limits.max_columns})")
    if not 1 <= frames <= limits.max_frames:
        problems.append(f"NumberOfFrames={frames} (allowed 1..{limits.max_frames})")
    if bits not in _BITS_ALLOCATED_OK:
        problems.append(f"BitsAllocated={bits} (allowed {_BITS_ALLOCATED_OK})")
    if spp not in _SPP_OK:
        problems.append(f"SamplesPerPixel={spp} (allowed {_SPP_OK})")
    if stored is not None and not 1 <= stored <= bits:
        problems.append(f"BitsStored={stored} with BitsAllocated={bits}")
    if high is not None and stored is not None and not stored - 1 <= high < bits:
        problems.append(f"HighBit={high} with BitsStored={stored}, BitsAllocated={bits}")
    if problems:
        raise _Reject("absurd_dimensions", "; ".join(problems))

    expected = _expected_bytes(rows, cols, spp, frames, bits, photometric)
    encapsulated = ts is not None and ts not in _NATIVE
    insp.n_frames = frames
    insp.frame_shape = (rows, cols) if spp == 1 else (rows, cols, spp)
    insp.frame_bytes = rows * cols * spp * max(1, bits // 8)
    if expected > limits.max_pixel_bytes:
        code = "decompression_bomb" if encapsulated else "absurd_dimensions"
        raise _Reject(code, f"the header declares {expected} bytes of pixel data ({rows}x{cols}x{spp} samples, "
                            f"{frames} frames, {bits} bits), above the maximum of {limits.max_pixel_bytes}")

    if encapsulated:
        _check_encapsulated(info, frames, ts)
        insp.encapsulated = True
        last_off, last_len = info.fragments[-1]
        insp.pixel_span = None if insp.deflated else (info.pixel_offset, last_off + last_len - info.pixel_offset)
        return
    if info.pixel_length is None:
        raise _Reject("pixel_length_mismatch", "a native (uncompressed) transfer syntax but the pixel data has "
                                               "an undefined (encapsulated) length")
    actual = info.pixel_length
    frame_bytes = max(1, expected // frames)
    if actual < expected:
        raise _Reject("pixel_length_mismatch", f"pixel data holds {actual} bytes but the header implies {expected} "
                                               f"({rows}x{cols}x{spp} samples, {frames} frames, {bits} bits)")
    if actual - expected >= frame_bytes and actual - expected > 1:
        raise _Reject("pixel_length_mismatch", f"pixel data holds {actual} bytes, at least one frame more than "
                                               f"the {expected} the header implies ({frames} frames)")
    insp.pixel_span = None if insp.deflated else (info.pixel_offset, actual)


def _expected_bytes(rows: int, cols: int, spp: int, frames: int, bits: int, photometric: str) -> int:
    """Expected native pixel bytes (PS3.5 8.1.1 / PS3.3 C.7.6.3.1; 1-bit data is packed)."""
    n = rows * cols * spp * frames
    length = (n + 7) // 8 if bits == 1 else n * (bits // 8)
    if photometric == "YBR_FULL_422":
        length = length // 3 * 2
    return length


def _is_image_class(sop_class: str) -> bool:
    try:
        from pydicom.uid import UID

        name = UID(sop_class).name
    except Exception:  # noqa: BLE001
        return False
    return "Image Storage" in name


def _check_encapsulated(info: _Structure, frames: int, ts: str | None) -> None:
    from pydicom.uid import UID

    uid = UID(ts or "")
    if not uid.is_transfer_syntax or not uid.is_compressed:
        raise _Reject("unsupported_transfer_syntax", "an unknown or private transfer syntax")
    try:
        from pydicom.pixels.decoders.base import get_decoder

        if not get_decoder(uid).is_available:
            raise _Reject("unsupported_transfer_syntax", f"no decoder plugin is installed for {uid.name}")
    except NotImplementedError:
        raise _Reject("unsupported_transfer_syntax", f"pydicom has no decoder for {uid.name}") from None
    if info.pixel_length is not None:
        raise _Reject("pixel_length_mismatch", "a compressed transfer syntax but the pixel data has a defined "
                                               "length (not encapsulated)")
    n_frag = max(0, len(info.fragments) - 1)  # the first item is the Basic Offset Table
    if n_frag == 0:
        raise _Reject("pixel_length_mismatch", "the encapsulated pixel data holds no fragments")
    if n_frag < frames:
        raise _Reject("pixel_length_mismatch", f"{frames} frames declared but only {n_frag} fragments present "
                                               f"(PS3.5 A.4: each frame starts a new fragment)")


# --------------------------------------------------------------------------- bounded worker


def _vm_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover - non-Linux
        return 0


def _worker_main(conn: multiprocessing.connection.Connection, allowance: int) -> None:
    """Bounded decode worker: address space capped at baseline + ``allowance``; exits on MemoryError."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import numpy  # noqa: F401
        import pydicom.pixels  # noqa: F401  (imports the decoder plugins before the cap)
    baseline = _vm_bytes()
    if baseline:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = baseline + allowance
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            result = _decode_sample(**task)
        except MemoryError as exc:
            conn.send({"reason": "memory_limit", "detail": "decoding a sample frame exceeded the memory limit",
                       "exception_type": type(exc).__name__})
            return  # a fresh worker replaces this one
        except RecursionError as exc:
            result = {"reason": "nesting_too_deep", "detail": "decoding exceeded the recursion limit",
                      "exception_type": type(exc).__name__}
        except BaseException as exc:  # noqa: BLE001 - report, never die silently
            result = {"reason": "decode_failed", "detail": "a sample frame of the compressed pixel data could "
                                                           "not be decoded", "exception_type": type(exc).__name__}
        try:
            conn.send(result)
        except (OSError, ValueError):
            return


def _decode_sample(*, path: str, transfer_syntax: str, frames: list[int], shape: tuple[int, ...],
                   frame_bytes: int) -> dict | None:
    """Decode ``frames`` of one compressed file (runs inside the bounded worker).

    The decoded frame's size is reserved first (address space only, not touched):
    under ``RLIMIT_AS`` a frame that cannot fit fails here with a clean
    ``MemoryError`` instead of inside a decoder plugin (pydicom re-raises plugin
    errors as ``RuntimeError``, which would hide the cause).
    """
    import numpy as np
    from pydicom import dcmread
    from pydicom.pixels.decoders.base import get_decoder

    reserve = np.empty(2 * frame_bytes, dtype=np.uint8)  # the output frame + a decoder work buffer
    del reserve

    with _silenced():
        ds = dcmread(path, force=True)
        decoder = get_decoder(transfer_syntax)
        for index in frames:
            arr, _meta = decoder.as_array(ds, index=index, raw=True)
            if tuple(arr.shape) != tuple(shape):
                return {"reason": "decode_failed",
                        "detail": f"frame {index} decoded to shape {tuple(arr.shape)}, the header declares "
                                  f"{tuple(shape)}", "exception_type": None}
            del arr
    return None


class _Worker:
    def __init__(self, ctx: Any, allowance: int):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, allowance), daemon=True,
                                name="medflow-guard-worker")
        self.proc.start()
        child.close()
        self.task: Any = None
        self.deadline = 0.0

    def stop(self, *, kill: bool = False) -> None:
        if not kill:
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                kill = True
            self.proc.join(timeout=2.0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5.0)
        self.conn.close()


def _mp_context() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    try:
        ctx.set_forkserver_preload(["storage.dicom.guard"])
    except Exception:  # noqa: BLE001  # pragma: no cover
        pass
    return ctx


def _run_bounded(tasks: list[tuple[Any, dict]], *, limits: GuardLimits, workers: int) -> dict[Any, dict | None]:
    """Run decode tasks in ``workers`` bounded processes; a hung worker is killed and replaced."""
    results: dict[Any, dict | None] = {}
    if not tasks:
        return results
    ctx = _mp_context()
    pending = deque(tasks)
    pool: list[_Worker] = []
    try:
        for _ in range(min(workers, len(tasks))):
            pool.append(_Worker(ctx, limits.worker_memory_bytes))
        while pending or any(w.task is not None for w in pool):
            for i, w in enumerate(pool):
                if w.task is None and pending:
                    key, payload = pending.popleft()
                    if not w.proc.is_alive():
                        w.stop(kill=True)
                        w = pool[i] = _Worker(ctx, limits.worker_memory_bytes)
                    try:
                        w.conn.send(payload)
                    except (OSError, ValueError):
                        results[key] = {"reason": "decode_failed", "detail": "the bounded worker could not "
                                        "accept the task", "exception_type": None}
                        w.stop(kill=True)
                        pool[i] = _Worker(ctx, limits.worker_memory_bytes)
                        continue
                    w.task, w.deadline = key, time.monotonic() + limits.decode_timeout_s
            busy = [w for w in pool if w.task is not None]
            if not busy:
                continue
            timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            ready = set(multiprocessing.connection.wait([w.conn for w in busy] + [w.proc.sentinel for w in busy],
                                                        timeout=timeout))
            now = time.monotonic()
            for i, w in enumerate(pool):
                if w.task is None:
                    continue
                key = w.task
                if w.conn in ready:
                    try:
                        results[key] = w.conn.recv()
                        w.task = None
                        if results[key] is not None and results[key].get("reason") == "memory_limit":
                            w.stop(kill=True)
                            pool[i] = _Worker(ctx, limits.worker_memory_bytes)
                        continue
                    except (EOFError, OSError):
                        pass  # died: fall through to the sentinel handling
                if w.conn in ready or w.proc.sentinel in ready:
                    w.proc.join(timeout=5.0)
                    code = w.proc.exitcode
                    if code == -signal.SIGKILL:
                        results[key] = {"reason": "memory_limit", "detail": "the bounded worker was killed "
                                        "(SIGKILL, most likely out of memory)", "exception_type": None}
                    else:
                        results[key] = {"reason": "decode_failed", "detail": f"the bounded worker died while "
                                        f"decoding (exit code {code})", "exception_type": None}
                    w.task = None
                    w.stop(kill=True)
                    pool[i] = _Worker(ctx, limits.worker_memory_bytes)
                elif now >= w.deadline:
                    results[key] = {"reason": "timeout", "detail": f"decoding a sample frame took longer than "
                                    f"{limits.decode_timeout_s:g} s; the worker was killed", "exception_type": None}
                    w.task = None
                    w.stop(kill=True)
                    pool[i] = _Worker(ctx, limits.worker_memory_bytes)
    except Exception as exc:  # noqa: BLE001 - could not start a worker (no fork, daemonic parent...)
        for key, _payload in pending:
            results.setdefault(key, {"reason": "decode_failed", "detail": "no bounded worker could be started",
                                     "exception_type": type(exc).__name__})
        for w in pool:
            if w.task is not None:
                results.setdefault(w.task, {"reason": "decode_failed", "detail": "no bounded worker could be "
                                            "started", "exception_type": type(exc).__name__})
    finally:
        for w in pool:
            w.stop(kill=w.task is not None)
    return results


def _decode_tasks(inspections: Iterable[FileInspection], limits: GuardLimits) -> list[tuple[Any, dict]]:
    tasks = []
    if limits.decode_sample_frames == 0:
        return tasks
    for i, insp in enumerate(inspections):
        if not insp.needs_decode:
            continue
        frames = [0] if limits.decode_sample_frames == 1 or insp.n_frames == 1 else [0, insp.n_frames - 1]
        tasks.append((i, {"path": str(insp.path), "transfer_syntax": insp.transfer_syntax, "frames": frames,
                          "shape": insp.frame_shape, "frame_bytes": insp.frame_bytes}))
    return tasks


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
    outcomes = _run_bounded(_decode_tasks(inspections, limits), limits=limits, workers=workers)
    for i, res in outcomes.items():
        if res is not None:
            insp = inspections[i]
            insp.rejection = Rejection(sha256=insp.sha256 or "", reason=res["reason"], detail=res["detail"],
                                       exception_type=res.get("exception_type"), size=insp.size)
    _mark_duplicates(inspections)
    return {key: insp.rejection for key, insp in zip(keys, inspections, strict=True)}


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
