"""Pixel data: size checks before decoding, decoding with pydicom, Modality LUT.

Decoding uses pydicom 3's :mod:`pydicom.pixels` backend with the installed plugins
(pylibjpeg-libjpeg / -openjpeg / -rle and python-gdcm), which cover implicit/explicit
little endian, big endian, deflate, RLE Lossless, JPEG baseline/extended/lossless,
JPEG-LS, JPEG 2000 and fragmented frames. For native (uncompressed) syntaxes pydicom
masks the unused high bits and sign-extends ``BitsStored < BitsAllocated`` values
(``correct_unused_bits``); :func:`correct_unused_bits` repeats this defensively.

Every check that can be made from the header is made **before** pixel bytes are read
(PS3.5 8.1.1: the native Pixel Data length is ``Rows x Columns x SamplesPerPixel x
NumberOfFrames x BitsAllocated / 8``, padded to even length).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from storage.dicom.attrs import attr, canonical_tag
from storage.dicom.guard.common import (
    _PIXEL_TAGS,  # Pixel Data, Float and Double Float Pixel Data, in that order
)

__all__ = [
    "PixelDataError",
    "apply_rescale",
    "check_pixel_data",
    "correct_unused_bits",
    "decode_frames",
    "expected_pixel_bytes",
    "read_full",
    "rescale_dtype",
]

DEFAULT_MAX_PIXEL_BYTES = 2 * 1024**3
#: :data:`_PIXEL_TAGS` as the element dictionaries' own keys (:func:`storage.dicom.attrs.canonical_tag`)
_PIXEL_KEYS = tuple(map(canonical_tag, _PIXEL_TAGS))


class PixelDataError(Exception):
    """A pixel-data problem with a stable reason code and a PHI-free detail sentence."""

    def __init__(self, reason: str, detail: str, exception_type: str | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.exception_type = exception_type


def _int(ds, name: str, default: int = 0) -> int:
    v = attr(ds, name, default)
    try:
        return int(v if v not in (None, "") else default)
    except (TypeError, ValueError):
        return default


def expected_pixel_bytes(ds) -> int:
    """Bytes the decoded pixel data occupies (= native Pixel Data length before even padding).

    ``YBR_FULL_422`` native data holds 2 samples per pixel on average (PS3.3 C.7.6.3.1.2).
    ``BitsAllocated == 1`` packs 8 pixels per byte.
    """
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    spp = max(1, _int(ds, "SamplesPerPixel", 1))
    frames = max(1, _int(ds, "NumberOfFrames", 1))
    bits = _int(ds, "BitsAllocated", 0)
    elements = ds._dict  # (what ``"FloatPixelData" in ds`` tests, without pydicom's keyword lookup)
    if 0x7FE00008 in elements:  # FloatPixelData
        bits = 32
    elif 0x7FE00009 in elements:  # DoubleFloatPixelData
        bits = 64
    pixels = rows * cols * frames
    if str(attr(ds, "PhotometricInterpretation", "")).upper() == "YBR_FULL_422" and spp == 3:
        samples = pixels * 2
    else:
        samples = pixels * spp
    if bits == 1:
        return (samples + 7) // 8
    return samples * bits // 8


def _transfer_syntax(ds):
    from pydicom.uid import ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    ts = attr(meta, "TransferSyntaxUID") if meta is not None else None
    return _uid(str(ts)) if ts else ImplicitVRLittleEndian


@functools.lru_cache(maxsize=256)
def _uid(text: str):
    """``pydicom.uid.UID(text)``, made once per distinct text (every file of a series names the same syntax)."""
    from pydicom.uid import UID

    return UID(text)


def read_full(path: str | os.PathLike[str], *, defer_size: str | int | None = "1 KB"):
    """Read a whole dataset (read-only), with large values (Pixel Data) deferred.

    The deferred Pixel Data is read only when accessed, so its declared length can be
    checked first (:func:`check_pixel_data`). For a preamble-less file without a Transfer
    Syntax UID, the syntax pydicom detected while reading is recorded in ``file_meta``
    (implicit/explicit VR, little/big endian) so the pixels can be decoded.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, defer_size=defer_size)
    except InvalidDicomError:
        ds = pydicom.dcmread(path, defer_size=defer_size, force=True)
    return ensure_transfer_syntax(ds)


