"""SOP Common / Image Pixel values decoded straight from the structural walk's offsets (PS3.3 C.12.1, C.7.6.3)."""

from __future__ import annotations

import math
import struct
from typing import TYPE_CHECKING, BinaryIO

from storage.dicom.guard.common import (
    _BITS_ALLOCATED_OK,
    _KEYWORDS,
    _MAX_TEXT,
    _NATIVE,
    _SPP_OK,
    _US_TAGS,
    GuardLimits,
    _Reject,
)
from storage.dicom.guard.structure import (
    _Structure,
)

# --------------------------------------------------------------------------- attributes

if TYPE_CHECKING:  # pragma: no cover
    from storage.dicom.guard.inspect import FileInspection


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

