"""Top-level attribute values of a pydicom data set, read the way ``ds.get(keyword, default)`` reads them.

``Dataset.get`` resolves the keyword, builds a tag and goes through ``__getattr__`` and
``__getitem__`` on every call (about 2.5 us); the collection reads some 50 attributes per file,
most of them several times. :func:`attr` returns the same value from the data set's element
dictionary (about 0.5 us once the element is converted). An element still in its raw form is
converted by pydicom itself (``ds[tag]``, which stores the converted element, as ``ds.get`` does),
except the two plainest cases, whose value is decoded here exactly as pydicom decodes it
(PS3.5 6.2): one little-endian US value (``int``) and one ASCII CS value (``str``, trailing
spaces and NULs removed; pydicom's ``convert_string`` / ``multi_string``). Those are about a
third of the values a CT slice's collection reads.
"""

from __future__ import annotations

import functools
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag

from storage.dicom.guard.common import dictionary_vr

__all__ = ["attr"]

_NOT_PLAIN = object()


@functools.lru_cache(maxsize=1024)
def _tag(keyword: str) -> BaseTag | None:
    tag = tag_for_keyword(keyword)
    return None if tag is None else BaseTag(tag)


def _plain(raw: RawDataElement, tag: int) -> Any:
    """The value pydicom's conversion gives ``raw`` when it is one plain US or CS value, else ``_NOT_PLAIN``."""
    value = raw.value
    if not value or not raw.is_little_endian or not isinstance(value, bytes):
        return _NOT_PLAIN
    vr = raw.VR or dictionary_vr(tag)  # implicit VR: the dictionary's (what pydicom's hook takes)
    if vr == "US":
        return value[0] | value[1] << 8 if len(value) == 2 else _NOT_PLAIN
    if vr == "CS" and b"\\" not in value and value.isascii():
        return value.decode("ascii").rstrip(" \x00")
    return _NOT_PLAIN


def attr(ds: Any, keyword: str, default: Any = None) -> Any:
    """``ds.get(keyword, default)`` for a DICOM keyword (PS3.6), with less overhead per call.

    Raises whatever pydicom raises converting the element's raw value (as ``ds.get`` does).
    """
    tag = _tag(keyword)
    if tag is None:
        return ds.get(keyword, default)  # not a DICOM keyword: pydicom's own lookup (class attributes)
    elem = ds._dict.get(tag)
    if elem is None:
        return default
    if isinstance(elem, RawDataElement):
        value = _plain(elem, int(tag))
        if value is not _NOT_PLAIN:
            return value
        elem = ds[tag]
    return elem.value
