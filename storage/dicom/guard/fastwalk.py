"""The guard's structural walk of a little-endian data set, compiled, with the top-level element table.

:func:`storage.dicom.guard.structure._walk` checks a file's whole element structure in
Python (PS3.5 7.1, 7.5, A.4); it is the reference. :func:`walk_little_endian` is the same
walk compiled (numba, like :mod:`imaging.raster`) for the data sets nearly every archive
holds (Implicit or Explicit VR Little Endian), and records on the way every top-level
element's header: tag, VR, value length, value offset and header offset. The reader of
:mod:`storage.dicom.rawread` builds the data set from that table instead of unpacking the
same headers again.

It decides nothing on its own: it answers only for a data set whose walk ends cleanly,
with the :class:`~storage.dicom.guard.structure._Structure` the Python walk returns for
it. Anything else (any condition under which the Python walk raises, a nesting or a table
larger than its fixed capacity) returns ``None``, and the caller runs the Python walk,
which raises the rejection with its reason and message.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numba
import numpy as np

from storage.dicom.guard.common import _LONG_VRS, _PIXEL_TAGS, _WANTED, ITEM_SIZES, TEXT_VRS

__all__ = ["CHECK_DS", "CHECK_VALUE", "TopLevel", "walk_little_endian", "warm_up"]

#: Top-level elements and pixel data fragments recorded at most (more: the Python walk runs).
CAPACITY = 4096

# rows of the element table
_TAG, _VR, _LENGTH, _VALUE, _HEADER, _CHECKS = range(6)
# fields of the summary
(_N, _FIRST_GROUP, _N_0008, _N_ELEMENTS, _MAX_DEPTH, _PIXEL_TAG, _PIXEL_OFFSET, _PIXEL_LENGTH, _N_FRAGS, _END,
 _SWITCHED) = range(11)
_N_INFO = 11

_OK, _PYTHON = 0, 1
_UNDEFINED = 0xFFFFFFFF

#: A top-level value the ingest's "every value decodes under its VR" check must look at
#: (:func:`storage.dicom.rawread.unconvertible_elements`): its VR is left to pydicom's hook (implicit VR
#: without a dictionary entry, UN, an element switched to implicit VR, a dictionary entry with several
#: VRs), it is DS or IS (checked by pattern), its VR is not one pydicom knows, an undefined length, or
#: text that is not ASCII / binary data that is not a whole number of items. Every other value decodes.
CHECK_VALUE = 1
#: A top-level element that is, or may become on conversion, a DS element (DS; UN and elements whose VR
#: pydicom's hook decides): the ones :func:`storage.dicom.series.unreadable_decimal` must look at.
CHECK_DS = 2
_CHECK_VALUE, _CHECK_DS = CHECK_VALUE, CHECK_DS

# what the value checks do per VR (an array indexed by VR code: 0 = left to Python)
_KIND_PYTHON, _KIND_SAFE, _KIND_TEXT, _KIND_DS_CANDIDATE = 0, 1, -1, -2


def _vr_code(vr: bytes) -> int:
    return vr[0] << 8 | vr[1]


def _kinds() -> np.ndarray:
    kinds = np.zeros(0x5B5B, dtype=np.int64)
    for vr in TEXT_VRS:
        kinds[_vr_code(vr.encode())] = _KIND_TEXT
    for vr, size in ITEM_SIZES.items():
        kinds[_vr_code(vr.encode())] = size
    kinds[_vr_code(b"OB")] = kinds[_vr_code(b"SQ")] = _KIND_SAFE  # SQ: the walk has checked its structure
    kinds[_vr_code(b"DS")] = _KIND_DS_CANDIDATE
    return kinds


_KINDS = _kinds()
_LONG = np.array(sorted(_vr_code(v) for v in _LONG_VRS), dtype=np.int64)


@numba.njit(nogil=True, cache=True)
def _u16(buf, pos):  # pragma: no cover - compiled
    return np.int64(buf[pos]) | np.int64(buf[pos + 1]) << 8


@numba.njit(nogil=True, cache=True)
def _u32(buf, pos):  # pragma: no cover - compiled
    return (np.int64(buf[pos]) | np.int64(buf[pos + 1]) << 8 | np.int64(buf[pos + 2]) << 16
            | np.int64(buf[pos + 3]) << 24)


@numba.njit(nogil=True, cache=True)
def _dictionary_vr(tag, exact, exact_vr, mask1, mask2, mask_vr):  # pragma: no cover - compiled
    """pydicom's ``dictionary_VR(tag)`` as a VR code (``datadict.get_entry``: exact entry, then repeater masks).

    0 for a tag the dictionary does not hold (private, unknown) or whose entry has several VRs ("US or SS").
    """
    i = np.searchsorted(exact, tag)
    if i < exact.shape[0] and exact[i] == tag:
        return exact_vr[i]
    if (tag >> 16) & 1:  # private: no repeater lookup
        return 0
    for k in range(mask1.shape[0]):
        if ((tag ^ mask1[k]) & mask2[k]) == 0:
            return mask_vr[k]
    return 0


@numba.njit(nogil=True, cache=True)
def _value_code(buf, vr, length, value_pos, kinds):  # pragma: no cover - compiled
    """How much of the ingest's value checks a top-level element needs (see :data:`CHECK_VALUE`)."""
    kind = kinds[vr] if vr > 0 else _KIND_PYTHON
    code = _CHECK_DS if kind == _KIND_DS_CANDIDATE or kind == _KIND_PYTHON else 0
    if length == 0xFFFFFFFF or kind == _KIND_PYTHON or kind == _KIND_DS_CANDIDATE:
        return code | _CHECK_VALUE
    if length == 0:
        return code
    if kind == _KIND_TEXT:
        for i in range(value_pos, value_pos + length):
            if buf[i] >= 0x80:
                return code | _CHECK_VALUE
        return code
    if kind >= 2:  # binary values of a fixed item size
        return code if length % kind == 0 else code | _CHECK_VALUE
    return code  # _KIND_SAFE (OB, SQ after the walk)


