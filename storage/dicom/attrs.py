"""Top-level attribute values of a pydicom data set, read the way ``ds.get(keyword, default)`` reads them.

``Dataset.get`` resolves the keyword, builds a tag and goes through ``__getattr__`` and
``__getitem__`` on every call (about 2.5 us); the collection reads some 50 attributes per file,
most of them several times. :func:`attr` returns the same value from the data set's element
dictionary (about 0.5 us once the element is converted). An element still in its raw form is
converted by pydicom itself (``ds[tag]``, which stores the converted element, as ``ds.get`` does),
except the plainest cases, whose value is decoded here exactly as pydicom decodes it
(PS3.5 6.2): one little-endian US value (``int``), one ASCII CS value (``str``, trailing
spaces and NULs removed; pydicom's ``convert_string`` / ``multi_string``) and one ASCII UI
value (``pydicom.uid.UID`` of the text without trailing NULs and spaces; ``convert_UI``).
Those are about half of the values a CT slice's collection reads.

:func:`numbers` is the reader of decimal (DS) values that are only used as numbers (plane
geometry, rescale): a raw value whose every part is a well-formed decimal is returned as the
``float`` (or tuple of floats) that ``float()`` of pydicom's ``DSfloat`` values gives, without
converting (and storing) the element: pydicom's DS conversion builds one ``DSfloat`` per number
through its validation (about 20 us per element), the bytes parse in about 2 us.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from pydicom import config
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag

from storage.dicom.guard.common import dictionary_vr

__all__ = ["attr", "numbers", "decimal_parts", "plain_value", "keyword_tag", "canonical_tag", "NOT_PLAIN"]

#: :func:`plain_value`'s answer for a value it does not decode itself
NOT_PLAIN = object()


class _Tags(dict):
    """One ``BaseTag`` per int tag in this process (:func:`canonical_tag`)."""

    def __missing__(self, tag: int) -> BaseTag:
        if len(self) > 1 << 16:  # private or odd tags without end: bounded
            self.clear()
        value = self[tag] = BaseTag(tag)
        return value


#: ``canonical_tag``'s table; ``_TAGS.__getitem__`` is the same function for ``map``
_TAGS = _Tags()
#: The one ``BaseTag`` of an int tag this process uses (made on first use). A data set's element dictionary is
#: keyed by ``BaseTag``, an ``int`` subclass whose equality method is written in Python: a lookup with another
#: object of the same value calls it (about 0.2 us), a lookup with the very object the dictionary holds does not
#: (identity is tried first). :mod:`storage.dicom.rawread` keys the data sets it builds with these objects, and
#: :func:`keyword_tag` answers with them.
canonical_tag = _TAGS.__getitem__


@functools.lru_cache(maxsize=1024)
def keyword_tag(keyword: str) -> BaseTag | None:
    """The tag of a DICOM keyword (PS3.6) as :func:`canonical_tag` gives it, or None for anything else."""
    tag = tag_for_keyword(keyword)
    return None if tag is None else canonical_tag(tag)


def plain_value(raw: RawDataElement, tag: int) -> Any:
    """The value pydicom's conversion gives ``raw`` when it is one plain US, CS or UI value, else :data:`NOT_PLAIN`."""
    value = raw.value
    if not value or not raw.is_little_endian or not isinstance(value, bytes):
        return NOT_PLAIN
    vr = raw.VR or dictionary_vr(tag)  # implicit VR: the dictionary's (what pydicom's hook takes)
    if vr == "US":
        return value[0] | value[1] << 8 if len(value) == 2 else NOT_PLAIN
    if vr == "CS" and b"\\" not in value and value.isascii():
        return value.decode("ascii").rstrip(" \x00")
    if vr == "UI" and b"\\" not in value and value.isascii():
        text = value.decode("ascii").rstrip("\x00 ")
        uid = _valid_uid(text)
        if uid is not None:
            return uid
        from pydicom.uid import UID

        return UID(text)  # validated (and warned about, or raised for) as pydicom does
    return NOT_PLAIN


