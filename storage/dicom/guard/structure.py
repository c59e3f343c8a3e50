"""Structural walk of a DICOM data set (PS3.5 7.1, 7.5, A.4) and File Meta reading, without pydicom."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from storage.dicom.guard.common import (
    _ITEM,
    _ITEM_DELIM,
    _LONG_VRS,
    _PIXEL_TAGS,
    _SEQ_DELIM,
    _UNDEFINED,
    _WANTED,
    _dictionary_is_sq,
    _Reject,
    _tag,
)

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
    #: the top-level element table when the compiled walk ran (:mod:`storage.dicom.guard.fastwalk`)
    top: Any = dataclasses.field(default=None, compare=False, repr=False)


def _walk(buf: Any, start: int, end: int, *, implicit: bool, little: bool, max_depth: int) -> _Structure:
    """Walk every element from ``start`` to ``end`` with an explicit stack (no recursion).

    ``buf`` is the whole stream's content (bytes, a memoryview or a read-only mmap: see
    :func:`_walk_checked`); only element headers are unpacked, values are skipped.
    Raises :class:`_Reject` (``truncated``, ``malformed_structure``, ``nesting_too_deep``).
    """
    e = "<" if little else ">"
    tag_len = struct.Struct(e + "HHL").unpack_from
    explicit_short = struct.Struct(e + "HH2sH").unpack_from
    u32 = struct.Struct(e + "L").unpack_from
    item_tag = struct.Struct(e + "HH").unpack_from
    size = len(buf)
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
        if pos + 8 > size:
            present = max(0, size - pos)
            if len(stack) == 1 and not present:
                break  # clean end of file at an element boundary
            where = "the top-level data set" if len(stack) == 1 else f"a sequence at depth {depth}"
            raise _Reject("truncated", f"the file ends inside an element header in {where} "
                                       f"(at byte {pos}, {present} of 8 header bytes present)")
        n += 1
        if kind == "ds":
            if implicit:
                group, elem, length = tag_len(buf, pos)
                vr = None
                hlen = 8
            else:
                group, elem, vr, length = explicit_short(buf, pos)
                hlen = 8
                if b"AA" <= vr <= b"ZZ" and vr[0:1].isupper() and vr[1:2].isupper():
                    if vr in _LONG_VRS:
                        if pos + 12 > size:
                            raise _Reject("truncated", f"the file ends inside an element header at byte {pos}")
                        length = u32(buf, pos + 8)[0]
                        hlen = 12
                else:  # implicit-VR switch, tolerated as pydicom does
                    group, elem, length = tag_len(buf, pos)
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
                        is_sq = value_pos + 4 <= size and item_tag(buf, value_pos) == (0xFFFE, 0xE000)
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
            continue
        # inside a sequence ("sq") or an encapsulated pixel data stream ("frag"): only items
        group, elem, length = tag_len(buf, pos)
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
    """:func:`_walk` where EOF inside an undefined-length container counts as truncation.

    A little-endian data set is walked by the compiled walk first
    (:func:`storage.dicom.guard.fastwalk.walk_little_endian`, the same structure plus the
    top-level element table in ``top``); where it does not answer, by :func:`_walk`.
    """
    from storage.dicom.guard.fastwalk import walk_little_endian

    try:
        with _content(fp) as buf:
            if little:
                fast = walk_little_endian(buf, start, end, implicit=implicit, max_depth=max_depth)
                if fast is not None:
                    info, info.top = fast[0], fast[1]
                    return info
            return _walk(buf, start, end, implicit=implicit, little=little, max_depth=max_depth)
    except struct.error as exc:  # pragma: no cover - headers are length-checked before unpacking
        raise _Reject("malformed_structure", "an element header could not be unpacked",
                      type(exc).__name__) from None


@contextlib.contextmanager
def _content(fp: BinaryIO) -> Iterator[Any]:
    """The stream's whole content as a buffer, without a copy: a BytesIO's own buffer, a file's read-only mmap.

    (Unpacking headers at offsets in a buffer costs a third less than reading and seeking a stream.)
    """
    if isinstance(fp, io.BytesIO):
        view = fp.getbuffer()
        try:
            yield view
        finally:
            view.release()
        return
    try:
        mapped = mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError, io.UnsupportedOperation):  # not a mappable file: its bytes
        mapped = None
    if mapped is None:
        fp.seek(0)
        yield fp.read()
        return
    with mapped:
        yield mapped


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