@numba.njit(nogil=True, cache=True, inline="always")
def _open_sequence(s_kind, s_end, s_depth, s_pixel, top, end, depth, max_depth, info):  # pragma: no cover
    """Push a sequence (``end`` -1: undefined length) one level below ``depth``; the new top, or -1 (Python)."""
    if depth + 1 > max_depth:
        return -1
    info[_MAX_DEPTH] = max(info[_MAX_DEPTH], depth + 1)
    top += 1
    if top >= s_kind.shape[0]:
        return -1
    s_kind[top] = 1
    s_end[top] = end
    s_depth[top] = depth + 1
    s_pixel[top] = False
    return top


@numba.njit(nogil=True, cache=True)
def _walk(buf, start, end, implicit, max_depth, long_vrs, exact, exact_vr, mask1, mask2, mask_vr, kinds,
          table, frags, info):  # pragma: no cover - compiled
    """The Python walk's loop, statement for statement; returns _OK only where that walk returns."""
    size = buf.shape[0]
    cap = table.shape[1]
    levels = 2 * max_depth + 4
    s_kind = np.empty(levels, np.int64)  # 0 data set, 1 sequence, 2 fragments
    s_end = np.empty(levels, np.int64)  # -1: undefined length
    s_depth = np.empty(levels, np.int64)
    s_pixel = np.empty(levels, np.bool_)
    top = 0
    s_kind[0] = 0
    s_end[0] = end
    s_depth[0] = 0
    s_pixel[0] = False
    pos = start
    n_top = 0
    n_frags = 0
    info[_FIRST_GROUP] = -1
    info[_N_0008] = 0
    info[_N_ELEMENTS] = 0
    info[_MAX_DEPTH] = 0
    info[_PIXEL_TAG] = -1
    info[_PIXEL_OFFSET] = 0
    info[_PIXEL_LENGTH] = -1  # none met, or undefined length (both None in the Python walk)
    info[_SWITCHED] = 0
    while True:
        kind = s_kind[top]
        cend = s_end[top]
        depth = s_depth[top]
        if cend >= 0 and pos >= cend:
            if pos > cend:
                return _PYTHON
            if top == 0:
                break
            top -= 1
            continue
        if pos + 8 > size:
            if top == 0 and size - pos <= 0:
                break
            return _PYTHON
        if kind == 0:
            group = _u16(buf, pos)
            elem = _u16(buf, pos + 2)
            vr = 0  # none: implicit, or the tolerated per-element switch
            hlen = 8
            if implicit:
                length = _u32(buf, pos + 4)
            else:
                b0 = buf[pos + 4]
                b1 = buf[pos + 5]
                if 0x41 <= b0 <= 0x5A and 0x41 <= b1 <= 0x5A:
                    vr = np.int64(b0) << 8 | np.int64(b1)
                    j = np.searchsorted(long_vrs, vr)
                    if j < long_vrs.shape[0] and long_vrs[j] == vr:
                        if pos + 12 > size:
                            return _PYTHON
                        length = _u32(buf, pos + 8)
                        hlen = 12
                    else:
                        length = _u16(buf, pos + 6)
                else:
                    length = _u32(buf, pos + 4)
                    if depth == 0:
                        info[_SWITCHED] = 1
            tag = group << 16 | elem
            value_pos = pos + hlen
            if tag == 0xFFFEE00D:
                if top > 0 and cend < 0:
                    top -= 1
                    pos = value_pos
                    continue
                return _PYTHON
            if group == 0xFFFE:
                return _PYTHON
            if depth == 0:
                if n_top >= cap:
                    return _PYTHON
                table[0, n_top] = tag
                table[1, n_top] = vr
                table[2, n_top] = length
                table[3, n_top] = value_pos
                table[4, n_top] = pos
                # the VR the value checks go by: the header's, the dictionary's in implicit VR, 0 when
                # pydicom's hook decides (an element switched to implicit VR, a tag the dictionary lacks)
                checked_vr = _dictionary_vr(tag, exact, exact_vr, mask1, mask2, mask_vr) if implicit else vr
                # (a defined-length value is looked at only once its bounds are checked, below)
                table[5, n_top] = _value_code(buf, checked_vr, length, value_pos, kinds) \
                    if length == 0xFFFFFFFF else 0
                n_top += 1
                info[_N_ELEMENTS] += 1
                if info[_FIRST_GROUP] < 0:
                    info[_FIRST_GROUP] = group
                if group == 0x0008:
                    info[_N_0008] += 1
            is_pixel = depth == 0 and (tag == 0x7FE00010 or tag == 0x7FE00008 or tag == 0x7FE00009)
            if length == 0xFFFFFFFF:
                is_sq = vr == 0x5351  # SQ
                if not is_sq and (vr == 0 or vr == 0x554E) and not is_pixel:  # None or UN
                    if _dictionary_vr(tag, exact, exact_vr, mask1, mask2, mask_vr) == 0x5351:
                        is_sq = True
                    else:
                        is_sq = value_pos + 4 <= size and _u16(buf, value_pos) == 0xFFFE and \
                            _u16(buf, value_pos + 2) == 0xE000
                if is_sq:
                    top = _open_sequence(s_kind, s_end, s_depth, s_pixel, top, -1, depth, max_depth, info)
                    if top < 0:
                        return _PYTHON
                elif vr == 0 or vr == 0x4F42 or vr == 0x4F57 or vr == 0x554E:  # None, OB, OW, UN
                    if is_pixel:
                        info[_PIXEL_TAG] = tag
                        info[_PIXEL_OFFSET] = value_pos
                        info[_PIXEL_LENGTH] = -1
                    top += 1
                    if top >= levels:
                        return _PYTHON
                    s_kind[top] = 2
                    s_end[top] = -1
                    s_depth[top] = depth
                    s_pixel[top] = is_pixel
                else:
                    return _PYTHON
                pos = value_pos
                continue
            vend = value_pos + length
            limit = end if cend < 0 else cend
            if vend > limit:
                return _PYTHON
            if depth == 0:
                table[5, n_top - 1] = _value_code(buf, checked_vr, length, value_pos, kinds)
            if is_pixel:
                info[_PIXEL_TAG] = tag
                info[_PIXEL_OFFSET] = value_pos
                info[_PIXEL_LENGTH] = length
            is_sq = vr == 0x5351 or (vr == 0 and length > 0 and
                                     _dictionary_vr(tag, exact, exact_vr, mask1, mask2, mask_vr) == 0x5351)
            if is_sq and length > 0:
                top = _open_sequence(s_kind, s_end, s_depth, s_pixel, top, vend, depth, max_depth, info)
                if top < 0:
                    return _PYTHON
                pos = value_pos
            else:
                pos = vend
            continue
        # inside a sequence (1) or an encapsulated pixel data stream (2): only items
        tag = _u16(buf, pos) << 16 | _u16(buf, pos + 2)
        length = _u32(buf, pos + 4)
        value_pos = pos + 8
        if tag == 0xFFFEE0DD:
            if cend < 0:
                top -= 1
                pos = value_pos
                continue
            return _PYTHON
        if tag != 0xFFFEE000:
            return _PYTHON
        if kind == 2:
            if length == 0xFFFFFFFF:
                return _PYTHON
            if value_pos + length > end:
                return _PYTHON
            if s_pixel[top]:
                if n_frags >= frags.shape[1]:
                    return _PYTHON
                frags[0, n_frags] = value_pos
                frags[1, n_frags] = length
                n_frags += 1
            pos = value_pos + length
            continue
        top += 1
        if top >= levels:
            return _PYTHON
        s_kind[top] = 0
        s_depth[top] = depth
        s_pixel[top] = False
        if length == 0xFFFFFFFF:
            s_end[top] = -1
        else:
            limit = end if cend < 0 else cend
            if value_pos + length > limit:
                return _PYTHON
            s_end[top] = value_pos + length
        pos = value_pos
    info[_N] = n_top
    info[_N_FRAGS] = n_frags
    info[_END] = pos
    return _OK