def ensure_transfer_syntax(ds):
    """Record the syntax pydicom detected in ``file_meta`` when the file declared none (in place)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is None or 0x00020010 not in meta._dict:  # TransferSyntaxUID (what ``"TransferSyntaxUID" in meta`` tests)
        if meta is None:
            ds.file_meta = meta = FileMetaDataset()
        implicit, little = getattr(ds, "original_encoding", (True, True))
        if implicit is None or little is None:
            implicit, little = True, True
        meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                  ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return ds


def _raw_pixel_length(ds) -> int | None:
    """Declared length of the Pixel Data element without loading it (None when unknown/undefined)."""
    for tag in _PIXEL_KEYS:
        if tag in ds._dict:
            elem = ds.get_item(tag)
            length = getattr(elem, "length", None)
            if length is None or length == 0xFFFFFFFF:
                value = getattr(elem, "value", None)
                if isinstance(value, bytes | bytearray) and length != 0xFFFFFFFF:
                    return len(value)
                return None
            return int(length)
    return None


def check_pixel_data(ds, *, max_pixel_bytes: int = DEFAULT_MAX_PIXEL_BYTES) -> int:
    """Validate the pixel-data size from the header, before anything is decoded.

    Returns
    -------
    int
        The expected decoded byte count.

    Raises
    ------
    PixelDataError
        ``missing_required_attribute``, ``absurd_dimensions``, ``absurd_dimensions`` (expected
        size above ``max_pixel_bytes``) or, for native syntaxes, ``pixel_length_mismatch``
        (declared Pixel Data length differs from the expected length beyond even padding).
    """
    if max_pixel_bytes <= 0:
        raise ValueError(f"max_pixel_bytes must be > 0, got {max_pixel_bytes!r}")
    elements = ds._dict  # membership by tag (a BaseTag hashes as its int): what ``tag in ds`` tests
    if not any(t in elements for t in _PIXEL_KEYS):
        raise PixelDataError("missing_required_attribute", "the object holds no Pixel Data element")
    rows, cols, bits = _int(ds, "Rows"), _int(ds, "Columns"), _int(ds, "BitsAllocated")
    if 0x7FE00008 not in elements and 0x7FE00009 not in elements:  # FloatPixelData, DoubleFloatPixelData
        if rows <= 0 or cols <= 0 or bits not in (1, 8, 16, 32, 64):
            raise PixelDataError("absurd_dimensions",
                                 f"Rows={rows}, Columns={cols}, BitsAllocated={bits} are not decodable")
    expected = expected_pixel_bytes(ds)
    if expected > max_pixel_bytes:
        raise PixelDataError("absurd_dimensions",
                             f"expected {expected} decoded bytes, above the cap of {max_pixel_bytes}")
    ts = _transfer_syntax(ds)
    if not ts.is_encapsulated:
        actual = _raw_pixel_length(ds)
        frames = max(1, _int(ds, "NumberOfFrames", 1))
        frame_bytes = max(1, expected // frames)
        # tolerated: the even-padding byte, and trailing padding shorter than one frame (as the guard)
        if actual is not None and not (expected <= actual < expected + max(2, frame_bytes)):
            raise PixelDataError("pixel_length_mismatch",
                                 f"native Pixel Data holds {actual} bytes, the header implies {expected}")
    return expected


def correct_unused_bits(arr: np.ndarray, *, bits_stored: int, pixel_representation: int) -> np.ndarray:
    """Mask bits above ``bits_stored`` and sign-extend two's complement values (PS3.5 8.1.1).

    A no-op for float arrays or when ``bits_stored`` fills the item.
    """
    if arr.dtype.kind not in "iu":
        return arr
    nbits = arr.dtype.itemsize * 8
    if bits_stored <= 0 or bits_stored >= nbits:
        return arr
    udt = np.dtype(f"u{arr.dtype.itemsize}")
    u = arr.view(udt) & udt.type((1 << bits_stored) - 1)
    if pixel_representation == 1:
        sign = udt.type(1 << (bits_stored - 1))
        out = (u ^ sign).astype(np.int64) - int(sign)
        return out.astype(np.dtype(f"i{arr.dtype.itemsize}"))
    return u.astype(udt)


def decode_frames(ds, *, max_pixel_bytes: int = DEFAULT_MAX_PIXEL_BYTES) -> np.ndarray:
    """Decode all frames after :func:`check_pixel_data`.

    Returns
    -------
    ndarray
        ``(frames, rows, columns)`` or ``(frames, rows, columns, samples)``; colour data
        in YBR_FULL / YBR_FULL_422 / YBR_ICT / YBR_RCT is returned as RGB (pydicom
        ``as_rgb``), PALETTE COLOR is expanded to RGB through its LUT.

    Raises
    ------
    PixelDataError
        From :func:`check_pixel_data`, ``unsupported_transfer_syntax`` (no installed
        plugin decodes it) or ``decode_failed`` (the decoder raised or returned a
        different number of values than declared: truncated or corrupt data).
    """
    check_pixel_data(ds, max_pixel_bytes=max_pixel_bytes)
    native = _native_frames(ds)
    if native is not None:
        return native
    try:
        arr = ds.pixel_array
    except NotImplementedError as exc:
        raise PixelDataError("unsupported_transfer_syntax", "no installed decoder handles this transfer syntax",
                             type(exc).__name__) from exc
    except RuntimeError as exc:
        msg = str(exc).lower()
        if "no pixel data decoding plugins" in msg or "unable to decompress" in msg and "plugin" in msg:
            raise PixelDataError("unsupported_transfer_syntax", "no installed decoder handles this transfer syntax",
                                 type(exc).__name__) from exc
        raise PixelDataError("decode_failed", "the pixel data could not be decoded",
                             type(exc).__name__) from exc
    except MemoryError as exc:
        raise PixelDataError("absurd_dimensions", "decoding ran out of memory", type(exc).__name__) from exc
    except Exception as exc:  # noqa: BLE001 - decoder errors of any type become a reason code
        from storage.dicom.bugs import raise_if_bug

        raise_if_bug(exc, stage="decode", input_key="pixel data")  # a medflow defect fails the run
        raise PixelDataError("decode_failed", "the pixel data could not be decoded",
                             type(exc).__name__) from exc
    frames = max(1, _int(ds, "NumberOfFrames", 1))
    spp = max(1, _int(ds, "SamplesPerPixel", 1))
    photometric = str(attr(ds, "PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
        spp = 3
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    want = (frames, rows, cols) + ((spp,) if spp > 1 else ())
    if arr.size != int(np.prod(want)):
        raise PixelDataError("decode_failed",
                             f"decoded {arr.size} values, the header declares {int(np.prod(want))}")
    arr = arr.reshape(want)
    if not arr.dtype.isnative:  # big-endian data: hand out native byte order
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if "PixelData" in ds and arr.dtype.kind in "iu":
        arr = correct_unused_bits(arr, bits_stored=_int(ds, "BitsStored", arr.dtype.itemsize * 8),
                                  pixel_representation=_int(ds, "PixelRepresentation", 0))
    return arr


_NATIVE_LE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


def _native_frames(ds) -> np.ndarray | None:
    """Monochrome native little-endian Pixel Data straight from its bytes, as pydicom's ``pixel_array`` reads it.

    Only the plain case (PS3.5 8.1.1: MONOCHROME1/2, one sample, 8/16/32 bits allocated, the
    value already in memory): ``None`` for anything else, which goes through pydicom.
    """
    meta = getattr(ds, "file_meta", None)
    if meta is None or str(attr(meta, "TransferSyntaxUID", "")) not in _NATIVE_LE or 0x7FE00010 not in ds._dict:
        return None  # (a missing transfer syntax is pydicom's to refuse)
    raw = ds.get_item(0x7FE00010)
    value = getattr(raw, "value", None)
    if not isinstance(value, bytes):
        return None
    need = {}
    for kw in ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel"):
        v = attr(ds, kw)
        if not isinstance(v, int):  # absent, multi-valued or odd values: pydicom's validation gives the verdict
            return None
        need[kw] = int(v)
    frames = attr(ds, "NumberOfFrames")
    if frames is not None and frames != "":
        try:
            frames = int(frames)
        except (TypeError, ValueError):
            return None
        if frames < 1:
            return None
    else:
        frames = 1
    if str(attr(ds, "PhotometricInterpretation", "")).strip() not in ("MONOCHROME1", "MONOCHROME2"):
        return None
    rows, cols, bits, rep = need["Rows"], need["Columns"], need["BitsAllocated"], need["PixelRepresentation"]
    if (need["SamplesPerPixel"] != 1 or bits not in (8, 16, 32) or rep not in (0, 1)
            or not 1 <= need["BitsStored"] <= bits or not (0 < rows < 2**16 and 0 < cols < 2**16)):
        return None  # the checks pydicom's decoder makes (pydicom.pixels.common.RunnerBase.validate)
    count = frames * rows * cols
    dtype = np.dtype(f"<{'iu'[rep == 0]}{bits // 8}")
    if len(value) < count * dtype.itemsize:
        return None  # pydicom decides what a short value means
    arr = np.frombuffer(value, dtype=dtype, count=count).reshape(frames, rows, cols)
    arr = arr.astype(arr.dtype.newbyteorder("="), copy=True)  # writeable, native order (as pixel_array)
    return correct_unused_bits(arr, bits_stored=need["BitsStored"], pixel_representation=rep)


def _is_integer(x: float) -> bool:
    return bool(np.isfinite(x) and float(x) == float(np.round(x)))


def rescale_dtype(stored: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray) -> np.dtype:
    """Output dtype of the Modality LUT: the stored dtype when identity, the smallest safe
    integer dtype when every slope and intercept is an integer, else float32."""
    slopes = np.asarray(slopes, dtype=np.float64)
    intercepts = np.asarray(intercepts, dtype=np.float64)
    if np.all(slopes == 1.0) and np.all(intercepts == 0.0):
        return stored.dtype
    if stored.dtype.kind in "iu" and all(_is_integer(s) for s in slopes) and all(_is_integer(b) for b in intercepts):
        lo, hi = (int(stored.min()), int(stored.max())) if stored.size else (0, 0)
        ends = [s * v + b for s, b in zip(slopes, intercepts, strict=True) for v in (lo, hi)]
        mn, mx = int(min(ends)), int(max(ends))
        for dt in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.int64):
            info = np.iinfo(dt)
            if info.min <= mn and mx <= info.max:
                return np.dtype(dt)
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def apply_rescale(stored: np.ndarray, slopes: Any, intercepts: Any) -> np.ndarray:
    """Modality LUT ``value = stored * slope + intercept`` per leading-axis item (PS3.3 C.11.1).

    Parameters
    ----------
    stored : ndarray (n, ...)
        Stored values, one item per frame/slice along axis 0.
    slopes, intercepts : float or array (n,)

    Returns
    -------
    ndarray
        Computed in float64 (or exact int64), then cast to :func:`rescale_dtype`.
    """
    n = stored.shape[0]
    s = np.broadcast_to(np.asarray(slopes, dtype=np.float64), (n,))
    b = np.broadcast_to(np.asarray(intercepts, dtype=np.float64), (n,))
    dt = rescale_dtype(stored, s, b)
    if dt == stored.dtype and np.all(s == 1.0) and np.all(b == 0.0):
        return stored
    shape = (n,) + (1,) * (stored.ndim - 1)
    if dt.kind in "iu":
        out = stored.astype(np.int64) * s.astype(np.int64).reshape(shape) + b.astype(np.int64).reshape(shape)
        return out.astype(dt)
    out = stored.astype(np.float64) * s.reshape(shape) + b.reshape(shape)
    return out.astype(dt)
