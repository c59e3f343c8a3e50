"""A pydicom data set from a Part 10 file's bytes in one pass over its top-level elements.

``pydicom.dcmread`` parses every undefined-length sequence eagerly, item by item, and
a full-conversion pass then decodes every value; on a cohort of CT/PET/MR slices that
was about half of collection's CPU time. :func:`dataset_from_bytes` builds the same
:class:`pydicom.dataset.FileDataset` (the same tags, VRs, raw values, value offsets,
file meta, preamble and original encoding) from one walk over the top-level elements:
values stay raw and are converted by pydicom when they are first accessed, and an
undefined-length sequence is kept as its encoded bytes (pydicom's own ``convert_SQ``
parses it on access, exactly as ``dcmread`` would have at read time).

It handles the layout nearly every archive holds: a 128-byte preamble, ``DICM``, an
Explicit VR Little Endian File Meta group with its group length, then an Implicit or
Explicit VR Little Endian data set (native or encapsulated pixel data). Anything else
(no preamble, deflate, big endian, a data set whose encoding contradicts its transfer
syntax, an undefined-length element that is neither a sequence nor top-level pixel
data, any inconsistency at all) returns ``None`` and the caller uses ``dcmread``:
this module never decides that a file is bad, the guard and pydicom do.

:func:`unconvertible_elements` is the cheap counterpart of "convert every top-level
value": values whose conversion cannot fail (ASCII text, binary values of a whole
number of items, well-formed DS/IS strings, sequences whose structure the guard has
walked) are not converted; every other value is converted by pydicom, so a value that
cannot be decoded under its VR is found exactly as before.

Standard: PS3.10 7.1 (File Meta Information), PS3.5 7.1 (data elements), 7.5 (nesting
of data sets), A.4 (encapsulated pixel data).
"""

from __future__ import annotations

import functools
import itertools
import operator
import re
import struct
from typing import TYPE_CHECKING

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.tag import BaseTag

from storage.dicom.attrs import canonical_tag
from storage.dicom.guard.common import ITEM_SIZES, TEXT_VRS, dictionary_vr
from storage.dicom.guard.fastwalk import CHECK_DS, CHECK_VALUE
from storage.dicom.rawskip import skip_items

if TYPE_CHECKING:
    from storage.dicom.guard.fastwalk import TopLevel

__all__ = ["dataset_from_bytes", "unconvertible_elements", "value_checks", "VALUE_CHECKS"]

#: Attribute of a data set built from the guard's table: ``(number of top-level elements when read,
#: tags whose value the ingest's value check must look at, tags that are or may become DS)`` (the
#: compiled walk's :data:`~storage.dicom.guard.fastwalk.CHECK_VALUE` and ``CHECK_DS`` bits).
VALUE_CHECKS = "_medflow_value_checks"


def value_checks(ds: Dataset, which: int) -> list | None:
    """The tags the reader recorded for ``which`` (1: value check, 2: DS check), or None (look at every element).

    None as well when the data set no longer holds as many top-level elements as when it was read.
    """
    checks = ds.__dict__.get(VALUE_CHECKS)
    if checks is None or checks[0] != len(ds._dict):
        return None
    return checks[which]

_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
#: Transfer syntaxes whose data set is not Explicit VR Little Endian (besides implicit LE): left to pydicom.
_NOT_EXPLICIT_LE = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_DELIM = 0xFFFEE00D
_SEQ_DELIM = 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_CHARSET = 0x00080005

_HHL = struct.Struct("<HHL")
_HH2sH = struct.Struct("<HH2sH")
_L = struct.Struct("<L")


class _Unusual(Exception):
    """Internal: the bytes are not in the layout this module handles (the caller uses pydicom)."""


def _is_vr(vr: bytes) -> bool:
    return 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B


#: Every two-capital-letter VR as bytes -> str (what pydicom accepts as an explicit VR without switching).
_VR_TEXT = {bytes((a, b)): chr(a) + chr(b) for a in range(0x41, 0x5B) for b in range(0x41, 0x5B)}
#: The same VRs by the compiled walk's code (``b0 << 8 | b1``, :class:`storage.dicom.guard.fastwalk.TopLevel`).
_VR_BY_CODE = {a << 8 | b: chr(a) + chr(b) for a in range(0x41, 0x5B) for b in range(0x41, 0x5B)}