def _code_of(vr: str) -> int:
    """A dictionary VR as a code; 0 for an entry with several VRs ("US or SS", "OB or OW")."""
    return _vr_code(vr.encode()) if len(vr) == 2 and vr.isalpha() and vr.isupper() else 0


@functools.lru_cache(maxsize=1)
def _dictionary() -> tuple[np.ndarray, ...]:
    """pydicom's data dictionary as sorted arrays: exact tags and their VR codes, then the repeater masks in order."""
    from pydicom import datadict

    exact = np.array(sorted(int(t) for t in datadict.DicomDictionary), dtype=np.int64)
    exact_vr = np.array([_code_of(datadict.DicomDictionary[t][0]) for t in exact.tolist()], dtype=np.int64)
    items = list(datadict.masks.items())
    mask1 = np.array([m1 for _, (m1, _m2) in items], dtype=np.int64)
    mask2 = np.array([m2 for _, (_m1, m2) in items], dtype=np.int64)
    mask_vr = np.array([_code_of(datadict.RepeatersDictionary[k][0]) for k, _ in items], dtype=np.int64)
    return exact, exact_vr, mask1, mask2, mask_vr


def dictionary_is_sq(tag: int) -> bool:
    """The compiled dictionary lookup the walk uses, as "is a sequence" (exposed for its test against pydicom)."""
    return int(_dictionary_vr(np.int64(tag), *_dictionary())) == _vr_code(b"SQ")


