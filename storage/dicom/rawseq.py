"""Items of a still-encoded sequence, read without building a pydicom data set per item.

A data set from :func:`storage.dicom.rawread.dataset_from_bytes` keeps every sequence as its
encoded bytes; pydicom's ``convert_SQ`` parses one on first access into a ``Dataset`` per item,
each element through its generic element reader, nested sequences included. An RT Structure
Set holds tens of thousands of items (one per contour, one per referenced image, nested three
deep) of which the collection reads a few values: that parse was a fifth of converting one
patient's RTSTRUCT. :func:`sequence_items` returns the items as :class:`RawItem`: each item's
elements unpacked once from the bytes as the same ``RawDataElement`` tuples pydicom's reader
builds (tag, VR, length, value bytes). A nested sequence is kept encoded until it is asked for;
one of undefined length is read through first, as pydicom's reader reads it with its item (so a
damaged element anywhere pydicom would meet it hands the sequence to pydicom, which fails as before),
and the items that reading made are kept with the item: asking for the sequence does not parse its
bytes again (nor, three levels deep, the innermost items once per level above them).
Values are what pydicom gives: one plain US, CS or UI value is decoded as pydicom decodes it
(:func:`storage.dicom.attrs.plain_value`), anything else is read by pydicom from a data set
built of the same raw elements (:meth:`RawItem.dataset`).

It handles the layout the top-level reader handles (little endian; items of the data set's
own VR encoding; defined- or undefined-length items and sequences). Anything else (an item in
the other VR encoding, which pydicom switches to; an undefined-length value that is not a
sequence; a length running past its container; bytes that are not an item where one must
start) makes :func:`sequence_items` return what ``ds.get(keyword)`` returns: pydicom decides.

Standard: PS3.5 7.5 (nesting of data sets), 7.5.1 (item encoding rules), 7.5.2 (delimitation).
"""

from __future__ import annotations

import struct
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from storage.dicom.attrs import NOT_PLAIN, keyword_tag, plain_value
from storage.dicom.guard.common import dictionary_vr
from storage.dicom.rawread import (
    _HHL,
    _ITEM,
    _ITEM_DELIM,
    _L,
    _LONG_VRS,
    _SEQ_DELIM,
    _UNDEFINED,
    _VR_TEXT,
    _empty,
    _HH2sH,
    _is_vr,
    _item_header,
    _Unusual,
)

__all__ = ["RawItem", "sequence_items"]

_CHARSET = 0x00080005
#: Deepest nesting read here (deeper: pydicom decides; the guard refuses far shallower nesting first)
_MAX_DEPTH = 64


class RawItem:
    """One sequence item, its elements raw (``{tag: RawDataElement}``), read like ``Dataset.get``.

    Parameters
    ----------
    elements : dict
        The item's elements as pydicom's reader records them.
    encoding : str or list of str
        The character set the item inherits (its parent data set's).
    implicit : bool
        The item's VR encoding.
    """

    __slots__ = ("_elements", "_encoding", "_implicit", "_dataset", "_nested")

    def __init__(self, elements: dict[BaseTag, RawDataElement], encoding: Any, implicit: bool,
                 nested: dict[int, list[RawItem]] | None = None) -> None:
        self._elements = elements
        self._encoding = encoding
        self._implicit = implicit
        self._dataset: Dataset | None = None
        #: the items of nested sequences already parsed from these bytes (by the read-through or a ``get``)
        self._nested: dict[int, list[RawItem]] = nested if nested is not None else {}

    def __contains__(self, keyword: str) -> bool:
        tag = keyword_tag(keyword)
        return tag is not None and tag in self._elements

    def tags(self) -> list[BaseTag]:
        """The item's tags, in the order of the bytes."""
        return list(self._elements)

    def raw(self, tag: int) -> RawDataElement | None:
        """The element ``tag`` as read from the bytes (not converted), or None."""
        return self._elements.get(tag)  # type: ignore[call-overload]

    def get(self, keyword: str, default: Any = None) -> Any:
        """``Dataset.get(keyword, default)`` of the same item; a sequence comes back as a list of items.

        A nested sequence still encoded is returned as :class:`RawItem` objects (when its bytes
        are in the layout read here), else as pydicom's ``Sequence`` of data sets.
        """
        tag = keyword_tag(keyword)
        if tag is None or _CHARSET in self._elements:  # not a keyword, or an item with its own character set
            return self.dataset().get(keyword, default)
        elem = self._elements.get(tag)
        if elem is None:
            return default
        if (elem.VR or dictionary_vr(int(tag))) == "SQ" and isinstance(elem.value, bytes):
            items = self._nested.get(tag)
            if items is None:
                items = _parse(elem, self._encoding)
                if items is not None:
                    self._nested[tag] = items
            if items is not None:
                return list(items)  # (a list of the caller's own, as each parse gave)
        else:
            value = plain_value(elem, int(tag))
            if value is not NOT_PLAIN:
                return value
        return self.dataset().get(keyword, default)

    def dataset(self) -> Dataset:
        """The item as the ``Dataset`` pydicom's sequence reader builds of these elements (made once)."""
        if self._dataset is None:
            from pydicom.charset import convert_encodings
            from pydicom.dataelem import convert_raw_data_element

            ds = Dataset(dict(self._elements), parent_encoding=self._encoding)
            charset = self._elements.get(_CHARSET)  # type: ignore[call-overload]
            encoding = convert_encodings(convert_raw_data_element(charset).value) if charset is not None \
                else self._encoding
            ds.set_original_encoding(self._implicit, True, encoding)
            self._dataset = ds
        return self._dataset