def _item_header(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Tag and length of the item-level header (item or delimiter, PS3.5 7.5) at ``pos``; the offset after it."""
    if pos + 8 > end:
        raise _Unusual
    group, elem, length = _HHL.unpack_from(data, pos)
    return group << 16 | elem, length, pos + 8


def _skip_items(data: bytes, pos: int, *, implicit: bool) -> int:
    """Offset just past the Sequence Delimitation Item of the undefined-length value starting at ``pos``.

    As pydicom's reader skips it (:func:`storage.dicom.rawskip.skip_items`, compiled); :class:`_Unusual`
    where pydicom must decide.
    """
    stop = skip_items(data, pos, implicit=implicit)
    if stop < 0:
        raise _Unusual
    return stop


def _meta(data: bytes) -> tuple[FileMetaDataset, int]:
    """The File Meta group (explicit VR little endian, PS3.10 7.1) and the offset after it."""
    if len(data) < 144 or data[128:132] != b"DICM" or data[132:138] != b"\x02\x00\x00\x00UL":
        raise _Unusual
    if data[138:140] != b"\x04\x00":
        raise _Unusual
    group_length = _L.unpack_from(data, 140)[0]
    stop = 144 + group_length
    if stop > len(data):
        raise _Unusual
    elements: dict[BaseTag, RawDataElement] = {}
    pos = 132
    while pos < stop:
        if pos + 8 > stop:
            raise _Unusual
        group, elem, vr, length = _HH2sH.unpack_from(data, pos)
        if group != 0x0002 or not _is_vr(vr):
            raise _Unusual
        hlen = 8
        if vr in _LONG_VRS:
            length = _L.unpack_from(data, pos + 8)[0]
            hlen = 12
        value_pos = pos + hlen
        if length == _UNDEFINED or value_pos + length > stop:
            raise _Unusual
        tag = canonical_tag(group << 16 | elem)
        text = _VR_TEXT[vr]
        elements[tag] = RawDataElement(tag, text, length, data[value_pos:value_pos + length] if length
                                       else _empty(text), value_pos, False, True)
        pos = value_pos + length
    if pos != stop or (pos + 2 <= len(data) and data[pos:pos + 2] == b"\x02\x00"):
        raise _Unusual  # a group length that does not end the group: pydicom reads on by tag
    meta = _new_meta(elements)  # (a dict: shared, not copied; what dcmread's meta reader builds)
    return meta, stop


@functools.lru_cache(maxsize=64)
def _empty(vr: str | None):
    """pydicom's raw empty value for ``vr`` (immutable: bytes or None)."""
    from pydicom.dataelem import empty_value_for_VR

    return empty_value_for_VR(vr, raw=True)


# --------------------------------------------------------------------------- construction

def _attributes(obj) -> dict:
    """The instance attributes of a pydicom data set, the element dictionary, buffer and file meta left out."""
    return {k: v for k, v in vars(obj).items() if k not in ("_dict", "buffer", "file_meta")}


@functools.cache
def _templates() -> tuple[dict, list[str], dict, list[str]] | None:
    """Instance attributes pydicom's constructors give a read :class:`FileMetaDataset` and :class:`FileDataset`.

    ``Dataset.__init__`` sets a dozen attributes through ``Dataset.__setattr__`` (which first asks whether
    each name is a DICOM keyword): about a fifth of building a slice's data set. They are the same for every
    file read here but for the element dictionary, the preamble, the file meta, the buffer and the VR
    encoding, so they are taken once from instances pydicom builds (mutable values copied per data set) and
    checked: built by :func:`_new_meta` / :func:`_new_file_dataset`, a data set of each encoding must carry
    exactly the attributes (in the same order) pydicom's constructors give it. None (pydicom's constructors are used) when not.
    """
    from io import BytesIO

    meta = FileMetaDataset({})
    meta.set_original_encoding(is_implicit_vr=False, is_little_endian=True, character_encoding="iso8859")
    fds = FileDataset(BytesIO(b""), {}, b"", meta, True, True)
    m_tpl, f_tpl = dict(vars(meta)), dict(vars(fds))  # (in pydicom's order: the placeholders are replaced)
    m_mut = [k for k, v in m_tpl.items() if isinstance(v, dict | list | set) and k != "_dict"]
    f_mut = [k for k, v in f_tpl.items() if isinstance(v, dict | list | set) and k != "_dict"]
    found = (m_tpl, m_mut, f_tpl, f_mut)
    for implicit in (True, False):
        buf = BytesIO(b"")
        ref_meta = FileMetaDataset({})
        ref_meta.set_original_encoding(is_implicit_vr=False, is_little_endian=True, character_encoding="iso8859")
        ref = FileDataset(buf, {}, b"\0" * 128, ref_meta, implicit, True)
        new = _new_file_dataset(buf, {}, b"\0" * 128, _new_meta({}, found), implicit, found)
        if type(new) is not FileDataset or type(new.file_meta) is not FileMetaDataset or \
                _attributes(new) != _attributes(ref) or _attributes(new.file_meta) != _attributes(ref_meta) or \
                list(vars(new)) != list(vars(ref)) or list(vars(new.file_meta)) != list(vars(ref_meta)) or \
                new.buffer is not buf or new._dict is ref._dict:
            return None
    return found


def _new_meta(elements: dict, templates: tuple | None = None) -> FileMetaDataset:
    """``FileMetaDataset(elements)`` read as Explicit VR Little Endian (``dcmread``'s file meta), built cheaply."""
    tpl = templates or _templates()
    if tpl is None:
        meta = FileMetaDataset(elements)
        meta.set_original_encoding(is_implicit_vr=False, is_little_endian=True, character_encoding="iso8859")
        return meta
    m_tpl, m_mut = tpl[0], tpl[1]
    attrs = m_tpl.copy()
    for k in m_mut:
        attrs[k] = m_tpl[k].copy()
    attrs["_dict"] = elements
    meta = object.__new__(FileMetaDataset)
    object.__setattr__(meta, "__dict__", attrs)
    return meta


def _new_file_dataset(buffer, elements: dict, preamble: bytes, meta: FileMetaDataset, implicit: bool,
                      templates: tuple | None = None) -> FileDataset:
    """``FileDataset(buffer, elements, preamble, meta, implicit, True)``, built cheaply (:func:`_templates`)."""
    tpl = templates or _templates()
    if tpl is None:
        return FileDataset(buffer, elements, preamble, meta, implicit, True)
    f_tpl, f_mut = tpl[2], tpl[3]
    attrs = f_tpl.copy()
    for k in f_mut:
        attrs[k] = f_tpl[k].copy()
    attrs["_dict"] = elements
    attrs["preamble"] = preamble
    attrs["file_meta"] = meta
    attrs["_read_implicit"] = implicit
    if "_is_implicit_VR" in attrs:
        attrs["_is_implicit_VR"] = implicit
    attrs["buffer"] = buffer
    attrs["fileobj_type"] = type(buffer)
    fds = object.__new__(FileDataset)
    object.__setattr__(fds, "__dict__", attrs)
    return fds


def dataset_from_bytes(data: bytes, *, top: TopLevel | None = None) -> FileDataset | None:
    """The :class:`~pydicom.dataset.FileDataset` ``pydicom.dcmread`` would return for ``data``, or None.

    Parameters
    ----------
    data : bytes
        A whole Part 10 file.
    top : TopLevel, optional
        The top-level element headers of ``data`` as the guard's compiled walk recorded them
        (:attr:`storage.dicom.guard.FileInspection.top_level`): used instead of unpacking the
        headers again when they describe the data set this reader finds (same start, end and
        encoding, no element switched to implicit VR).

    Returns
    -------
    FileDataset or None
        ``None`` when ``data`` is not in the layout this module handles (module docstring);
        the caller then reads it with pydicom. Values are raw until accessed.
    """
    try:
        return _dataset(data, top)
    except (_Unusual, struct.error, UnicodeDecodeError):
        return None


def _undefined(data: bytes, tag: BaseTag, vr: str | None, value_pos: int, implicit: bool,
               elements: dict[BaseTag, RawDataElement]) -> int:
    """Record an undefined-length top-level element (pixel data or a sequence); the offset after it."""
    if tag == _PIXEL_DATA and vr in (None, "OB", "OW"):
        stop = _skip_items(data, value_pos, implicit=True)  # fragments are always item-encoded
        if data[stop - 4:stop] != b"\x00\x00\x00\x00" or data.find(b"\xfe\xff\xdd\xe0", value_pos) != stop - 8:
            raise _Unusual  # pydicom ends the value at the first delimiter byte pattern, even inside a fragment
        elements[tag] = RawDataElement(tag, vr, _UNDEFINED, data[value_pos:stop - 8], value_pos, implicit, True)
        return stop
    if vr != "SQ":
        if vr is not None:
            raise _Unusual
        from pydicom.datadict import dictionary_VR

        try:
            if dictionary_VR(tag) != "SQ":
                raise _Unusual
        except KeyError:
            raise _Unusual from None
    stop = _skip_items(data, value_pos, implicit=implicit)
    # kept encoded, delimiter included: pydicom's convert_SQ parses it on first access
    elements[tag] = RawDataElement(tag, "SQ", _UNDEFINED, data[value_pos:stop], value_pos, implicit, True)
    return stop


def _dataset(data: bytes, top: TopLevel | None = None) -> FileDataset:
    from io import BytesIO

    meta, pos = _meta(data)
    ts_raw = meta.get_item(0x00020010)
    if ts_raw is None or not ts_raw.value:
        raise _Unusual
    ts = ts_raw.value.decode("ascii").strip("\x00 ")
    if ts in _NOT_EXPLICIT_LE:
        raise _Unusual
    implicit = ts == _IMPLICIT_LE
    end = len(data)
    if pos + 8 > end:
        raise _Unusual  # no data set (pydicom then reports implicit VR little endian): let pydicom read it
    found_implicit = not _is_vr(data[pos + 4:pos + 6])
    if found_implicit != implicit or data[pos:pos + 2] == b"\x00\x00":
        raise _Unusual  # pydicom switches encoding here (with a warning), or reads a command set: let it
    checks = None
    if top is not None and top.start == pos and top.end == end and top.implicit == implicit and not top.switched:
        elements, encoding = _elements_from_table(data, top)
        if len(elements) == len(top.tag):  # (a repeated tag: the file-order loop built them)
            keys = list(elements)
            flags = top.checks
            checks = (len(keys), list(itertools.compress(keys, map(CHECK_VALUE.__and__, flags))),
                      list(itertools.compress(keys, map(CHECK_DS.__and__, flags))))
    else:
        elements, encoding = _elements(data, pos, end, implicit)
    fds = _new_file_dataset(BytesIO(data), elements, data[:128], meta, implicit)  # (the dict is shared)
    if checks is not None:
        object.__setattr__(fds, VALUE_CHECKS, checks)
    charset = elements.get(_CHARSET)  # type: ignore[call-overload]
    # ``_character_set`` converts the element; the encoding read above is its value when the VR is CS
    fds.set_original_encoding(implicit, True, encoding if charset is None or charset.VR in (None, "CS")
                              else fds._character_set)
    return fds


def _charset_encoding(value: bytes | None) -> str | list[str]:
    """pydicom's Python encodings for a raw Specific Character Set value (a copy: the caller may keep it)."""
    encodings = _charset_encodings(bytes(value or b""))
    return encodings if isinstance(encodings, str) else list(encodings)


@functools.lru_cache(maxsize=256)
def _charset_encodings(value: bytes) -> str | tuple[str, ...]:
    """Memoised :func:`_charset_encoding` (a cohort names a handful of character sets in every file)."""
    from pydicom.charset import convert_encodings
    from pydicom.values import convert_string

    encodings = convert_encodings(convert_string(value, True))
    return encodings if isinstance(encodings, str) else tuple(encodings)


def _elements_from_table(data: bytes, top: TopLevel) -> tuple[dict[BaseTag, RawDataElement], str | list[str]]:
    """The raw elements from the compiled walk's table (the headers it unpacked; values sliced from ``data``).

    The same ``RawDataElement`` tuples as :func:`_elements` builds (``is_raw`` True, ``is_buffered``
    False: the namedtuple's defaults), built by C-level ``map`` calls over the table's columns.
    """
    implicit = top.implicit
    tags, lengths, value_pos = top.tag, top.length, top.value_pos
    n = len(tags)
    if n and min(tags) < 0x00030000 and any(t >> 16 == 0x0002 for t in tags):
        raise _Unusual  # File Meta elements in the data set (item tags never reach the table)
    keys = list(map(canonical_tag, tags))  # (identical keys: lookups by keyword_tag skip BaseTag.__eq__)
    vrs = [None] * n if implicit else list(map(_VR_BY_CODE.__getitem__, top.vr))
    values = list(map(data.__getitem__, map(slice, value_pos, map(operator.add, value_pos, lengths))))
    elements = dict(zip(keys, map(tuple.__new__, itertools.repeat(RawDataElement), zip(
        keys, vrs, lengths, values, value_pos, itertools.repeat(implicit), itertools.repeat(True),
        itertools.repeat(True), itertools.repeat(False))), strict=True))
    if len(elements) != n:
        return _elements(data, top.start, top.end, implicit)  # a repeated tag: the file-order loop decides
    special = [i for i, length in enumerate(lengths) if length == 0 or length == _UNDEFINED]
    if special:
        header_pos = top.header_pos
        for i in special:
            tag, vr = keys[i], vrs[i]
            if lengths[i] == 0:
                elements[tag] = RawDataElement(tag, vr, 0, _empty(vr), value_pos[i], implicit, True)
                continue
            stop = _undefined(data, tag, vr, value_pos[i], implicit, elements)
            if stop != (header_pos[i + 1] if i + 1 < n else top.end):
                raise _Unusual  # the guard's walk and pydicom's reading end the value differently: let pydicom
    encoding: str | list[str] = "iso8859"
    charset = elements.get(_CHARSET)  # type: ignore[call-overload]
    if charset is not None:
        encoding = _charset_encoding(charset.value)
    return elements, encoding


def _elements(data: bytes, pos: int, end: int, implicit: bool) -> tuple[dict[BaseTag, RawDataElement],
                                                                         str | list[str]]:
    """The raw elements of the data set from ``pos`` to ``end``, their headers unpacked here."""
    elements: dict[BaseTag, RawDataElement] = {}
    encoding: str | list[str] = "iso8859"
    unpack_implicit, unpack_explicit, unpack_long = _HHL.unpack_from, _HH2sH.unpack_from, _L.unpack_from
    vr_text, long_vrs, raw_element, base_tag = _VR_TEXT, _LONG_VRS, RawDataElement, canonical_tag
    vr = None
    while pos < end:
        if pos + 8 > end:
            raise _Unusual  # pydicom stops silently at a partial header: keep its exact behaviour
        if implicit:
            group, elem, length = unpack_implicit(data, pos)
            value_pos = pos + 8
        else:
            group, elem, vrb, length = unpack_explicit(data, pos)
            vr = vr_text.get(vrb)
            if vr is None:
                raise _Unusual
            if vrb in long_vrs:
                if pos + 12 > end:
                    raise _Unusual
                length = unpack_long(data, pos + 8)[0]
                value_pos = pos + 12
            else:
                value_pos = pos + 8
        if group == 0xFFFE or group == 0x0002:
            raise _Unusual  # item tags at the top level, or File Meta elements in the data set
        itag = group << 16 | elem
        tag = base_tag(itag)
        if length == _UNDEFINED:
            pos = _undefined(data, tag, vr, value_pos, implicit, elements)
            continue
        pos = value_pos + length
        if pos > end:
            raise _Unusual  # pydicom's EOF handling is subtle (warn, keep a short value): let it decide
        if length:
            value = data[value_pos:pos]
        else:
            value = _empty(vr)
        if itag == _CHARSET:
            encoding = _charset_encoding(value)
        elements[tag] = raw_element(tag, vr, length, value, value_pos, implicit, True)
    return elements, encoding


# --------------------------------------------------------------------------- value check

_KNOWN_VRS = frozenset({"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF",
                        "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN",
                        "UR", "US", "UT", "UV", "OB or OW", "US or SS", "US or OW", "US or SS or OW"})
_TEXT_VRS = TEXT_VRS
_ITEM_SIZE = ITEM_SIZES
_NUM = rb" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *"
_INT = rb" *[+-]?[0-9]+ *"
_DS = re.compile(rb"(?:%s)?(?:\\(?:%s)?)*" % (_NUM, _NUM))
_IS = re.compile(rb"(?:%s)?(?:\\(?:%s)?)*" % (_INT, _INT))


def _number_text_check(vr: str, value) -> bool:
    """A raw DS or IS value pydicom converts without raising (a DS longer than 16 characters only warns
    in reading validation mode WARN; an IS must fit a signed 32-bit integer)."""
    if vr == "DS":
        return _DS.fullmatch(value) is not None
    return _IS.fullmatch(value) is not None and all(
        -(2**31) <= int(v) < 2**31 for v in value.split(b"\\") if v.strip())


#: :func:`_number_text_check` memoised (a series repeats most of its DS and IS values in every file)
_number_text_safe = functools.lru_cache(maxsize=1 << 14)(_number_text_check)


def _safe(vr: str, raw: RawDataElement, *, sequences_checked: bool) -> bool:
    """True when pydicom's conversion of ``raw`` under ``vr`` cannot raise (False: convert it to find out)."""
    if vr not in _KNOWN_VRS:
        return False  # pydicom raises NotImplementedError for an unknown VR, even on an empty value
    value = raw.value
    if not value:
        return True
    if vr in _TEXT_VRS:
        return value.isascii()
    size = _ITEM_SIZE.get(vr)
    if size is not None:
        return len(value) % size == 0
    if vr == "OB" or vr == "UN":
        return True
    if vr == "US or SS":  # pydicom resolves it and converts the value as 2-byte integers
        return len(value) % 2 == 0
    if vr == "OB or OW":  # resolved without looking at other elements only in implicit VR (then OW)
        return raw.is_implicit_VR
    if vr == "DS" or vr == "IS":
        return _number_text_safe(vr, value) if type(value) is bytes else _number_text_check(vr, value)
    if vr == "SQ":
        return sequences_checked
    return False


def unconvertible_elements(ds: Dataset, *, sequences_checked: bool) -> None:
    """Convert every top-level value of ``ds`` whose conversion could fail; raise as pydicom does.

    Equivalent to ``for _ in ds: pass`` (which converts every value) for the question "does
    some top-level value fail to decode under its VR", at a fraction of the cost.

    Parameters
    ----------
    ds : Dataset
    sequences_checked : bool
        True when the guard's structural walk (:mod:`storage.dicom.guard.structure`) has
        checked every sequence's nesting, items and lengths: such a sequence is not parsed here.
        Then, for a data set read from the guard's table, only the elements the compiled walk
        left to this check (:func:`value_checks`) are looked at: it vouched for the others.

    Raises
    ------
    Exception
        Whatever pydicom raises converting the first value that does not decode.
    """
    from pydicom.hooks import hooks

    encoding = ds.original_character_set or ds._character_set
    only = value_checks(ds, CHECK_VALUE) if sequences_checked else None
    items = list(ds._dict.items()) if only is None else [(t, ds._dict[t]) for t in only]
    for tag, elem in items:
        if not isinstance(elem, RawDataElement):
            continue
        vr = elem.VR
        if vr is None:  # implicit VR: pydicom's hook takes the dictionary's VR when the tag has one
            vr = dictionary_vr(int(tag))
        if vr is None or vr == "UN":
            data: dict = {}
            hooks.raw_element_vr(elem, data, encoding=encoding, ds=ds)  # the VR pydicom will convert with
            vr = data["VR"]
        if not _safe(vr, elem, sequences_checked=sequences_checked):
            ds[tag]  # noqa: B018 - converts in place (pydicom), raising when the value does not decode