def dictionary_vr_code(tag: int) -> int:
    """The compiled dictionary lookup's VR code of ``tag`` (0: none or several; for its test against pydicom)."""
    return int(_dictionary_vr(np.int64(tag), *_dictionary()))


@dataclass
class TopLevel:
    """The top-level element headers of one data set, in file order (arrays of int64, one entry per element).

    ``vr`` is the two VR bytes as ``b0 << 8 | b1``, 0 where the header has no VR (implicit VR, or an
    element switched to implicit inside an explicit data set: ``switched``, top level only). ``value_pos`` and
    ``header_pos`` are offsets in the buffer walked; ``end`` is where the walk stopped. ``checks`` holds
    each element's :data:`CHECK_VALUE` / :data:`CHECK_DS` bits.
    """

    start: int
    end: int
    implicit: bool
    switched: bool
    tag: list[int]
    vr: list[int]
    length: list[int]
    value_pos: list[int]
    header_pos: list[int]
    checks: list[int]


def walk_little_endian(buf, start: int, end: int, *, implicit: bool, max_depth: int):
    """The guard's walk of a little-endian data set, or ``None`` where the Python walk must decide.

    Parameters
    ----------
    buf : bytes-like
        The whole stream's content (bytes, a memoryview, a read-only mmap).
    start, end : int
        Offsets of the data set in ``buf``.
    implicit : bool
        Implicit VR (True) or Explicit VR (False) Little Endian.
    max_depth : int
        The sequence nesting limit.

    Returns
    -------
    tuple of (_Structure, TopLevel) or None
        What :func:`storage.dicom.guard.structure._walk` returns for the same arguments,
        and the top-level element table; ``None`` when that walk would raise, or when the
        data set has more than :data:`CAPACITY` top-level elements or fragments.
    """
    from storage.dicom.guard.structure import _Structure

    arr = np.frombuffer(buf, dtype=np.uint8)
    table = np.empty((6, CAPACITY), dtype=np.int64)
    frags = np.empty((2, CAPACITY), dtype=np.int64)
    info = np.zeros(_N_INFO, dtype=np.int64)
    status = _walk(arr, start, end, implicit, max_depth, _LONG, *_dictionary(), _KINDS, table, frags, info)
    del arr
    if status != _OK:
        return None
    n = int(info[_N])
    rows = table[:, :n].tolist()
    tags, lengths, value_pos = rows[_TAG], rows[_LENGTH], rows[_VALUE]
    info_list = info.tolist()
    pixel_length = info_list[_PIXEL_LENGTH]
    structure = _Structure(
        start=start, end=info_list[_END],
        first_group=None if info_list[_FIRST_GROUP] < 0 else info_list[_FIRST_GROUP],
        n_group_0008=info_list[_N_0008], n_elements=info_list[_N_ELEMENTS], max_depth=info_list[_MAX_DEPTH],
        pixel_tag=None if info_list[_PIXEL_TAG] < 0 else info_list[_PIXEL_TAG],
        pixel_offset=info_list[_PIXEL_OFFSET], pixel_length=None if pixel_length < 0 else pixel_length)
    k = info_list[_N_FRAGS]
    if k:
        structure.fragments = list(zip(frags[0, :k].tolist(), frags[1, :k].tolist(), strict=True))
    values = structure.values
    for tag, length, pos in zip(tags, lengths, value_pos, strict=True):
        if tag in _WANTED and length != _UNDEFINED:
            values[tag] = (pos, length)
    top = TopLevel(start=start, end=info_list[_END], implicit=implicit, switched=bool(info_list[_SWITCHED]),
                   tag=tags, vr=rows[_VR], length=lengths, value_pos=value_pos, header_pos=rows[_HEADER],
                   checks=rows[_CHECKS])
    return structure, top


def warm_up() -> None:
    """Compile (or load from numba's cache) the walk, and build the dictionary tables: once per process."""
    data = (b"\x08\x00\x16\x00UI\x02\x00" b"1\x00")
    walk_little_endian(data, 0, len(data), implicit=False, max_depth=4)


assert set(_PIXEL_TAGS) == {0x7FE00010, 0x7FE00008, 0x7FE00009}  # the walk's constants
