"""Where pydicom's reader ends an undefined-length value (PS3.5 7.5, A.4), compiled.

:mod:`storage.dicom.rawread` keeps an undefined-length sequence encoded (pydicom parses it on
first access) and must know where it ends: just past its Sequence Delimitation Item, found by
skipping its items as pydicom's reader reads them. An undefined-length item is a data set read
element by element: in implicit VR when its first element has no VR although the data set is
explicit (pydicom's reader does so), with pydicom's per-element switch to implicit VR for an
element whose VR bytes are not two capital letters; its own undefined-length values are skipped
the same way. Anything else (a header past the end, a tag that is neither an item nor a
delimiter where one is due, an item tag inside a data set, a length past the end, nesting deeper
than 64 data sets) is not this reader's to decide: -1, and the caller lets pydicom read the file.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["skip_items"]

_MAX_DEPTH = 64
_ITEM_KIND, _DATASET_KIND = 0, 1


@numba.njit(nogil=True, cache=True, inline="always")
def _u16(buf, pos):  # pragma: no cover - compiled
    return np.int64(buf[pos]) | np.int64(buf[pos + 1]) << 8


@numba.njit(nogil=True, cache=True, inline="always")
def _u32(buf, pos):  # pragma: no cover - compiled
    return (np.int64(buf[pos]) | np.int64(buf[pos + 1]) << 8 | np.int64(buf[pos + 2]) << 16
            | np.int64(buf[pos + 3]) << 24)


@numba.njit(nogil=True, cache=True, inline="always")
def _is_vr(buf, pos):  # pragma: no cover - compiled
    return 0x40 < buf[pos] < 0x5B and 0x40 < buf[pos + 1] < 0x5B


@numba.njit(nogil=True, cache=True, inline="always")
def _is_long(buf, pos):  # pragma: no cover - compiled
    a = buf[pos]
    b = buf[pos + 1]
    if a == 0x4F:  # O: OB OD OF OL OV OW
        return b == 0x42 or b == 0x44 or b == 0x46 or b == 0x4C or b == 0x56 or b == 0x57
    if a == 0x53:  # SQ SV
        return b == 0x51 or b == 0x56
    if a == 0x55:  # UC UN UR UT UV
        return b == 0x43 or b == 0x4E or b == 0x52 or b == 0x54 or b == 0x56
    return False


@numba.njit(nogil=True, cache=True)
def _skip(buf, pos, implicit):  # pragma: no cover - compiled
    end = buf.shape[0]
    levels = 2 * _MAX_DEPTH + 4
    kind = np.empty(levels, np.int64)
    imp = np.empty(levels, np.bool_)
    dep = np.empty(levels, np.int64)
    top = 0
    kind[0] = _ITEM_KIND
    imp[0] = implicit
    dep[0] = 0
    while True:
        if kind[top] == _ITEM_KIND:  # a sequence (or fragment stream): items up to its delimiter
            if pos + 8 > end:
                return -1
            tag = _u16(buf, pos) << 16 | _u16(buf, pos + 2)
            length = _u32(buf, pos + 4)
            pos += 8
            if tag == 0xFFFEE0DD:
                if top == 0:
                    return pos
                top -= 1  # back in the data set holding the sequence
                continue
            if tag != 0xFFFEE000:
                return -1
            if length == 0xFFFFFFFF:
                depth = dep[top] + 1
                if depth > _MAX_DEPTH:
                    return -1
                item_implicit = imp[top]
                if not item_implicit and pos + 6 <= end and not _is_vr(buf, pos + 4):
                    item_implicit = True  # an item written in implicit VR inside an explicit data set
                top += 1
                kind[top] = _DATASET_KIND
                imp[top] = item_implicit
                dep[top] = depth
            else:
                pos += length
                if pos > end:
                    return -1
            continue
        # an undefined-length item's data set: elements up to its Item Delimitation Item
        if pos + 8 > end:
            return -1
        group = _u16(buf, pos)
        elem = _u16(buf, pos + 2)
        hlen = 8
        if imp[top] or not _is_vr(buf, pos + 4):  # implicit, or pydicom's per-element switch
            length = _u32(buf, pos + 4)
        elif _is_long(buf, pos + 4):
            if pos + 12 > end:
                return -1
            length = _u32(buf, pos + 8)
            hlen = 12
        else:
            length = _u16(buf, pos + 6)
        pos += hlen
        if group == 0xFFFE and elem == 0xE00D:
            top -= 1  # back in the sequence holding the item
            continue
        if group == 0xFFFE:
            return -1
        if length == 0xFFFFFFFF:
            top += 1
            kind[top] = _ITEM_KIND
            imp[top] = imp[top - 1]
            dep[top] = dep[top - 1]
        else:
            pos += length
            if pos > end:
                return -1


def skip_items(data: bytes, pos: int, *, implicit: bool) -> int:
    """Offset just past the Sequence Delimitation Item of the undefined-length value starting at ``pos``.

    Parameters
    ----------
    data : bytes
        The whole file.
    pos : int
        Offset of the value (its first item header).
    implicit : bool
        The enclosing data set's VR encoding (fragments of encapsulated pixel data: True).

    Returns
    -------
    int
        The offset, or -1 where pydicom must decide (module docstring).
    """
    return int(_skip(np.frombuffer(data, dtype=np.uint8), pos, implicit))


def warm_up() -> None:
    """Compile (or load from numba's cache) the reader: once per process."""
    skip_items(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", 0, implicit=True)