@functools.lru_cache(maxsize=1 << 16)
def _valid_uid(text: str) -> Any:
    """``UID(text)`` when pydicom's UI validator accepts ``text`` (UID then only strips it), else None.

    One validation per distinct UID: a series repeats its study, series, class and frame-of-reference
    UIDs in every file, a structure set its referenced image UIDs in every contour. A value the validator
    refuses is not cached: ``UID(text)`` warns about it (or raises) on every read, as pydicom does.
    """
    from pydicom.uid import UID
    from pydicom.valuerep import VALIDATORS

    validator = VALIDATORS.get("UI")
    if validator is None or not validator("UI", text)[0]:
        return None
    return str.__new__(UID, text.strip())  # what UID.__new__ returns once validation has passed


def attr(ds: Any, keyword: str, default: Any = None) -> Any:
    """``ds.get(keyword, default)`` for a DICOM keyword (PS3.6), with less overhead per call.

    Raises whatever pydicom raises converting the element's raw value (as ``ds.get`` does).
    """
    tag = keyword_tag(keyword)
    if tag is None:
        return ds.get(keyword, default)  # not a DICOM keyword: pydicom's own lookup (class attributes)
    elem = ds._dict.get(tag)
    if elem is None:
        return default
    if isinstance(elem, RawDataElement):
        value = plain_value(elem, int(tag))
        if value is not NOT_PLAIN:
            return value
        elem = ds[tag]
    return elem.value


_NUM = rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
#: a raw DS value of one or more numbers, each part non-empty (PS3.5 6.2), padded at the end with spaces or NULs
_DS_NUMBERS = re.compile(rb" *%s *(?:\\ *%s *)*[ \x00]*" % (_NUM, _NUM))


def _ds_defaults() -> bool:
    """pydicom converts DS values to ``DSfloat`` and only warns about their length (its reading defaults)."""
    return not config.use_DS_numpy and not config.use_DS_decimal and \
        config.settings.reading_validation_mode != config.RAISE


def decimal_parts(ds: Any, tag: BaseTag) -> list[bytes] | None:
    """The parts of a top-level raw DS value of ``ds`` that is one or more decimal numbers, else None.

    The bytes :func:`numbers` reads without converting the element: a value still raw, DS (explicit, or
    the dictionary's VR), every backslash-separated part a decimal number, pydicom at its DS defaults.
    None for anything else (absent, converted, another VR, empty or malformed, numpy/Decimal DS values).
    """
    elem = ds._dict.get(tag)
    if isinstance(elem, RawDataElement):
        value = elem.value
        if isinstance(value, bytes) and value and (elem.VR or dictionary_vr(int(tag))) == "DS" \
                and _DS_NUMBERS.fullmatch(value) is not None and _ds_defaults():
            return value.rstrip(b" \x00").split(b"\\")
    return None


def numbers(ds: Any, keyword: str, default: Any = None) -> Any:
    """``attr(ds, keyword, default)`` for a value that is used only as numbers.

    A top-level DS element still in its raw form whose every part is a decimal number is read
    from its bytes (:func:`decimal_parts`): one ``float`` for one value, a tuple of floats for several,
    equal to ``float(v)`` of each ``DSfloat`` pydicom's conversion gives (pydicom decodes, strips, splits on
    backslashes and calls ``float`` on each part: the same correctly rounded parse). The element
    is left raw. Anything else (another VR, an empty or malformed value, pydicom configured to
    return numpy or Decimal values or to raise on long values) is :func:`attr`'s value.
    """
    tag = keyword_tag(keyword)
    parts = None if tag is None else decimal_parts(ds, tag)
    if parts is not None:
        return float(parts[0]) if len(parts) == 1 else tuple(float(p) for p in parts)
    return attr(ds, keyword, default)