def sequence_items(ds: Any, keyword: str) -> list:
    """The items of the top-level sequence ``keyword`` of ``ds`` (``ds.get(keyword) or []``).

    Parameters
    ----------
    ds : pydicom.Dataset
    keyword : str
        A sequence's keyword (PS3.6).

    Returns
    -------
    list
        :class:`RawItem` objects when the sequence is still encoded in the layout read here
        (the data set itself is not changed), else the ``Dataset`` items pydicom gives.
    """
    tag = keyword_tag(keyword)
    elem = None if tag is None else ds._dict.get(tag)
    if isinstance(elem, RawDataElement) and elem.is_little_endian and isinstance(elem.value, bytes) \
            and (elem.VR or dictionary_vr(int(tag))) == "SQ":
        from pydicom.charset import default_encoding

        items = _parse(elem, ds._character_set or [default_encoding])
        if items is not None:
            return items
    return ds.get(keyword) or []


def _parse(elem: RawDataElement, encoding: Any) -> list | None:
    """The items of an encoded sequence element, or None when its bytes are not in the layout read here."""
    data = elem.value
    if not data:
        return []
    try:
        items, pos = _items(data, 0, len(data), undefined=elem.length == _UNDEFINED, implicit=elem.is_implicit_VR,
                            base=elem.value_tell or 0, encoding=encoding, depth=0)
    except (_Unusual, struct.error):
        return None
    if pos != len(data):
        return None  # bytes after the delimiter: pydicom's reader stops there; let it decide
    return items


def _items(data: bytes, pos: int, end: int, *, undefined: bool, implicit: bool, base: int, encoding: Any,
           depth: int) -> tuple[list[RawItem], int]:
    """The items of the sequence value at ``pos``: up to ``end`` (defined length) or its delimiter; the offset after."""
    if depth > _MAX_DEPTH:
        raise _Unusual
    out = []
    while pos < end:
        tag, length, pos = _item_header(data, pos, end)
        if tag == _SEQ_DELIM:
            return out, pos
        if tag != _ITEM:
            raise _Unusual
        stop = None if length == _UNDEFINED else pos + length
        if stop is not None and stop > end:
            raise _Unusual
        elements, nested, pos = _elements(data, pos, stop, end, implicit=implicit, base=base, encoding=encoding,
                                          depth=depth)
        out.append(RawItem(elements, encoding, implicit, nested))
    if undefined:
        raise _Unusual  # an undefined-length value without its delimiter
    return out, pos


def _elements(data: bytes, pos: int, stop: int | None, end: int, *, implicit: bool, base: int, encoding: Any,
              depth: int) -> tuple[dict[BaseTag, RawDataElement], dict[int, list[RawItem]], int]:
    """The elements of one item from ``pos`` (to ``stop``, or to its Item Delimitation Item), the items of its
    nested sequences read through, and the offset after it.

    A nested sequence of undefined length is read through here as well (pydicom's reader parses it with the
    item, so an element it could not read fails the item), and kept encoded, with the items read (what
    :func:`_parse` of the kept element gives: the same bytes, the same offsets); one of defined length is
    kept encoded unread, as pydicom keeps it until it is accessed.
    """
    limit = end if stop is None else stop
    if not implicit and pos + 6 <= limit and data[pos:pos + 2] != b"\xfe\xff" and not _is_vr(data[pos + 4:pos + 6]):
        raise _Unusual  # an implicit-VR item in an explicit data set: pydicom switches encoding for it
    elements: dict[BaseTag, RawDataElement] = {}
    nested: dict[int, list[RawItem]] = {}
    while True:
        if stop is not None and pos == stop:
            return elements, nested, pos
        if pos + 8 > limit:
            raise _Unusual
        if data[pos:pos + 2] == b"\xfe\xff":  # an item-level tag: only the delimiter of an undefined-length item
            tag, length, pos = _item_header(data, pos, limit)
            if stop is not None or tag != _ITEM_DELIM or length != 0:
                raise _Unusual
            return elements, nested, pos
        if implicit:
            group, el, length = _HHL.unpack_from(data, pos)
            vr = None
            value_pos = pos + 8
        else:
            group, el, vrb, length = _HH2sH.unpack_from(data, pos)
            vr = _VR_TEXT.get(vrb)
            if vr is None:
                raise _Unusual
            if vrb in _LONG_VRS:
                if pos + 12 > limit:
                    raise _Unusual
                length = _L.unpack_from(data, pos + 8)[0]
                value_pos = pos + 12
            else:
                value_pos = pos + 8
        tag = BaseTag(group << 16 | el)
        if length == _UNDEFINED:
            if (vr or dictionary_vr(int(tag))) != "SQ":
                raise _Unusual  # undefined-length UN or private data: pydicom's reader decides
            items, pos = _items(data, value_pos, limit, undefined=True, implicit=implicit, base=base,
                                encoding=encoding, depth=depth + 1)
            # kept encoded, delimiter included, as the top-level reader keeps a sequence
            elements[tag] = RawDataElement(tag, "SQ" if vr is None else vr, _UNDEFINED, data[value_pos:pos],
                                           base + value_pos, implicit, True)
            nested[tag] = items
            continue
        pos = value_pos + length
        if pos > limit:
            raise _Unusual
        value = data[value_pos:pos] if length else _empty(vr)
        elements[tag] = RawDataElement(tag, vr, length, value, base + value_pos, implicit, True)
        if nested:
            nested.pop(tag, None)  # a repeated tag: the last element is the item's, not the items read before
